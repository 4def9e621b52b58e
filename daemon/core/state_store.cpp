// StateStore: framed protobuf files, written durably (temp, fsync, rename, fsync dir).
#include "core/state_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "policyd/state/v1/state.pb.h"
#include "util/fs.h"

namespace policyd::core {
namespace {

namespace pb = ::policyd::state::v1;

// File frame: magic, format version, reserved, payload length, SHA-256 of the payload.
constexpr char kMagic[8] = {'P', 'O', 'L', 'I', 'C', 'Y', 'D', '\0'};
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kDigestSize = 32;
constexpr size_t kHeaderSize = sizeof(kMagic) + 4 + 4 + 8 + kDigestSize;

std::atomic<uint64_t> g_tmp_counter{0};

void put_le(std::string& out, uint64_t v, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t get_le(const char* p, size_t bytes) {
  uint64_t v = 0;
  for (size_t i = 0; i < bytes; ++i) v |= uint64_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
}

std::string frame(const std::string& payload) {
  std::string out(kMagic, sizeof(kMagic));
  put_le(out, kFormatVersion, 4);
  put_le(out, 0, 4);
  put_le(out, payload.size(), 8);
  out += sha256(payload.data(), payload.size());
  out += payload;
  return out;
}

// The payload of a framed file, or why the file is not a valid frame.
Result<std::string> unframe(const std::string& data) {
  if (data.size() < kHeaderSize) {
    return invalid_argument("truncated: " + std::to_string(data.size()) +
                            " bytes, the header alone is " + std::to_string(kHeaderSize));
  }
  if (std::memcmp(data.data(), kMagic, sizeof(kMagic)) != 0) {
    return invalid_argument("not a policyd state file (bad magic)");
  }
  const uint64_t version = get_le(data.data() + 8, 4);
  if (version != kFormatVersion) {
    return invalid_argument("format version " + std::to_string(version) + ", this policyd reads " +
                            std::to_string(kFormatVersion));
  }
  const uint64_t length = get_le(data.data() + 16, 8);
  if (data.size() - kHeaderSize != length) {
    return invalid_argument("truncated: the header announces " + std::to_string(length) +
                            " payload bytes, the file has " +
                            std::to_string(data.size() - kHeaderSize));
  }
  std::string payload = data.substr(kHeaderSize);
  if (sha256(payload.data(), payload.size()) != data.substr(24, kDigestSize)) {
    return invalid_argument("checksum mismatch (the file was damaged after it was written)");
  }
  return payload;
}

Result<std::string> read_whole(const std::string& path) {
  kernel::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return sys_error(errno, "open " + path);
  std::string out;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sys_error(errno, "read " + path);
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

Status write_all(int fd, const std::string& data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sys_error(errno, "write " + path);
    done += static_cast<size_t>(n);
  }
  return {};
}

Status fsync_path(const std::string& path) {
  kernel::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return sys_error(errno, "open " + path);
  if (::fsync(fd.get()) != 0) return sys_error(errno, "fsync " + path);
  return {};
}

// Writes `data` to `path` through a temp file in the same directory: after this returns the
// file holds the new data or (on error) the old; it never holds a mix. The directory is not
// synced here.
Status replace_file(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." +
                          std::to_string(g_tmp_counter.fetch_add(1));
  kernel::UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) return sys_error(errno, "create " + tmp);
  Status st = write_all(fd.get(), data, tmp);
  if (st.ok() && ::fsync(fd.get()) != 0) st = sys_error(errno, "fsync " + tmp);
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) st = sys_error(errno, "rename " + tmp);
  if (!st.ok()) ::unlink(tmp.c_str());
  return st;
}

std::string corrupt(const std::string& path, const std::string& why) {
  return "state file " + path + " is corrupt: " + why +
         ". policyd will not guess what the data plane should hold. To recover, restore the "
         "state directory from a backup, or move it aside (mv " +
         path + " " + path +
         ".bad) and start again: policyd then adopts the pinned maps as they are (generation "
         "history starts over), or starts empty when nothing is pinned";
}

}  // namespace

Digest sha256(const void* data, size_t size) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data, size, md, &len, EVP_sha256(), nullptr);
  return Digest(reinterpret_cast<const char*>(md), len);
}

std::string digest_hex(const Digest& d) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : d) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

