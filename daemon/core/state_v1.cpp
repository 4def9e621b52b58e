// The pre-SQLite record: framed protobuf files (magic, format version, payload length, SHA-256
// of the payload), read for the one-time import.
#include "core/state_v1.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "policyd/state/v1/state.pb.h"

namespace policyd::core::v1 {
namespace {

namespace pb = ::policyd::state::v1;

constexpr char kMagic[8] = {'P', 'O', 'L', 'I', 'C', 'Y', 'D', '\0'};
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kDigestSize = 32;
constexpr size_t kHeaderSize = sizeof(kMagic) + 4 + 4 + 8 + kDigestSize;
// A fuzzing build (tests/fuzz defines FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, as libFuzzer's
// convention is) skips the three checksums, so that mutated input reaches the checks behind
// them. Every other build checks them.
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
constexpr bool kCheckDigests = false;
#else
constexpr bool kCheckDigests = true;
#endif

void put_le(std::string& out, uint64_t v, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t get_le(const char* p, size_t bytes) {
  uint64_t v = 0;
  for (size_t i = 0; i < bytes; ++i) v |= uint64_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
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
  if (kCheckDigests && sha256(payload.data(), payload.size()) != data.substr(24, kDigestSize)) {
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

std::string corrupt(const std::string& path, const std::string& why) {
  return "state file " + path + " (the format before state.db, to be imported) is corrupt: " + why +
         ". policyd will not guess what the data plane should hold. To recover, restore the "
         "state directory from a backup, or move it aside (mv " +
         path + " " + path +
         ".bad) and start again: policyd then adopts the pinned maps as they are (generation "
         "history starts over), or starts empty when nothing is pinned";
}

// The v1 content hash of a generation: SHA-256 over its sorted (map, slot, contents) triples.
Digest generation_hash(const std::vector<Slot>& slots) {
  std::string buf;
  for (const Slot& s : slots) {
    put_le(buf, s.map.size(), 4);
    buf += s.map;
    put_le(buf, s.slot.size(), 4);
    buf.append(s.slot.begin(), s.slot.end());
    buf += s.contents;
  }
  return sha256(buf.data(), buf.size());
}

}  // namespace

Result<std::optional<State>> read_state(const std::string& dir) {
  const std::string path = dir + "/state";
  Result<std::string> data = read_whole(path);
  if (!data.ok()) {
    if (data.error().sys_errno == ENOENT) return std::optional<State>{};
    return data.error();
  }
  Result<std::string> payload = unframe(*data);
  if (!payload.ok()) return failed_precondition(corrupt(path, payload.error().context));
  pb::State msg;
  if (!msg.ParseFromString(*payload))
    return failed_precondition(corrupt(path, "unreadable record"));

  State state;
  state.pin_dir = msg.pin_dir();
  state.generation = msg.generation();
  for (const pb::Generation& g : msg.history()) {
    Generation sg;
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
    if (kCheckDigests && generation_hash(sg.slots) != g.content_hash()) {
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
  return std::optional<State>(std::move(state));
}

Result<Contents> read_contents(const std::string& dir, const Digest& digest) {
  const std::string path = dir + "/contents/" + digest_hex(digest);
  Result<std::string> data = read_whole(path);
  if (!data.ok()) return failed_precondition(corrupt(path, data.error().message()));
  Result<std::string> payload = unframe(*data);
  if (!payload.ok()) return failed_precondition(corrupt(path, payload.error().context));
  if (kCheckDigests && sha256(payload->data(), payload->size()) != digest) {
    return failed_precondition(corrupt(path, "contents do not match the file name"));
  }
  pb::Contents msg;
  if (!msg.ParseFromString(*payload))
    return failed_precondition(corrupt(path, "unreadable contents"));
  const size_t stride = size_t{msg.key_size()} + msg.value_size();
  if (msg.data().size() != stride * msg.count()) {
    return failed_precondition(corrupt(path, "entry data does not match the entry count"));
  }
  Contents out;
  out.key_size = msg.key_size();
  out.value_size = msg.value_size();
  out.entries.resize(msg.count());
  const auto* p = reinterpret_cast<const uint8_t*>(msg.data().data());
  for (Entry& e : out.entries) {
    e.key.assign(p, p + msg.key_size());
    e.value.assign(p + msg.key_size(), p + stride);
    p += stride;
  }
  return out;
}

}  // namespace policyd::core::v1
