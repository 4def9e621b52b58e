// libbpf map syscall wrappers. libbpf (1.x) returns -errno from int APIs; we read it at once.
#include "kernel/map.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <unistd.h>

#include "kernel/map_types.h"

namespace policyd::kernel {
namespace {

// libbpf's int APIs return a negative errno; some paths only set errno.
int errno_of(int rc) { return rc < 0 ? -rc : (errno != 0 ? errno : EIO); }

constexpr int kEnotsupp = 524;  // kernel-internal ENOTSUPP, returned by missing batch ops

}  // namespace

Status check_map_name(const std::string& name) {
  if (name.empty()) return invalid_argument("map name is empty");
  if (name.size() > kMaxMapName) {
    return invalid_argument("map name \"" + name + "\" is " + std::to_string(name.size()) +
                            " characters; the kernel allows at most 15");
  }
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.';
    if (!ok) {
      return invalid_argument("map name \"" + name + "\" has '" + std::string(1, c) +
                              "'; only [A-Za-z0-9_.] are allowed");
    }
  }
  return {};
}

const char* map_type_name(bpf_map_type type) {
  const char* name = libbpf_bpf_map_type_str(type);
  return name ? name : "unknown";
}

bool is_map_in_map(bpf_map_type type) {
  const MapType* t = find_map_type(type);
  return t && t->role == MapRole::kOuter;
}

bool is_array(bpf_map_type type) {
  const MapType* t = find_map_type(type);
  return t && t->array && t->role == MapRole::kInner;
}

uint32_t possible_cpus() {
  static const uint32_t n = [] {
    int c = libbpf_num_possible_cpus();
    return c > 0 ? static_cast<uint32_t>(c) : 1u;
  }();
  return n;
}

size_t cpu_value_stride(bpf_map_type type, uint32_t value_size) {
  if (!is_percpu(type)) return value_size;
  return (static_cast<size_t>(value_size) + 7) & ~size_t{7};
}

uint32_t value_copies(bpf_map_type type) { return is_percpu(type) ? possible_cpus() : 1; }

size_t syscall_value_size(bpf_map_type type, uint32_t value_size) {
  return cpu_value_stride(type, value_size) * value_copies(type);
}

Result<UniqueFd> create_map(const MapSpec& spec) {
  POLICYD_TRY(check_map_name(spec.name));
  LIBBPF_OPTS(bpf_map_create_opts, opts);
  opts.map_flags = spec.flags;
  if (spec.inner_map_fd >= 0) opts.inner_map_fd = static_cast<uint32_t>(spec.inner_map_fd);
  errno = 0;
  int fd = bpf_map_create(spec.type, spec.name.c_str(), spec.key_size, spec.value_size,
                          spec.max_entries, &opts);
  if (fd < 0) {
    return sys_error(errno_of(fd), std::string("create ") + map_type_name(spec.type) + " map \"" +
                                       spec.name + "\" (key " + std::to_string(spec.key_size) +
                                       ", value " + std::to_string(spec.value_size) + ", entries " +
                                       std::to_string(spec.max_entries) + ")");
  }
  return UniqueFd(fd);
}

Result<MapInfo> map_info(int fd) {
  bpf_map_info raw{};
  uint32_t len = sizeof(raw);
  errno = 0;
  int rc = bpf_obj_get_info_by_fd(fd, &raw, &len);
  if (rc < 0) return sys_error(errno_of(rc), "read map info");
  MapInfo info;
  info.type = static_cast<bpf_map_type>(raw.type);
  info.id = raw.id;
  info.key_size = raw.key_size;
  info.value_size = raw.value_size;
  info.max_entries = raw.max_entries;
  info.flags = raw.map_flags;
  info.name = raw.name;
  return info;
}

Result<UniqueFd> map_fd_by_id(uint32_t id) {
  errno = 0;
  int fd = bpf_map_get_fd_by_id(id);
  if (fd < 0) return sys_error(errno_of(fd), "open map id " + std::to_string(id));
  return UniqueFd(fd);
}

Result<std::vector<uint32_t>> list_map_ids() {
  std::vector<uint32_t> ids;
  uint32_t id = 0;
  for (;;) {
    errno = 0;
    int rc = bpf_map_get_next_id(id, &id);
    if (rc < 0) {
      int err = errno_of(rc);
      if (err == ENOENT) break;
      return sys_error(err, "list map ids");
    }
    ids.push_back(id);
  }
  return ids;
}

Status pin(int fd, const std::string& path) {
  errno = 0;
  int rc = bpf_obj_pin(fd, path.c_str());
  if (rc < 0) return sys_error(errno_of(rc), "pin map at " + path);
  return {};
}

Result<UniqueFd> open_pinned(const std::string& path) {
  errno = 0;
  int fd = bpf_obj_get(path.c_str());
  if (fd < 0) {
    int err = errno_of(fd);
    Error e = sys_error(err, "open pinned map " + path);
    if (err == ENOENT) e.code = ErrorCode::kNotFound;
    return e;
  }
  return UniqueFd(fd);
}

Status unpin(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return sys_error(errno, "unpin " + path);
  return {};
}

Status update_elem(int fd, const void* key, const void* value, uint64_t flags) {
  errno = 0;
  int rc = bpf_map_update_elem(fd, key, value, flags);
  if (rc < 0) return sys_error(errno_of(rc), "update element");
  return {};
}