Digest generation_hash(const std::vector<StoredSlot>& slots) {
  std::string buf;
  for (const StoredSlot& s : slots) {
    put_le(buf, s.map.size(), 4);
    buf += s.map;
    put_le(buf, s.slot.size(), 4);
    buf.append(s.slot.begin(), s.slot.end());
    buf += s.contents;
  }
  return sha256(buf.data(), buf.size());
}

StateStore::StateStore(std::string dir, kernel::UniqueFd lock)
    : dir_(std::move(dir)), lock_(std::move(lock)) {}

StateStore::~StateStore() = default;

Result<std::unique_ptr<StateStore>> StateStore::open(const std::string& dir) {
  POLICYD_TRY(util::make_dirs(dir + "/contents", 0700));
  const std::string lock_path = dir + "/lock";
  kernel::UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock.valid()) return sys_error(errno, "open " + lock_path);
  if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return failed_precondition("state_dir " + dir + " is in use by another policyd (" +
                                 lock_path + " is locked)");
    }
    return sys_error(errno, "lock " + lock_path);
  }
  std::unique_ptr<StateStore> store(new StateStore(dir, std::move(lock)));
  store->remove_temp_files();
  return store;
}

// Temp files a crash left behind (nobody else writes here: the lock is ours).
void StateStore::remove_temp_files() const {
  for (const std::string& sub : {dir_, dir_ + "/contents"}) {
    DIR* d = ::opendir(sub.c_str());
    if (!d) continue;
    std::vector<std::string> temps;
    while (dirent* e = ::readdir(d)) {
      if (std::strstr(e->d_name, ".tmp.")) temps.emplace_back(e->d_name);
    }
    ::closedir(d);
    for (const std::string& name : temps) ::unlink((sub + "/" + name).c_str());
  }
}

Result<std::optional<StoredState>> StateStore::load() const {
  const std::string path = manifest_path();
  Result<std::string> data = read_whole(path);
  if (!data.ok()) {
    if (data.error().sys_errno == ENOENT) return std::optional<StoredState>{};
    return data.error();
  }
  Result<std::string> payload = unframe(*data);
  if (!payload.ok()) return failed_precondition(corrupt(path, payload.error().context));
  pb::State msg;
  if (!msg.ParseFromString(*payload))
    return failed_precondition(corrupt(path, "unreadable record"));

  StoredState state;
  state.pin_dir = msg.pin_dir();
  state.generation = msg.generation();
  for (const pb::Generation& g : msg.history()) {
    StoredGeneration sg;
    sg.id = g.id();
    sg.label = g.label();
    sg.committed_unix_ms = g.committed_unix_ms();
    sg.changes = g.changes();
    sg.entries = g.entries();
    sg.request_id = g.request_id();
    for (const pb::Slot& s : g.slots()) {
      sg.slots.push_back(
          {s.map(), Bytes(s.slot().begin(), s.slot().end()), s.contents(), s.inner_id()});
    }
    sg.content_hash = g.content_hash();
    if (generation_hash(sg.slots) != sg.content_hash) {
      return failed_precondition(corrupt(
          path, "generation " + std::to_string(sg.id) + " does not match its content hash"));
    }
    state.history.push_back(std::move(sg));
  }
  if (!state.history.empty() && state.history.front().id != state.generation) {
    return failed_precondition(
        corrupt(path, "the newest history record is not the current generation"));
  }
  for (const pb::CounterTotal& c : msg.drained()) {
    state.drained.push_back(
        {c.map(), Bytes(c.slot().begin(), c.slot().end()), c.field(), c.total()});
  }
  state.drained_inner_ids.assign(msg.drained_inner_ids().begin(), msg.drained_inner_ids().end());
  return std::optional<StoredState>(std::move(state));
}

Result<Digest> StateStore::put_contents(const std::vector<Entry>& entries, uint32_t key_size,
                                        uint32_t value_size) {
  pb::Contents msg;
  msg.set_key_size(key_size);
  msg.set_value_size(value_size);
  msg.set_count(entries.size());
  std::string* data = msg.mutable_data();
  data->reserve(entries.size() * (key_size + value_size));
  for (const Entry& e : entries) {
    data->append(e.key.begin(), e.key.end());
    data->append(e.value.begin(), e.value.end());
  }
  std::string payload;
  if (!msg.SerializeToString(&payload)) return Error{ErrorCode::kInternal, 0, "serialize contents"};
  Digest digest = sha256(payload.data(), payload.size());
  const std::string name = digest_hex(digest);
  const std::string path = dir_ + "/contents/" + name;
  {
    // Held before the existence check: garbage collection (which unlinks under the same lock)
    // cannot remove the file between the check and the record that will refer to it.
    std::lock_guard lock(mu_);
    ++held_[name];
    if (::access(path.c_str(), F_OK) == 0) return digest;  // content-addressed: already there
  }
  POLICYD_TRY(replace_file(path, frame(payload)));
  return digest;
}

