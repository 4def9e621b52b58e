// The map layout compatibility check: field by field, collecting every difference.
#include "core/layout_check.h"

#include "kernel/map_types.h"

namespace policyd::core {
namespace {

void compare_shapes(const std::string& prefix, const MapShape& existing, const MapShape& expected,
                    std::vector<LayoutDifference>& out) {
  const std::string key_field = prefix.empty() ? "slot_key_size" : prefix + "key_size";
  const std::string entries_field = prefix.empty() ? "slots" : prefix + "max_entries";
  add_difference(out, prefix + "type", kernel::map_type_label(existing.type),
                 kernel::map_type_label(expected.type));
  add_difference(out, key_field, std::to_string(existing.key_size),
                 std::to_string(expected.key_size));
  if (existing.max_entries && expected.max_entries) {
    add_difference(out, entries_field, std::to_string(*existing.max_entries),
                   std::to_string(*expected.max_entries));
  }
  if (prefix.empty()) return;  // an outer map's value is always a u32 map id, flags none
  add_difference(out, prefix + "value_size", std::to_string(existing.value_size),
                 std::to_string(expected.value_size));
  add_difference(out, prefix + "flags", std::to_string(existing.flags),
                 std::to_string(expected.flags));
}

}  // namespace

MapShape expected_inner_shape(const InnerTemplate& inner) {
  const uint32_t flags =
      inner.flags | (inner.type == BPF_MAP_TYPE_LPM_TRIE ? BPF_F_NO_PREALLOC : 0);
  return {inner.type, inner.key_size, inner.max_entries, inner.value_size, flags};
}

MapLayout expected_layout(const OuterMapConfig& map) {
  MapShape outer{outer_map_type(map.kind), map.slot_key_size, map.slots, sizeof(uint32_t), 0};
  return {outer, expected_inner_shape(map.inner)};
}

MapShape existing_outer_shape(const kernel::MapInfo& info) {
  return {info.type, info.key_size, info.max_entries, info.value_size, info.flags};
}

MapShape existing_inner_shape(const kernel::MapInfo& info) {
  MapShape shape{info.type, info.key_size, std::nullopt, info.value_size, info.flags};
  if (kernel::is_array(info.type) && !(info.flags & BPF_F_INNER_MAP)) {
    shape.max_entries = info.max_entries;
  }
  return shape;
}

std::vector<LayoutDifference> layout_differences(const MapLayout& existing,
                                                 const MapLayout& expected) {
  std::vector<LayoutDifference> out;
  if (existing.outer && expected.outer) compare_shapes("", *existing.outer, *expected.outer, out);
  if (existing.inner && expected.inner) {
    compare_shapes("inner.", *existing.inner, *expected.inner, out);
  }
  return out;
}

void add_difference(std::vector<LayoutDifference>& out, std::string field, std::string existing,
                    std::string expected) {
  if (existing == expected) return;
  out.push_back({std::move(field), std::move(existing), std::move(expected)});
}

std::string describe(const std::vector<LayoutDifference>& differences) {
  std::string text;
  for (const LayoutDifference& d : differences) {
    if (!text.empty()) text += ", ";
    text += d.field + " " + d.existing + " -> " + d.expected;
  }
  return text;
}

}  // namespace policyd::core
