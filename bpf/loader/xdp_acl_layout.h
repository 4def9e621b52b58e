// The layout check for the example XDP firewall: does a policyd map description (from the
// config file at build time, or from GetState at run time) match the structs and sizes of
// bpf/xdp_acl.h that the program was compiled with? Pure functions, thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace policyd::xdp {

// One field as policyd describes it (config Layout or GetState FieldLayout).
struct FieldView {
  std::string name;
  uint32_t offset = 0;
  uint32_t size = 0;
  bool counter = false;
  bool padding = false;  // pad[N]: not compared by name, only covered by the total size
};

// An outer map as policyd describes it.
struct MapView {
  std::string name;
  std::string type;  // "array_of_maps" or "hash_of_maps"
  uint32_t slots = 0;
  uint32_t slot_key_size = 0;
  std::string inner_type;  // "lpm_trie", ...
  uint32_t inner_max_entries = 0;
  uint32_t key_size = 0;
  uint32_t value_size = 0;
  std::vector<FieldView> key;
  std::vector<FieldView> value;
};

// The maps xdp_acl.bpf.c declares ("xacl_if", "xacl").
[[nodiscard]] std::vector<std::string> expected_map_names();

// Every difference between `map` and what xdp_acl.h says map.name must look like, as
// messages naming the map, the field and both values; empty when they match. A map name the
// program does not use is itself a difference.
[[nodiscard]] std::vector<std::string> check_map(const MapView& map);

}  // namespace policyd::xdp