void StateStore::release(const std::vector<Digest>& digests) {
  std::lock_guard lock(mu_);
  for (const Digest& d : digests) {
    if (d.empty()) continue;
    auto it = held_.find(digest_hex(d));
    if (it != held_.end() && --it->second == 0) held_.erase(it);
  }
}

Status StateStore::sync_contents() { return fsync_path(dir_ + "/contents"); }

Result<std::vector<Entry>> StateStore::get_contents(const Digest& digest) const {
  const std::string path = dir_ + "/contents/" + digest_hex(digest);
  Result<std::string> data = read_whole(path);
  if (!data.ok()) return failed_precondition(corrupt(path, data.error().message()));
  Result<std::string> payload = unframe(*data);
  if (!payload.ok()) return failed_precondition(corrupt(path, payload.error().context));
  if (sha256(payload->data(), payload->size()) != digest) {
    return failed_precondition(corrupt(path, "contents do not match the file name"));
  }
  pb::Contents msg;
  if (!msg.ParseFromString(*payload))
    return failed_precondition(corrupt(path, "unreadable contents"));
  const size_t stride = size_t{msg.key_size()} + msg.value_size();
  if (msg.data().size() != stride * msg.count()) {
    return failed_precondition(corrupt(path, "entry data does not match the entry count"));
  }
  std::vector<Entry> entries(msg.count());
  const auto* p = reinterpret_cast<const uint8_t*>(msg.data().data());
  for (Entry& e : entries) {
    e.key.assign(p, p + msg.key_size());
    e.value.assign(p + msg.key_size(), p + stride);
    p += stride;
  }
  return entries;
}

Status StateStore::write(const StoredState& state) {
  pb::State msg;
  msg.set_pin_dir(state.pin_dir);
  msg.set_generation(state.generation);
  for (const StoredGeneration& g : state.history) {
    pb::Generation* pg = msg.add_history();
    pg->set_id(g.id);
    pg->set_label(g.label);
    pg->set_committed_unix_ms(g.committed_unix_ms);
    pg->set_changes(g.changes);
    pg->set_entries(g.entries);
    pg->set_request_id(g.request_id);
    for (const StoredSlot& s : g.slots) {
      pb::Slot* ps = pg->add_slots();
      ps->set_map(s.map);
      ps->set_slot(std::string(s.slot.begin(), s.slot.end()));
      ps->set_contents(s.contents);
      ps->set_inner_id(s.inner_id);
    }
    pg->set_content_hash(g.content_hash);
  }
  for (const StoredCounter& c : state.drained) {
    pb::CounterTotal* pc = msg.add_drained();
    pc->set_map(c.map);
    pc->set_slot(std::string(c.slot.begin(), c.slot.end()));
    pc->set_field(c.field);
    pc->set_total(c.total);
  }
  for (uint32_t id : state.drained_inner_ids) msg.add_drained_inner_ids(id);
  std::string payload;
  if (!msg.SerializeToString(&payload)) return Error{ErrorCode::kInternal, 0, "serialize state"};
  POLICYD_TRY(replace_file(manifest_path(), frame(payload)));
  return fsync_path(dir_);
}

void StateStore::collect_garbage(const StoredState& state) {
  std::set<std::string> keep;
  for (const StoredGeneration& g : state.history) {
    for (const StoredSlot& s : g.slots) keep.insert(digest_hex(s.contents));
  }
  const std::string dir = dir_ + "/contents";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> remove;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    // A put_contents() may be writing a temp file right now: only named contents files go
    // here (temp files left by a crash are removed at open).
    if (name.find('.') != std::string::npos) continue;
    if (!keep.count(name)) remove.push_back(name);
  }
  ::closedir(d);
  std::lock_guard lock(mu_);
  for (const std::string& name : remove) {
    if (!held_.count(name)) ::unlink((dir + "/" + name).c_str());
  }
}

}  // namespace policyd::core
