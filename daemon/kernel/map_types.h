// The one table of map types policyd creates: the name the YAML config and the proto use, the
// kernel's bpf_map_type, and the properties the layers above ask about. Config parsing, the API,
// the syscall wrappers and the XDP layout check all read it here.
#pragma once

#include <linux/bpf.h>

#include <string>
#include <string_view>

namespace policyd::kernel {

// Inner maps hold entries; outer maps (map-in-map) hold inner maps in their slots.
enum class MapRole { kInner, kOuter };

struct MapType {
  std::string_view name;  // as written in the YAML config and reported by GetState
  bpf_map_type type;
  MapRole role;
  bool per_cpu;  // one value per possible CPU in syscall buffers
  bool array;    // keys are u32 indexes below max_entries, every one always present
};

inline constexpr MapType kMapTypes[] = {
    {"hash", BPF_MAP_TYPE_HASH, MapRole::kInner, false, false},
    {"array", BPF_MAP_TYPE_ARRAY, MapRole::kInner, false, true},
    {"lpm_trie", BPF_MAP_TYPE_LPM_TRIE, MapRole::kInner, false, false},
    {"percpu_hash", BPF_MAP_TYPE_PERCPU_HASH, MapRole::kInner, true, false},
    {"percpu_array", BPF_MAP_TYPE_PERCPU_ARRAY, MapRole::kInner, true, true},
    {"lru_hash", BPF_MAP_TYPE_LRU_HASH, MapRole::kInner, false, false},
    {"lru_percpu_hash", BPF_MAP_TYPE_LRU_PERCPU_HASH, MapRole::kInner, true, false},
    {"array_of_maps", BPF_MAP_TYPE_ARRAY_OF_MAPS, MapRole::kOuter, false, true},
    {"hash_of_maps", BPF_MAP_TYPE_HASH_OF_MAPS, MapRole::kOuter, false, false},
};

// nullptr for a type outside the table.
[[nodiscard]] constexpr const MapType* find_map_type(bpf_map_type type) {
  for (const MapType& t : kMapTypes) {
    if (t.type == type) return &t;
  }
  return nullptr;
}

// nullptr for a name outside the table or of the other role.
[[nodiscard]] constexpr const MapType* find_map_type(std::string_view name, MapRole role) {
  for (const MapType& t : kMapTypes) {
    if (t.name == name && t.role == role) return &t;
  }
  return nullptr;
}

// One value per possible CPU in syscall buffers; false for a type outside the table.
[[nodiscard]] constexpr bool is_percpu(bpf_map_type type) {
  const MapType* t = find_map_type(type);
  return t && t->per_cpu;
}

// The outer map type whose slots are u32 indexes (array) or hashed keys.
[[nodiscard]] constexpr bpf_map_type outer_map_type(bool array) {
  for (const MapType& t : kMapTypes) {
    if (t.role == MapRole::kOuter && t.array == array) return t.type;
  }
  return BPF_MAP_TYPE_UNSPEC;
}

// "hash, array, ..." in table order, for errors that list what is accepted.
[[nodiscard]] inline std::string map_type_names(MapRole role) {
  std::string list;
  for (const MapType& t : kMapTypes) {
    if (t.role != role) continue;
    if (!list.empty()) list += ", ";
    list += t.name;
  }
  return list;
}

// The table's name, or "map type <number>" for a type outside it.
[[nodiscard]] inline std::string map_type_label(bpf_map_type type) {
  const MapType* t = find_map_type(type);
  return t ? std::string(t->name) : "map type " + std::to_string(static_cast<int>(type));
}

}  // namespace policyd::kernel
