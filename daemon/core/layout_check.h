// The one compatibility check between the layout a map's config asks for and the one that
// exists already: a pinned map the engine adopts, or the running config a reload would change.
// It reports every field that differs, never just the first, so one refusal says all there is
// to fix.
#pragma once

#include <linux/bpf.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/model.h"
#include "kernel/map.h"

namespace policyd::core {

// What the kernel fixes when it creates a map. max_entries nullopt: any value is compatible
// (the kernel lets non-array inner maps differ from the outer map's template there).
struct MapShape {
  bpf_map_type type = BPF_MAP_TYPE_UNSPEC;
  uint32_t key_size = 0;
  std::optional<uint32_t> max_entries;
  uint32_t value_size = 0;
  uint32_t flags = 0;
};

// An outer map and its inner maps. inner nullopt: not known (an outer map's inner template
// cannot be read back from the kernel; its installed inner maps are checked one by one).
struct MapLayout {
  std::optional<MapShape> outer;
  std::optional<MapShape> inner;
};

// One differing field, named as the config names it, with the existing and the expected value.
struct LayoutDifference {
  std::string field;
  std::string existing;
  std::string expected;
};

// The layout policyd creates for `map` (inner flags include the BPF_F_NO_PREALLOC lpm_trie
// needs, as the kernel reports them).
[[nodiscard]] MapShape expected_inner_shape(const InnerTemplate& inner);
[[nodiscard]] MapLayout expected_layout(const OuterMapConfig& map);
// What the kernel reports for a map that exists. For an inner map, max_entries only where the
// kernel holds every inner map of an outer map to the template's (arrays without
// BPF_F_INNER_MAP).
[[nodiscard]] MapShape existing_outer_shape(const kernel::MapInfo& info);
[[nodiscard]] MapShape existing_inner_shape(const kernel::MapInfo& info);

// Every field in which `existing` differs from `expected`, in config order; a part missing on
// either side is not compared.
[[nodiscard]] std::vector<LayoutDifference> layout_differences(const MapLayout& existing,
                                                               const MapLayout& expected);
// Adds a difference when the two values are not equal (for fields outside MapLayout).
void add_difference(std::vector<LayoutDifference>& out, std::string field, std::string existing,
                    std::string expected);
// "slots 64 -> 32, inner.value_size 16 -> 24": each field with its existing and expected value.
[[nodiscard]] std::string describe(const std::vector<LayoutDifference>& differences);

}  // namespace policyd::core
