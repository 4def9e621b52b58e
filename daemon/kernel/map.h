// Typed wrappers over libbpf's map syscalls: create, info, pin, element and batch operations,
// and a full dump. Everything returns Result with the errno read at the failing call.
// Thread-safe: these are stateless syscall wrappers; the kernel serialises per map.
#pragma once

#include <linux/bpf.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kernel/map_types.h"
#include "kernel/unique_fd.h"
#include "util/result.h"

namespace policyd::kernel {

// Longest map name the kernel accepts (BPF_OBJ_NAME_LEN - 1).
inline constexpr size_t kMaxMapName = 15;

struct MapSpec {
  bpf_map_type type = BPF_MAP_TYPE_UNSPEC;
  std::string name;  // <= 15 chars of [A-Za-z0-9_.]; checked by create_map
  uint32_t key_size = 0;
  uint32_t value_size = 0;  // per-CPU maps: the size of one CPU's value
  uint32_t max_entries = 0;
  uint32_t flags = 0;
  int inner_map_fd = -1;  // template for map-in-map outer maps (borrowed, not owned)
};

struct MapInfo {
  bpf_map_type type = BPF_MAP_TYPE_UNSPEC;
  uint32_t id = 0;
  uint32_t key_size = 0;
  uint32_t value_size = 0;
  uint32_t max_entries = 0;
  uint32_t flags = 0;
  std::string name;
};

// Checks the kernel's rule for map names; the error names the offending character.
[[nodiscard]] Status check_map_name(const std::string& name);
[[nodiscard]] const char* map_type_name(bpf_map_type type);
// From the map type table (kernel/map_types.h, which also has is_percpu); false for types
// outside it.
[[nodiscard]] bool is_map_in_map(bpf_map_type type);
// An array or per-CPU array inner map: u32 index keys below max_entries.
[[nodiscard]] bool is_array(bpf_map_type type);
// Number of possible CPUs (what per-CPU syscall buffers are sized by).
[[nodiscard]] uint32_t possible_cpus();
// Bytes of one element's value in a syscall buffer: per-CPU values are 8-byte aligned per CPU.
[[nodiscard]] size_t syscall_value_size(bpf_map_type type, uint32_t value_size);
// Within that buffer: bytes from one CPU's copy of the value to the next (the value's size for
// maps that are not per-CPU), and how many copies there are (1 for those maps).
[[nodiscard]] size_t cpu_value_stride(bpf_map_type type, uint32_t value_size);
[[nodiscard]] uint32_t value_copies(bpf_map_type type);

[[nodiscard]] Result<UniqueFd> create_map(const MapSpec& spec);
[[nodiscard]] Result<MapInfo> map_info(int fd);
[[nodiscard]] Result<UniqueFd> map_fd_by_id(uint32_t id);
// Every map id alive in the kernel right now.
[[nodiscard]] Result<std::vector<uint32_t>> list_map_ids();

[[nodiscard]] Status pin(int fd, const std::string& path);
// kNotFound when nothing is pinned there.
[[nodiscard]] Result<UniqueFd> open_pinned(const std::string& path);
[[nodiscard]] Status unpin(const std::string& path);

[[nodiscard]] Status update_elem(int fd, const void* key, const void* value, uint64_t flags = 0);
// Ok(false) when the key does not exist.
[[nodiscard]] Result<bool> delete_elem(int fd, const void* key);
// Ok(false) when the key does not exist.
[[nodiscard]] Result<bool> lookup_elem(int fd, const void* key, void* value);

// A batch call applies elements one by one; `applied` counts those done before `error`.
struct BatchOutcome {
  uint32_t applied = 0;
  std::optional<Error> error;
};
// One BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH call, unchunked (one call = one wait on
// map-in-map outer maps).
[[nodiscard]] BatchOutcome update_batch(int fd, const void* keys, const void* values,
                                        uint32_t count);
[[nodiscard]] BatchOutcome delete_batch(int fd, const void* keys, uint32_t count);
// True when a batch call failed because this map type has no batch op.
[[nodiscard]] bool batch_unsupported(const Error& error);

// Writes `count` elements in chunks of `chunk`, falling back to single updates when the map
// type has no batch update. keys: count * key_size bytes; values: count * value_stride bytes.
[[nodiscard]] Status fill(int fd, const uint8_t* keys, size_t key_size, const uint8_t* values,
                          size_t value_stride, size_t count, size_t chunk = 4096);

// Calls visit(key, value) for every element, with lookup batches where the map supports them
// and key iteration otherwise. value points at syscall_value_size() bytes.
using EntryVisitor = std::function<void(const uint8_t* key, const uint8_t* value)>;
[[nodiscard]] Status dump(int fd, const MapInfo& info, const EntryVisitor& visit);

}  // namespace policyd::kernel
