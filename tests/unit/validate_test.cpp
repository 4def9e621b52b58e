// G1 without a kernel: every refusal of core::validate_generation and validate_map_config, with
// the parts of the message an operator needs (map, slot, entry index) asserted.
#include "core/validate.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/model.h"

namespace policyd::core {
namespace {

using ::testing::HasSubstr;

Bytes u32_bytes(uint32_t v) { return array_slot(v); }

Bytes value16(uint32_t action) {
  Bytes v(16, 0);
  std::memcpy(v.data(), &action, sizeof(action));
  return v;
}

// An LPM key: u32 prefix length then four address bytes in network order.
Bytes lpm4(uint32_t prefixlen, uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  Bytes k(8, 0);
  std::memcpy(k.data(), &prefixlen, sizeof(prefixlen));
  k[4] = a;
  k[5] = b;
  k[6] = c;
  k[7] = d;
  return k;
}

InnerTemplate inner(bpf_map_type type, uint32_t key_size) {
  InnerTemplate t;
  t.type = type;
  t.key_size = key_size;
  t.value_size = 16;
  t.max_entries = 16;
  t.counters = {CounterField{"hits", 8, 8}};
  return t;
}

OuterMapConfig outer(std::string name, OuterKind kind, InnerTemplate t, uint32_t slots = 8) {
  OuterMapConfig m;
  m.name = std::move(name);
  m.kind = kind;
  m.slots = slots;
  m.slot_key_size = 4;
  m.inner = std::move(t);
  return m;
}

// acl: array of hash maps (8 slots); hosts: hash of hash maps; idx: array of arrays;
// nets: array of lpm tries.
MapConfigs configs() {
  MapConfigs maps;
  for (OuterMapConfig m : {outer("acl", OuterKind::kArray, inner(BPF_MAP_TYPE_HASH, 4)),
                           outer("hosts", OuterKind::kHash, inner(BPF_MAP_TYPE_HASH, 4)),
                           outer("idx", OuterKind::kArray, inner(BPF_MAP_TYPE_ARRAY, 4)),
                           outer("nets", OuterKind::kArray, inner(BPF_MAP_TYPE_LPM_TRIE, 8))}) {
    maps.emplace(m.name, m);
  }
  return maps;
}

SlotChange replace(std::string map, uint32_t slot, std::vector<Entry> entries) {
  return SlotChange{std::move(map), u32_bytes(slot), false, std::move(entries)};
}

std::vector<Entry> entries(uint32_t n) {
  std::vector<Entry> out;
  for (uint32_t i = 0; i < n; ++i) out.push_back({u32_bytes(i), value16(i)});
  return out;
}

// Asserts `st` is an INVALID_ARGUMENT whose message contains every fragment.
void expect_invalid(const Status& st, const std::vector<std::string>& fragments) {
  ASSERT_FALSE(st.ok()) << "validation accepted it";
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument) << st.error().message();
  EXPECT_EQ(st.error().sys_errno, 0);
  for (const std::string& f : fragments) EXPECT_THAT(st.error().message(), HasSubstr(f));
}

// --- validate_generation -------------------------------------------------------------------

TEST(ValidateGeneration, G1_AcceptsAValidGeneration) {
  Generation gen;
  gen.label = "v1";
  gen.changes.push_back(replace("acl", 0, entries(16)));  // exactly max_entries
  gen.changes.push_back(replace("acl", 7, {}));           // an empty inner map is fine
  gen.changes.push_back(SlotChange{"acl", u32_bytes(3), true, {}});
  gen.changes.push_back(SlotChange{"hosts", Bytes{0xde, 0xad, 0xbe, 0xef}, false, entries(2)});
  gen.changes.push_back(replace("idx", 1, {{u32_bytes(15), value16(1)}}));
  gen.changes.push_back(
      replace("nets", 0,
              {{lpm4(8, 10, 0, 0, 0), value16(1)},
               {lpm4(16, 10, 0, 0, 0), value16(2)},  // same address, other prefix: distinct entries
               {lpm4(32, 192, 168, 1, 1), value16(3)},
               {lpm4(0, 0, 0, 0, 0), value16(4)}}));
  Status st = validate_generation(gen, configs());
  EXPECT_TRUE(st.ok()) << st.error().message();
}

TEST(ValidateGeneration, G1_RefusesEmptyGeneration) {
  expect_invalid(validate_generation(Generation{}, configs()), {"generation has no changes"});
}

TEST(ValidateGeneration, G1_RefusesUnknownMap) {
  Generation gen;
  gen.changes.push_back(replace("acl", 0, entries(1)));
  gen.changes.push_back(replace("nope", 0, entries(1)));
  expect_invalid(validate_generation(gen, configs()), {"changes[1]", "unknown map \"nope\""});
}

TEST(ValidateGeneration, G1_RefusesArraySlotOutOfRange) {
  Generation gen;
  gen.changes.push_back(replace("acl", 8, entries(1)));
  expect_invalid(validate_generation(gen, configs()),
                 {"changes[0]", "slot 8 is out of range", "map \"acl\" has 8 slots"});
}

TEST(ValidateGeneration, G1_RefusesArraySlotKeyOfWrongSize) {
  Generation gen;
  gen.changes.push_back(SlotChange{"acl", Bytes{1, 0}, false, entries(1)});
  expect_invalid(validate_generation(gen, configs()),
                 {"changes[0]", "array slot key must be 4 bytes, got 2"});
}

TEST(ValidateGeneration, G1_RefusesHashSlotKeyOfWrongSize) {
  Generation gen;
  gen.changes.push_back(SlotChange{"hosts", Bytes{1, 2, 3}, false, entries(1)});
  expect_invalid(validate_generation(gen, configs()),
                 {"changes[0]", "slot key is 3 bytes", "map \"hosts\" uses 4"});
}

TEST(ValidateGeneration, G1_RefusesSameSlotChangedTwice) {
  Generation gen;
  gen.changes.push_back(replace("acl", 3, entries(1)));
  gen.changes.push_back(replace("acl", 4, entries(1)));
  gen.changes.push_back(SlotChange{"acl", u32_bytes(3), true, {}});
  expect_invalid(validate_generation(gen, configs()),
                 {"changes[2]", "map \"acl\" slot 3", "already changed by changes[0]"});
}

TEST(ValidateGeneration, G1_SameSlotIndexInDifferentMapsIsNotADuplicate) {
  Generation gen;
  gen.changes.push_back(replace("acl", 3, entries(1)));
  gen.changes.push_back(replace("idx", 3, entries(1)));
  Status st = validate_generation(gen, configs());
  EXPECT_TRUE(st.ok()) << st.error().message();
}

TEST(ValidateGeneration, G1_RefusesDeleteWithEntries) {
  Generation gen;
  gen.changes.push_back(SlotChange{"acl", u32_bytes(1), true, entries(1)});
  expect_invalid(validate_generation(gen, configs()),
                 {"changes[0]", "map \"acl\" slot 1", "a delete carries no entries"});
}

TEST(ValidateGeneration, G1_RefusesTooManyEntries) {
  Generation gen;
  gen.changes.push_back(replace("acl", 1, entries(17)));
  expect_invalid(
      validate_generation(gen, configs()),
      {"changes[0]", "map \"acl\" slot 1", "17 entries", "the inner map holds at most 16"});
}

TEST(ValidateGeneration, G1_RefusesWrongKeySize) {
  Generation gen;
  std::vector<Entry> es = entries(3);
  es[2].key = Bytes{1, 2, 3};
  gen.changes.push_back(replace("acl", 0, entries(1)));
  gen.changes.push_back(replace("acl", 5, es));
  expect_invalid(
      validate_generation(gen, configs()),
      {"changes[1]", "map \"acl\" slot 5", "entry 2", "key is 3 bytes", "the map's key is 4"});
}

TEST(ValidateGeneration, G1_RefusesWrongValueSize) {
  Generation gen;
  std::vector<Entry> es = entries(2);
  es[1].value.resize(12);
  gen.changes.push_back(SlotChange{"hosts", Bytes{9, 9, 9, 9}, false, es});
  expect_invalid(validate_generation(gen, configs()),
                 {"changes[0]", "map \"hosts\" slot 0x09090909", "entry 1", "value is 12 bytes",
                  "the map's value is 16"});
}

TEST(ValidateGeneration, G1_RefusesArrayInnerIndexAtMaxEntries) {
  Generation gen;
  gen.changes.push_back(
      replace("idx", 2, {{u32_bytes(15), value16(1)}, {u32_bytes(16), value16(2)}}));
  expect_invalid(validate_generation(gen, configs()),
                 {"changes[0]", "map \"idx\" slot 2", "entry 1", "array index 16 is out of range",
                  "max_entries 16"});
}

TEST(ValidateGeneration, G1_RefusesLpmPrefixLengthTooLong) {
  Generation gen;
  gen.changes.push_back(replace(
      "nets", 4, {{lpm4(32, 10, 0, 0, 1), value16(1)}, {lpm4(33, 10, 0, 0, 2), value16(2)}}));
  expect_invalid(
      validate_generation(gen, configs()),
      {"changes[0]", "map \"nets\" slot 4", "entry 1", "prefix length 33", "exceeds 32 bits"});
}

TEST(ValidateGeneration, G1_RefusesDuplicateKeys) {
  Generation gen;
  std::vector<Entry> es = entries(4);
  es[3].key = u32_bytes(1);
  gen.changes.push_back(replace("acl", 6, es));
  expect_invalid(
      validate_generation(gen, configs()),
      {"changes[0]", "map \"acl\" slot 6", "entry 3", "duplicate key 01000000", "same as entry 1"});
}

TEST(ValidateGeneration, G1_RefusesLpmKeysThatDifferOnlyPastThePrefix) {
  // 10.0.0.0/8 and 10.1.2.3/8 are the same trie entry: the kernel ignores host bits.
  Generation gen;
  gen.changes.push_back(replace("nets", 1,
                                {{lpm4(8, 10, 0, 0, 0), value16(1)},
                                 {lpm4(24, 10, 1, 2, 0), value16(2)},
                                 {lpm4(8, 10, 1, 2, 3), value16(3)}}));
  expect_invalid(
      validate_generation(gen, configs()),
      {"changes[0]", "map \"nets\" slot 1", "entry 2", "duplicate key", "same as entry 0"});
}

TEST(ValidateGeneration, G1_LpmHostBitsInsideAByteAreMasked) {
  // /12 keeps the high nibble of the second byte: 10.16.x.x and 10.31.x.x are the same /12.
  Generation dup;
  dup.changes.push_back(replace(
      "nets", 1, {{lpm4(12, 10, 0x10, 0, 0), value16(1)}, {lpm4(12, 10, 0x1f, 9, 9), value16(2)}}));
  expect_invalid(validate_generation(dup, configs()), {"entry 1", "same as entry 0"});

  Generation distinct;
  distinct.changes.push_back(replace(
      "nets", 1, {{lpm4(12, 10, 0x10, 0, 0), value16(1)}, {lpm4(12, 10, 0x20, 0, 0), value16(2)}}));
  Status st = validate_generation(distinct, configs());
  EXPECT_TRUE(st.ok()) << st.error().message();
}

// --- validate_map_config -------------------------------------------------------------------

OuterMapConfig good_map() { return outer("acl", OuterKind::kArray, inner(BPF_MAP_TYPE_HASH, 4)); }

TEST(ValidateMapConfig, AcceptsValidConfigs) {
  OuterMapConfig m = good_map();
  m.name = "abcdefghijklmn_";  // 15 characters
  Status st = validate_map_config(m);
  EXPECT_TRUE(st.ok()) << st.error().message();

  OuterMapConfig g = good_map();
  g.name = "abcdefghijklm";  // 13 + "_a" = 15
  g.group = "grp";
  st = validate_map_config(g);
  EXPECT_TRUE(st.ok()) << st.error().message();

  OuterMapConfig lpm = outer("nets", OuterKind::kHash, inner(BPF_MAP_TYPE_LPM_TRIE, 20));
  st = validate_map_config(lpm);
  EXPECT_TRUE(st.ok()) << st.error().message();
}

// bpffs refuses '.' in pin names (EPERM), and '_' starts policyd's own pins (<pin_dir>/_drain).
TEST(ValidateMapConfig, RefusesNamesBpffsCannotPinOrPolicydReserves) {
  OuterMapConfig m = good_map();
  m.name = "acl.v4";
  expect_invalid(validate_map_config(m), {"map \"acl.v4\"", "'.'", "bpffs"});
  m.name = "_drain";
  expect_invalid(validate_map_config(m), {"map \"_drain\"", "reserved"});
  OuterMapConfig g = good_map();
  g.group = "_grp";
  expect_invalid(validate_map_config(g), {"reserved"});
}

TEST(ValidateMapConfig, RefusesSlotKeysTooLongForADrainPinName) {
  OuterMapConfig m = outer("ports", OuterKind::kHash, inner(BPF_MAP_TYPE_HASH, 4));
  m.slot_key_size = 64;
  EXPECT_TRUE(validate_map_config(m).ok());
  m.slot_key_size = 65;
  expect_invalid(validate_map_config(m), {"map \"ports\"", "at most 64 bytes", "65"});
}

TEST(ValidateMapConfig, RefusesNameTooLong) {
  OuterMapConfig m = good_map();
  m.name = "abcdefghijklmnop";  // 16
  expect_invalid(validate_map_config(m),
                 {"map \"abcdefghijklmnop\"", "is 16 characters", "at most 15"});
}

TEST(ValidateMapConfig, RefusesEmptyName) {
  OuterMapConfig m = good_map();
  m.name = "";
  expect_invalid(validate_map_config(m), {"map name is empty"});
}

TEST(ValidateMapConfig, RefusesBadCharacter) {
  OuterMapConfig m = good_map();
  m.name = "acl-v4";
  expect_invalid(validate_map_config(m), {"map \"acl-v4\"", "'-'", "[A-Za-z0-9_.]"});
}

TEST(ValidateMapConfig, RefusesGroupMemberNameTooLong) {
  // The member itself fits, but its bank copies "<name>_a" / "<name>_b" do not.
  OuterMapConfig m = good_map();
  m.name = "abcdefghijklmn";  // 14 + "_a" = 16
  m.group = "grp";
  expect_invalid(validate_map_config(m),
                 {"map \"abcdefghijklmn\"", "\"abcdefghijklmn_a\"", "is 16 characters"});
}

TEST(ValidateMapConfig, RefusesGroupNameTooLongForItsBankWord) {
  OuterMapConfig m = good_map();
  m.group = "abcdefghijk";  // 11 + "_bank" = 16
  expect_invalid(validate_map_config(m),
                 {"map \"acl\" group \"abcdefghijk\"", "abcdefghijk_bank", "is 16 characters"});
}

TEST(ValidateMapConfig, RefusesCounterOutsideValue) {
  OuterMapConfig m = good_map();
  m.inner.counters = {CounterField{"bytes", 12, 8}};  // 12 + 8 > 16
  expect_invalid(validate_map_config(m), {"map \"acl\"", "counter \"bytes\"", "outside the value"});
}

TEST(ValidateMapConfig, RefusesCounterOfOddSize) {
  OuterMapConfig m = good_map();
  m.inner.counters = {CounterField{"hits", 8, 2}};
  expect_invalid(validate_map_config(m), {"map \"acl\"", "counter \"hits\"", "4 or 8 bytes"});
}

TEST(ValidateMapConfig, RefusesZeroSlots) {
  OuterMapConfig m = good_map();
  m.slots = 0;
  expect_invalid(validate_map_config(m), {"map \"acl\"", "slots must be at least 1"});
}

TEST(ValidateMapConfig, RefusesArrayOuterWithWideSlotKey) {
  OuterMapConfig m = good_map();
  m.slot_key_size = 8;
  expect_invalid(validate_map_config(m), {"map \"acl\"", "slot keys are 4 bytes"});
}

TEST(ValidateMapConfig, RefusesNestedMapInMap) {
  OuterMapConfig m = good_map();
  m.inner.type = BPF_MAP_TYPE_ARRAY_OF_MAPS;
  expect_invalid(validate_map_config(m), {"map \"acl\"", "two levels at most"});
}

TEST(ValidateMapConfig, RefusesZeroInnerSizes) {
  OuterMapConfig m = good_map();
  m.inner.max_entries = 0;
  expect_invalid(validate_map_config(m), {"map \"acl\"", "must be positive"});
}

TEST(ValidateMapConfig, RefusesArrayInnerWithWideKey) {
  OuterMapConfig m = outer("idx", OuterKind::kArray, inner(BPF_MAP_TYPE_PERCPU_ARRAY, 8));
  expect_invalid(validate_map_config(m), {"map \"idx\"", "array inner maps have 4-byte keys"});
}

TEST(ValidateMapConfig, RefusesLpmKeyWithoutData) {
  OuterMapConfig m = outer("nets", OuterKind::kArray, inner(BPF_MAP_TYPE_LPM_TRIE, 4));
  expect_invalid(validate_map_config(m), {"map \"nets\"", "lpm_trie keys"});
}

}  // namespace
}  // namespace policyd::core
