// G1: a generation is checked completely before any kernel call. The first problem found is
// returned as kInvalidArgument naming the change index, map, slot and entry.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/model.h"
#include "util/result.h"

namespace policyd::core {

using MapConfigs = std::map<std::string, OuterMapConfig>;

// Largest hash outer-map slot key: the drain pin name (15 + 2 x 64 + ids) stays within NAME_MAX.
inline constexpr uint32_t kMaxSlotKeySize = 64;

[[nodiscard]] Status validate_generation(const Generation& gen, const MapConfigs& maps);

// Checks one outer-map configuration (names, sizes, template rules the kernel enforces).
[[nodiscard]] Status validate_map_config(const OuterMapConfig& map);

// Refuses two maps whose pins would share a name in pin_dir: a plain map's <name>, a group
// member's <name>_a and <name>_b, a group's <group>_bank. Names both maps. ('_drain' and other
// names starting with '_' are policyd's own; validate_map_config refuses them as map names.)
[[nodiscard]] Status validate_pin_names(const std::vector<const OuterMapConfig*>& maps);

// A map name the kernel accepts: 1 to 15 of [A-Za-z0-9_.]. The config checks a name where it
// is written (for file:line:column) through this, so no layer above core needs kernel/.
[[nodiscard]] Status check_map_name(const std::string& name);

}  // namespace policyd::core
