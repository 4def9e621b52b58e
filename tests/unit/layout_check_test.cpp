// core/layout_check: the one compatibility check for adopting a pinned map and for a reload.
// It must report every differing field with both values, and leave out what the kernel does
// not fix (an inner map's max_entries, except for arrays without BPF_F_INNER_MAP).
#include "core/layout_check.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/model.h"
#include "kernel/map.h"

namespace policyd::core {
namespace {

using ::testing::ElementsAre;

OuterMapConfig acl() {
  OuterMapConfig m;
  m.name = "acl";
  m.kind = OuterKind::kArray;
  m.slots = 64;
  m.slot_key_size = 4;
  m.inner.type = BPF_MAP_TYPE_HASH;
  m.inner.key_size = 8;
  m.inner.value_size = 16;
  m.inner.max_entries = 1024;
  return m;
}

std::vector<std::string> fields(const std::vector<LayoutDifference>& diffs) {
  std::vector<std::string> out;
  for (const LayoutDifference& d : diffs) out.push_back(d.field);
  return out;
}

kernel::MapInfo info_of(const MapShape& shape) {
  kernel::MapInfo info;
  info.type = shape.type;
  info.key_size = shape.key_size;
  info.value_size = shape.value_size;
  info.max_entries = shape.max_entries.value_or(0);
  info.flags = shape.flags;
  return info;
}

TEST(LayoutCheckTest, SameConfigHasNoDifference) {
  EXPECT_TRUE(layout_differences(expected_layout(acl()), expected_layout(acl())).empty());
}

TEST(LayoutCheckTest, ReportsEveryDifferenceNotJustTheFirst) {
  OuterMapConfig changed = acl();
  changed.kind = OuterKind::kHash;
  changed.slots = 32;
  changed.inner.value_size = 24;
  changed.inner.max_entries = 2048;
  const std::vector<LayoutDifference> diffs =
      layout_differences(expected_layout(acl()), expected_layout(changed));
  EXPECT_THAT(fields(diffs), ElementsAre("type", "slots", "inner.max_entries", "inner.value_size"));
  EXPECT_EQ(describe(diffs),
            "type array_of_maps -> hash_of_maps, slots 64 -> 32, inner.max_entries 1024 -> 2048, "
            "inner.value_size 16 -> 24");
}

TEST(LayoutCheckTest, NamesTypesAsTheConfigDoes) {
  OuterMapConfig changed = acl();
  changed.inner.type = BPF_MAP_TYPE_LPM_TRIE;
  const std::vector<LayoutDifference> diffs =
      layout_differences(expected_layout(acl()), expected_layout(changed));
  ASSERT_EQ(diffs.size(), 2u);  // lpm_trie also needs BPF_F_NO_PREALLOC
  EXPECT_EQ(diffs[0].field, "inner.type");
  EXPECT_EQ(diffs[0].existing, "hash");
  EXPECT_EQ(diffs[0].expected, "lpm_trie");
  EXPECT_EQ(diffs[1].field, "inner.flags");
  EXPECT_EQ(diffs[1].expected, std::to_string(BPF_F_NO_PREALLOC));
}

TEST(LayoutCheckTest, PinnedOuterMapIsComparedWithoutItsInnerTemplate) {
  OuterMapConfig pinned = acl();
  pinned.slots = 8;
  pinned.slot_key_size = 8;
  const MapLayout existing{existing_outer_shape(info_of(*expected_layout(pinned).outer)),
                           std::nullopt};
  EXPECT_EQ(describe(layout_differences(existing, expected_layout(acl()))),
            "slot_key_size 8 -> 4, slots 8 -> 64");
}

TEST(LayoutCheckTest, HashInnerMapsMayDifferInMaxEntriesArraysMayNot) {
  OuterMapConfig hash = acl();
  kernel::MapInfo found = info_of(expected_inner_shape(hash.inner));
  found.max_entries = 10;
  found.value_size = 8;
  const MapLayout hash_found{std::nullopt, existing_inner_shape(found)};
  EXPECT_EQ(describe(layout_differences(hash_found, expected_layout(hash))),
            "inner.value_size 8 -> 16");

  OuterMapConfig array = acl();
  array.inner.type = BPF_MAP_TYPE_ARRAY;
  array.inner.key_size = 4;
  kernel::MapInfo found_array = info_of(expected_inner_shape(array.inner));
  found_array.max_entries = 10;
  const MapLayout array_found{std::nullopt, existing_inner_shape(found_array)};
  EXPECT_EQ(describe(layout_differences(array_found, expected_layout(array))),
            "inner.max_entries 10 -> 1024");
  found_array.flags |= BPF_F_INNER_MAP;
  array.inner.flags |= BPF_F_INNER_MAP;
  const MapLayout inner_map_found{std::nullopt, existing_inner_shape(found_array)};
  EXPECT_TRUE(layout_differences(inner_map_found, expected_layout(array)).empty());
}

TEST(LayoutCheckTest, FieldsOutsideTheLayoutJoinTheSameReport) {
  std::vector<LayoutDifference> diffs;
  add_difference(diffs, "group", "none", "g");
  add_difference(diffs, "drain", "entries", "entries");
  EXPECT_EQ(describe(diffs), "group none -> g");
}

}  // namespace
}  // namespace policyd::core