Result<bool> delete_elem(int fd, const void* key) {
  errno = 0;
  int rc = bpf_map_delete_elem(fd, key);
  if (rc < 0) {
    int err = errno_of(rc);
    if (err == ENOENT) return false;
    return sys_error(err, "delete element");
  }
  return true;
}

Result<bool> lookup_elem(int fd, const void* key, void* value) {
  errno = 0;
  int rc = bpf_map_lookup_elem(fd, key, value);
  if (rc < 0) {
    int err = errno_of(rc);
    if (err == ENOENT) return false;
    return sys_error(err, "look up element");
  }
  return true;
}

// How many elements a failed batch call applied. The kernel writes the count back only once it
// has started on the elements (the one that failed is not counted); a call it refuses before
// that (a frozen or read-only map: EPERM, bad flags) leaves the count as it was passed in. A
// failed call that still says `count` therefore applied none.
namespace {
uint32_t applied_before_error(uint32_t written_back, uint32_t count) {
  return written_back < count ? written_back : 0;
}
}  // namespace

BatchOutcome update_batch(int fd, const void* keys, const void* values, uint32_t count) {
  LIBBPF_OPTS(bpf_map_batch_opts, opts);
  uint32_t n = count;
  errno = 0;
  int rc = bpf_map_update_batch(fd, keys, values, &n, &opts);
  if (rc < 0) return {applied_before_error(n, count), sys_error(errno_of(rc), "batch update")};
  return {count, std::nullopt};
}

BatchOutcome delete_batch(int fd, const void* keys, uint32_t count) {
  LIBBPF_OPTS(bpf_map_batch_opts, opts);
  uint32_t n = count;
  errno = 0;
  int rc = bpf_map_delete_batch(fd, keys, &n, &opts);
  if (rc < 0) return {applied_before_error(n, count), sys_error(errno_of(rc), "batch delete")};
  return {count, std::nullopt};
}

bool batch_unsupported(const Error& error) {
  return error.sys_errno == kEnotsupp || error.sys_errno == EOPNOTSUPP;
}

Status fill(int fd, const uint8_t* keys, size_t key_size, const uint8_t* values,
            size_t value_stride, size_t count, size_t chunk) {
  size_t done = 0;
  bool batch = true;
  while (done < count) {
    if (batch) {
      auto n = static_cast<uint32_t>(std::min(chunk, count - done));
      BatchOutcome out = update_batch(fd, keys + done * key_size, values + done * value_stride, n);
      if (!out.error) {
        done += n;
        continue;
      }
      if (out.applied == 0 && batch_unsupported(*out.error)) {
        batch = false;  // e.g. lpm_trie before batch ops existed for it
        continue;
      }
      return out.error->wrap("fill element " + std::to_string(done + out.applied));
    }
    Status st = update_elem(fd, keys + done * key_size, values + done * value_stride);
    if (!st.ok()) return st.error().wrap("fill element " + std::to_string(done));
    ++done;
  }
  return {};
}

namespace {

Status dump_by_iteration(int fd, const MapInfo& info, const EntryVisitor& visit) {
  std::vector<uint8_t> key(info.key_size), next(info.key_size);
  std::vector<uint8_t> value(syscall_value_size(info.type, info.value_size));
  const void* prev = nullptr;
  for (;;) {
    errno = 0;
    int rc = bpf_map_get_next_key(fd, prev, next.data());
    if (rc < 0) {
      int err = errno_of(rc);
      if (err == ENOENT) return {};
      return sys_error(err, "iterate keys");
    }
    POLICYD_ASSIGN_OR_RETURN(bool found, lookup_elem(fd, next.data(), value.data()));
    if (found) visit(next.data(), value.data());  // deleted concurrently otherwise
    key.swap(next);
    prev = key.data();
  }
}

}  // namespace

Status dump(int fd, const MapInfo& info, const EntryVisitor& visit) {
  const size_t vsize = syscall_value_size(info.type, info.value_size);
  uint32_t chunk = 4096;
  std::vector<uint8_t> keys, values;
  // The batch token is opaque; for hash maps it is a bucket index, for others a key.
  std::vector<uint8_t> in_token(std::max<size_t>(info.key_size, 8));
  std::vector<uint8_t> out_token(in_token.size());
  bool first = true;
  for (;;) {
    keys.resize(size_t{chunk} * info.key_size);
    values.resize(size_t{chunk} * vsize);
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    uint32_t n = chunk;
    errno = 0;
    int rc = bpf_map_lookup_batch(fd, first ? nullptr : in_token.data(), out_token.data(),
                                  keys.data(), values.data(), &n, &opts);
    int err = rc < 0 ? errno_of(rc) : 0;
    if (err == ENOSPC && n == 0) {  // a hash bucket holds more than `chunk` entries
      chunk *= 2;
      continue;
    }
    if (err != 0 && err != ENOENT) {
      if (first && (err == kEnotsupp || err == EOPNOTSUPP || err == EINVAL)) {
        return dump_by_iteration(fd, info, visit);
      }
      return sys_error(err, "batch lookup");
    }
    for (uint32_t i = 0; i < n; ++i) {
      visit(keys.data() + size_t{i} * info.key_size, values.data() + size_t{i} * vsize);
    }
    if (err == ENOENT) return {};  // the normal end of a batch walk
    in_token = out_token;
    first = false;
  }
}

}  // namespace policyd::kernel
