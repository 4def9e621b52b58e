// Unit tests for ctl/policy_file: policy YAML -> PushGenerationRequest with raw bytes, encoded
// with the layouts GetState reports. Every refusal names file:line:column and the field path;
// the examples in config/examples/ parse against the maps of config/policyd.yaml.
#include "ctl/policy_file.h"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "schema/schema.h"
#include "util/hex.h"

namespace policyd::ctl {
namespace {

using schema::Align;
using schema::Bytes;
using schema::Field;
using schema::FieldSpec;
using schema::FieldType;
using schema::Layout;
using schema::make_layout;

// FieldLayouts as the daemon reports them: laid out by schema::make_layout (packed).
uint32_t add_layout(const std::vector<FieldSpec>& specs,
                    google::protobuf::RepeatedPtrField<v1::FieldLayout>* out) {
  Result<Layout> layout = make_layout(specs, Align::kPacked);
  EXPECT_TRUE(layout.ok()) << layout.error().message();
  if (!layout.ok()) return 0;
  for (const Field& f : layout->fields) {
    v1::FieldLayout* fl = out->Add();
    fl->set_name(f.name);
    fl->set_type(f.type_name());
    fl->set_offset(f.offset);
    fl->set_size(f.size);
    fl->set_counter(f.counter);
  }
  return layout->size;
}

// The maps of config/policyd.yaml, plus `blob`: an array map without schemas (raw bytes only).
v1::GetStateResponse example_state() {
  v1::GetStateResponse state;
  state.set_generation(7);

  v1::MapState* acl = state.add_maps();
  acl->set_name("acl");
  acl->set_type("array_of_maps");
  acl->set_slots(64);
  acl->set_inner_type("lpm_trie");
  acl->set_inner_max_entries(65536);
  acl->set_key_size(add_layout({{"prefix", "ipv4_prefix"}}, acl->mutable_key_layout()));
  acl->set_value_size(
      add_layout({{"action", "u32"}, {"hits", "u64", true}}, acl->mutable_value_layout()));

  v1::MapState* ports = state.add_maps();
  ports->set_name("ports");
  ports->set_type("hash_of_maps");
  ports->set_slots(16);
  ports->set_inner_type("hash");
  ports->set_inner_max_entries(1024);
  ports->set_slot_key_size(add_layout({{"ifindex", "u32"}}, ports->mutable_slot_key_layout()));
  ports->set_key_size(add_layout({{"port", "be16"}, {"proto", "u8"}, {"pad", "pad[1]"}},
                                 ports->mutable_key_layout()));
  ports->set_value_size(add_layout({{"verdict", "u8"}, {"pad", "pad[3]"}, {"packets", "u64", true}},
                                   ports->mutable_value_layout()));

  v1::MapState* blob = state.add_maps();
  blob->set_name("blob");
  blob->set_type("array_of_maps");
  blob->set_slots(4);
  blob->set_key_size(4);
  blob->set_value_size(2);
  return state;
}

std::string hex(const std::string& raw) { return util::to_hex(Bytes(raw.begin(), raw.end())); }

Result<v1::PushGenerationRequest> parse(const std::string& yaml) {
  return parse_policy_file(yaml, "policy.yaml", example_state());
}

// The error message of a policy that must be refused.
std::string error_of(const std::string& yaml) {
  Result<v1::PushGenerationRequest> r = parse(yaml);
  EXPECT_FALSE(r.ok()) << "accepted:\n" << yaml;
  if (r.ok()) return "";
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  return r.error().message();
}

TEST(PolicyFileTest, TypedKeysAndValuesEncodeToLayoutBytes) {
  Result<v1::PushGenerationRequest> r = parse(R"(label: v42
changes:
  - map: acl
    slot: 5
    entries:
      - {key: {prefix: 10.0.0.0/8}, value: {action: 1}}
      - key: {prefix: 192.168.1.0/24}
        value: {action: 0x102, hits: 7}
)");
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->label(), "v42");
  EXPECT_EQ(r->expected_generation(), 0u);
  ASSERT_EQ(r->changes_size(), 1);
  const v1::SlotChange& c = r->changes(0);
  EXPECT_EQ(c.map(), "acl");
  ASSERT_EQ(c.slot().slot_case(), v1::SlotRef::kIndex);
  EXPECT_EQ(c.slot().index(), 5u);
  EXPECT_FALSE(c.delete_());
  ASSERT_EQ(c.entries_size(), 2);
  // ipv4_prefix: u32 prefix length (little-endian), then the address in network order.
  EXPECT_EQ(hex(c.entries(0).key()), "080000000a000000");
  // u32 action, u64 hits (packed): omitted fields are zero.
  EXPECT_EQ(hex(c.entries(0).value()), "010000000000000000000000");
  EXPECT_EQ(hex(c.entries(1).key()), "18000000c0a80100");
  EXPECT_EQ(hex(c.entries(1).value()), "020100000700000000000000");
  EXPECT_FALSE(c.entries(0).has_key_fields());
  EXPECT_FALSE(c.entries(0).has_value_fields());
}

TEST(PolicyFileTest, EntryWithoutValueIsZero) {
  Result<v1::PushGenerationRequest> r = parse(R"(changes:
  - {map: acl, slot: 0, entries: [{key: {prefix: 10.0.0.0/8}}, {key_hex: "0000000000000000"}]}
)");
  ASSERT_TRUE(r.ok()) << r.error().message();
  ASSERT_EQ(r->changes(0).entries_size(), 2);
  EXPECT_EQ(hex(r->changes(0).entries(0).value()), "000000000000000000000000");
  EXPECT_EQ(hex(r->changes(0).entries(1).value()), "000000000000000000000000");
  // The key's problem is reported, not the absent value.
  EXPECT_EQ(error_of("changes:\n  - {map: acl, slot: 0, entries: [{key: {prefx: 10.0.0.0/8}}]}\n"),
            "policy.yaml:2:42: changes[0].entries[0].key: unknown field \"prefx\" (fields: "
            "prefix)");
}

TEST(PolicyFileTest, RawHexPassesThrough) {
  Result<v1::PushGenerationRequest> r = parse(R"(changes:
  - map: acl
    slot: 0
    entries:
      - {key_hex: "18000000c0a80100", value_hex: "0x020000000000000000000000"}
      - {key_hex: 20000000C0000201, value: {action: 3}}
      - {key: {prefix: 0.0.0.0/0}, value_hex: "ffffffff0000000000000000"}
)");
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_TRUE(r->label().empty());
  const v1::SlotChange& c = r->changes(0);
  ASSERT_EQ(c.entries_size(), 3);
  EXPECT_EQ(hex(c.entries(0).key()), "18000000c0a80100");
  EXPECT_EQ(hex(c.entries(0).value()), "020000000000000000000000");
  EXPECT_EQ(hex(c.entries(1).key()), "20000000c0000201");
  EXPECT_EQ(hex(c.entries(1).value()), "030000000000000000000000");
  EXPECT_EQ(hex(c.entries(2).key()), "0000000000000000");
  EXPECT_EQ(hex(c.entries(2).value()), "ffffffff0000000000000000");
}

TEST(PolicyFileTest, HashSlotByTypedFieldsOrHex) {
  Result<v1::PushGenerationRequest> r = parse(R"(changes:
  - map: ports
    slot: {ifindex: 3}
    entries:
      - {key: {port: 443, proto: 6}, value: {verdict: 1}}
      - {key: {proto: 17, port: 53}, value: {verdict: 2, packets: 9}}
  - map: ports
    slot_hex: "04000000"
    entries: []
)");
  ASSERT_TRUE(r.ok()) << r.error().message();
  ASSERT_EQ(r->changes_size(), 2);
  const v1::SlotChange& c = r->changes(0);
  ASSERT_EQ(c.slot().slot_case(), v1::SlotRef::kKey);
  EXPECT_EQ(hex(c.slot().key()), "03000000");  // u32 ifindex, little-endian
  ASSERT_EQ(c.entries_size(), 2);
  EXPECT_EQ(hex(c.entries(0).key()), "01bb0600");  // be16 443, u8 6, pad
  EXPECT_EQ(hex(c.entries(0).value()), "010000000000000000000000");
  EXPECT_EQ(hex(c.entries(1).key()), "00351100");
  EXPECT_EQ(hex(c.entries(1).value()), "020000000900000000000000");
  ASSERT_EQ(r->changes(1).slot().slot_case(), v1::SlotRef::kKey);
  EXPECT_EQ(hex(r->changes(1).slot().key()), "04000000");
  EXPECT_EQ(r->changes(1).entries_size(), 0);
  EXPECT_FALSE(r->changes(1).delete_());
}

TEST(PolicyFileTest, DeleteCarriesNoEntries) {
  Result<v1::PushGenerationRequest> r = parse(R"(changes:
  - {map: acl, slot: 3, delete: true}
  - {map: ports, slot: {ifindex: 1}, delete: yes}
  - {map: acl, slot: 4, delete: false, entries: []}
)");
  ASSERT_TRUE(r.ok()) << r.error().message();
  ASSERT_EQ(r->changes_size(), 3);
  EXPECT_TRUE(r->changes(0).delete_());
  EXPECT_EQ(r->changes(0).slot().index(), 3u);
  EXPECT_EQ(r->changes(0).entries_size(), 0);
  EXPECT_TRUE(r->changes(1).delete_());
  EXPECT_EQ(hex(r->changes(1).slot().key()), "01000000");
  EXPECT_FALSE(r->changes(2).delete_());
}

TEST(PolicyFileTest, MapWithoutSchemaTakesRawBytes) {
  Result<v1::PushGenerationRequest> r = parse(R"(changes:
  - map: blob
    slot: 1
    entries: [{key_hex: "01000000", value_hex: "abcd"}]
)");
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(hex(r->changes(0).entries(0).value()), "abcd");
  EXPECT_EQ(error_of(R"(changes:
  - map: blob
    slot: 1
    entries: [{key: {k: 1}, value_hex: "abcd"}]
)"),
            "policy.yaml:4:21: changes[0].entries[0].key: map \"blob\" has no key schema; give "
            "key_hex with the raw bytes");
}

// ---- refusals: file:line:column, path, what is wrong ----

TEST(PolicyFileErrorTest, MalformedYaml) {
  EXPECT_EQ(error_of("label: v1\nchanges: [\n  {map: acl\n"),
            "policy.yaml:4:1: malformed YAML: end of map flow not found");
  EXPECT_EQ(error_of("label: v1\n  bad: indent\n"),
            "policy.yaml:2:6: malformed YAML: illegal map value");
}

// yaml-cpp 0.7's LoadAll never returns on these (it loops, allocating a null document each
// time); the parser counts documents with a bounded loop instead (found by
// tests/fuzz/policy_file_fuzz).
TEST(PolicyFileErrorTest, InputThatLoopsYamlCppsLoadAllIsAnError) {
  EXPECT_EQ(error_of(",\n"), "policy.yaml:1:1: malformed YAML: no document can be read here");
  EXPECT_EQ(error_of(",\n,\n"), "policy.yaml:1:1: malformed YAML: no document can be read here");
  EXPECT_EQ(error_of("a: 1\n---\n,\n"),
            "policy.yaml:2:1: a policy file holds one YAML document, not several");
}

TEST(PolicyFileErrorTest, NotAPolicy) {
  EXPECT_EQ(error_of(""), "policy.yaml: empty policy file (expected label and changes)");
  EXPECT_EQ(error_of("# nothing\n"), "policy.yaml: empty policy file (expected label and changes)");
  EXPECT_EQ(error_of("- a\n- b\n"), "policy.yaml:1:1: expected a mapping with label and changes");
  EXPECT_EQ(error_of("label: a\n---\nlabel: b\n"),
            "policy.yaml:2:1: a policy file holds one YAML document, not several");  // at its ---
  EXPECT_EQ(error_of("label: a\n"),
            "policy.yaml:1:1: missing \"changes\" (the list of slot changes)");
  EXPECT_EQ(error_of("changes: {map: acl}\n"),
            "policy.yaml:1:10: changes: expected a list of slot changes");
  EXPECT_EQ(error_of("label: [a]\nchanges: []\n"),
            "policy.yaml:1:8: label: expected a single value");
}

TEST(PolicyFileErrorTest, UnknownTopLevelKey) {
  EXPECT_EQ(error_of("label: v1\nlable: v2\nchanges: []\n"),
            "policy.yaml:2:1: unknown key \"lable\" (keys: label, changes)");
  EXPECT_EQ(error_of("label: v1\nlabel: v2\nchanges: []\n"),
            "policy.yaml:2:1: duplicate key \"label\"");
}

TEST(PolicyFileErrorTest, UnknownChangeOrEntryKey) {
  EXPECT_EQ(error_of("changes:\n  - {map: acl, slots: 1}\n"),
            "policy.yaml:2:16: changes[0]: unknown key \"slots\" (keys: map, slot, slot_hex, "
            "entries, delete)");
  EXPECT_EQ(error_of("changes:\n  - {map: acl, slot: 1, entries: [{key_hex: '0800000000000000', "
                     "valu: {action: 1}}]}\n"),
            "policy.yaml:2:65: changes[0].entries[0]: unknown key \"valu\" (keys: key, key_hex, "
            "value, value_hex)");
}

TEST(PolicyFileErrorTest, UnknownMap) {
  EXPECT_EQ(error_of("changes:\n  - map: acls\n    slot: 0\n    entries: []\n"),
            "policy.yaml:2:10: changes[0].map: unknown map \"acls\" (maps: acl, ports, blob)");
  EXPECT_EQ(error_of("changes:\n  - slot: 0\n    entries: []\n"),
            "policy.yaml:2:5: changes[0]: missing \"map\" (the outer map's name)");
}

TEST(PolicyFileErrorTest, UnknownField) {
  EXPECT_EQ(error_of(R"(changes:
  - map: acl
    slot: 0
    entries:
      - {key: {prefix: 10.0.0.0/8}, value: {action: 1}}
      - {key: {prefix: 10.1.0.0/16}, value: {acton: 1}}
)"),
            "policy.yaml:6:46: changes[0].entries[1].value: unknown field \"acton\" (fields: "
            "action, hits)");
  // Padding is not a field one can set.
  EXPECT_EQ(error_of("changes:\n  - map: ports\n    slot: {ifindex: 1}\n"
                     "    entries: [{key: {port: 1, proto: 6, pad: 0}, value: {}}]\n"),
            "policy.yaml:4:41: changes[0].entries[0].key: unknown field \"pad\" (fields: port, "
            "proto)");
}

TEST(PolicyFileErrorTest, ValueOutOfRange) {
  // The example of the design note, on a u8 field.
  EXPECT_EQ(error_of(R"(label: v42
changes:
  - map: ports
    slot: {ifindex: 2}
    entries:
      - {key: {port: 80, proto: 6}, value: {verdict: 1}}
      - {key: {port: 81, proto: 6}, value: {verdict: 300}}
)"),
            "policy.yaml:7:54: changes[0].entries[1].value.verdict: value 300 is out of range "
            "(max 255)");
  EXPECT_EQ(error_of("changes:\n  - map: ports\n    slot: {ifindex: 2}\n"
                     "    entries: [{key: {port: 65536, proto: 6}, value: {}}]\n"),
            "policy.yaml:4:28: changes[0].entries[0].key.port: value 65536 is out of range "
            "(max 65535)");
  EXPECT_EQ(error_of("changes:\n  - map: acl\n    slot: 0\n"
                     "    entries: [{key: {prefix: 10.0.0.0/8}, value: {action: -1}}]\n"),
            "policy.yaml:4:59: changes[0].entries[0].value.action: \"-1\" is not an unsigned "
            "integer");
  EXPECT_EQ(error_of("changes:\n  - map: acl\n    slot: 0\n"
                     "    entries: [{key: {prefix: 10.0.0.0/8}, value: {action: }}]\n"),
            "policy.yaml:4:59: changes[0].entries[0].value.action: missing value");
}

TEST(PolicyFileErrorTest, BadPrefix) {
  const std::string head = "changes:\n  - map: acl\n    slot: 0\n    entries:\n";
  EXPECT_EQ(error_of(head + "      - {key: {prefix: 10.0.0.1/8}, value: {}}\n"),
            "policy.yaml:5:24: changes[0].entries[0].key.prefix: \"10.0.0.1/8\" has host bits set "
            "past /8");
  EXPECT_EQ(error_of(head + "      - {key: {prefix: 10.0.0.0/33}, value: {}}\n"),
            "policy.yaml:5:24: changes[0].entries[0].key.prefix: \"10.0.0.0/33\" has a bad prefix "
            "length (0..32)");
  EXPECT_EQ(error_of(head + "      - {key: {prefix: 10.0.0.0}, value: {}}\n"),
            "policy.yaml:5:24: changes[0].entries[0].key.prefix: \"10.0.0.0\" is not a prefix "
            "(address/length)");
  EXPECT_EQ(error_of(head + "      - {key: {prefix: 10.0.300.0/24}, value: {}}\n"),
            "policy.yaml:5:24: changes[0].entries[0].key.prefix: \"10.0.300.0\" is not an IPv4 "
            "address");
}

TEST(PolicyFileErrorTest, WrongRawHexLength) {
  const std::string head = "changes:\n  - map: acl\n    slot: 0\n    entries:\n";
  EXPECT_EQ(error_of(head + "      - {key_hex: \"0800000a\", value: {}}\n"),
            "policy.yaml:5:19: changes[0].entries[0].key_hex: expected 8 bytes (16 hex digits), "
            "got 4");
  EXPECT_EQ(error_of(head + "      - {key_hex: \"080000000a000000\", value_hex: \"01\"}\n"),
            "policy.yaml:5:50: changes[0].entries[0].value_hex: expected 12 bytes (24 hex "
            "digits), got 1");
  EXPECT_EQ(error_of(head + "      - {key_hex: \"08000g000a000000\", value: {}}\n"),
            "policy.yaml:5:19: changes[0].entries[0].key_hex: \"08000g000a000000\" is not hex");
  EXPECT_EQ(error_of("changes:\n  - {map: ports, slot_hex: \"010000\", entries: []}\n"),
            "policy.yaml:2:28: changes[0].slot_hex: expected 4 bytes (8 hex digits), got 3");
}

TEST(PolicyFileErrorTest, KeyBothTypedAndHex) {
  const std::string head = "changes:\n  - map: acl\n    slot: 0\n    entries:\n";
  EXPECT_EQ(
      error_of(head +
               "      - {key: {prefix: 10.0.0.0/8}, key_hex: \"080000000a000000\", value: {}}\n"),
      "policy.yaml:5:37: changes[0].entries[0]: give key or key_hex, not both");
  EXPECT_EQ(error_of(head + "      - {key: {prefix: 10.0.0.0/8}, value: {}, value_hex: \"00\"}\n"),
            "policy.yaml:5:48: changes[0].entries[0]: give value or value_hex, not both");
  EXPECT_EQ(error_of(head + "      - {value: {}}\n"),
            "policy.yaml:5:9: changes[0].entries[0]: missing key (key: {fields} or key_hex: "
            "\"<hex>\")");
}

TEST(PolicyFileErrorTest, TypedKeyNeedsEveryField) {
  EXPECT_EQ(error_of("changes:\n  - map: ports\n    slot: {ifindex: 2}\n"
                     "    entries: [{key: {port: 80}, value: {}}]\n"),
            "policy.yaml:4:21: changes[0].entries[0].key: missing field \"proto\" (a typed key "
            "gives every field: port, proto)");
  EXPECT_EQ(error_of("changes:\n  - map: ports\n    slot: {}\n    entries: []\n"),
            "policy.yaml:3:11: changes[0].slot: missing field \"ifindex\" (a typed slot_key "
            "gives every field: ifindex)");
}

TEST(PolicyFileErrorTest, ArraySlotIsANonNegativeInteger) {
  const auto slot = [](const std::string& s) {
    return "changes:\n  - map: acl\n    slot: " + s + "\n    entries: []\n";
  };
  const std::string want = "(a non-negative integer below 64)";
  EXPECT_EQ(error_of(slot("-1")),
            "policy.yaml:3:11: changes[0].slot: \"-1\" is not a slot index " + want);
  EXPECT_EQ(error_of(slot("1.5")),
            "policy.yaml:3:11: changes[0].slot: \"1.5\" is not a slot index " + want);
  EXPECT_EQ(error_of(slot("zero")),
            "policy.yaml:3:11: changes[0].slot: \"zero\" is not a slot index " + want);
  EXPECT_EQ(error_of(slot("99999999999")),
            "policy.yaml:3:11: changes[0].slot: \"99999999999\" is not a slot index " + want);
  EXPECT_EQ(error_of(slot("{ifindex: 1}")),
            "policy.yaml:3:11: changes[0].slot: expected a slot index " + want);
  EXPECT_EQ(error_of(slot("64")),
            "policy.yaml:3:11: changes[0].slot: slot 64 is out of range (\"acl\" has 64 slots)");
  EXPECT_EQ(error_of("changes:\n  - {map: acl, slot_hex: \"00000000\", entries: []}\n"),
            "policy.yaml:2:16: changes[0].slot_hex: slot_hex is for hash_of_maps; \"acl\" takes "
            "slot: <index>");
  EXPECT_EQ(error_of("changes:\n  - {map: acl, entries: []}\n"),
            "policy.yaml:2:5: changes[0]: missing \"slot\" (an index)");
}

TEST(PolicyFileErrorTest, HashSlotIsAMapping) {
  EXPECT_EQ(error_of("changes:\n  - {map: ports, slot: 3, entries: []}\n"),
            "policy.yaml:2:24: changes[0].slot: \"ports\" is a hash_of_maps: give the slot as a "
            "mapping of its slot_key fields (ifindex), or slot_hex");
  EXPECT_EQ(error_of("changes:\n  - {map: ports, slot: {ifindex: eth0}, entries: []}\n"),
            "policy.yaml:2:34: changes[0].slot.ifindex: \"eth0\" is not an unsigned integer");
}

TEST(PolicyFileErrorTest, DeleteWithEntries) {
  EXPECT_EQ(error_of(R"(changes:
  - map: acl
    slot: 3
    delete: true
    entries:
      - {key: {prefix: 10.0.0.0/8}, value: {action: 1}}
)"),
            "policy.yaml:5:5: changes[0]: delete: true takes no entries (a deleted slot has no "
            "inner map)");
  EXPECT_EQ(error_of("changes:\n  - {map: acl, slot: 3, delete: maybe}\n"),
            "policy.yaml:2:33: changes[0].delete: expected true or false");
  EXPECT_EQ(error_of("changes:\n  - {map: acl, slot: 3}\n"),
            "policy.yaml:2:5: changes[0]: missing \"entries\" (the new inner map's complete "
            "contents; entries: [] for an empty map) or \"delete: true\"");
}

TEST(PolicyFileErrorTest, DuplicateKeysAndSlots) {
  EXPECT_EQ(error_of(R"(changes:
  - map: acl
    slot: 0
    entries:
      - {key: {prefix: 10.0.0.0/8}, value: {action: 1}}
      - {key_hex: "080000000a000000", value: {action: 2}}
)"),
            "policy.yaml:6:19: changes[0].entries[1]: duplicate key (the same bytes as "
            "changes[0].entries[0])");
  EXPECT_EQ(error_of("changes:\n  - {map: ports, slot: {ifindex: 1}, entries: []}\n"
                     "  - {map: ports, slot_hex: \"01000000\", delete: true}\n"),
            "policy.yaml:3:28: changes[1].slot_hex: map \"ports\" slot is already changed by "
            "changes[0]");
  EXPECT_EQ(error_of("changes:\n  - {map: acl, slot: 0, entries: [{key: {prefix: 1.0.0.0/8, "
                     "prefix: 2.0.0.0/8}, value: {}}]}\n"),
            "policy.yaml:2:61: changes[0].entries[0].key: duplicate field \"prefix\"");
}

TEST(PolicyFileErrorTest, ErrorsNameTheFileGiven) {
  Result<v1::PushGenerationRequest> r =
      parse_policy_file("changes: [{map: nope}]\n", "/etc/policy/p.yaml", example_state());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(),
            "/etc/policy/p.yaml:1:17: changes[0].map: unknown map \"nope\" (maps: acl, ports, "
            "blob)");
  r = parse_policy_file("changes: [{map: nope}]\n", "p.yaml", v1::GetStateResponse());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(), "p.yaml:1:17: changes[0].map: unknown map \"nope\" (maps: none)");
}

// ---- layouts from GetState ----

TEST(LayoutFromStateTest, RebuildsOffsetsAndTypes) {
  const v1::GetStateResponse state = example_state();
  Result<Layout> value =
      layout_from_state(state.maps(1).value_layout(), state.maps(1).value_size());
  ASSERT_TRUE(value.ok()) << value.error().message();
  EXPECT_EQ(value->size, 12u);
  ASSERT_EQ(value->fields.size(), 3u);
  EXPECT_EQ(value->fields[2].name, "packets");
  EXPECT_EQ(value->fields[2].type, FieldType::kU64);
  EXPECT_EQ(value->fields[2].offset, 4u);
  EXPECT_TRUE(value->fields[2].counter);
  EXPECT_EQ(value->fields[1].type, FieldType::kPad);

  // Offsets are the daemon's (natural alignment here), not recomputed.
  google::protobuf::RepeatedPtrField<v1::FieldLayout> natural;
  v1::FieldLayout* a = natural.Add();
  a->set_name("action");
  a->set_type("u32");
  a->set_size(4);
  v1::FieldLayout* h = natural.Add();
  h->set_name("hits");
  h->set_type("u64");
  h->set_offset(8);
  h->set_size(8);
  Result<Layout> nat = layout_from_state(natural, 16);
  ASSERT_TRUE(nat.ok()) << nat.error().message();
  Result<Bytes> bytes = encode(*nat, {{"action", "1"}, {"hits", "2"}}, false);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(util::to_hex(*bytes), "01000000000000000200000000000000");
}

TEST(LayoutFromStateTest, RefusesInconsistentLayouts) {
  google::protobuf::RepeatedPtrField<v1::FieldLayout> fields;
  v1::FieldLayout* f = fields.Add();
  f->set_name("x");
  f->set_type("u32");
  f->set_size(4);
  f->set_offset(2);
  Result<Layout> r = layout_from_state(fields, 4);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(), "[0]: field \"x\" at offset 2 overruns the 4-byte layout");
  f->set_offset(0);
  f->set_size(2);
  r = layout_from_state(fields, 4);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(), "[0]: type u32 is 4 bytes, the layout says 2");
  f->set_type("u33");
  r = layout_from_state(fields, 4);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message().rfind("[0].type: unknown type \"u33\"", 0), 0u)
      << r.error().message();
}

// ---- splitting large pushes for PushGenerationStream ----

v1::PushGenerationRequest big_request(int changes, int entries_each) {
  v1::PushGenerationRequest request;
  request.set_label("big");
  request.set_expected_generation(9);
  request.set_request_id("req-1");
  for (int c = 0; c < changes; ++c) {
    v1::SlotChange* change = request.add_changes();
    change->set_map("acl");
    change->mutable_slot()->set_index(static_cast<uint32_t>(c));
    for (int e = 0; e < entries_each; ++e) {
      v1::Entry* entry = change->add_entries();
      entry->set_key(std::string(8, static_cast<char>(e)));
      entry->set_value(std::string(12, static_cast<char>(c)));
    }
  }
  return request;
}

TEST(SplitPushRequestTest, SmallRequestIsOneMessage) {
  const v1::PushGenerationRequest request = big_request(2, 3);
  const std::vector<v1::PushGenerationRequest> parts = split_push_request(request, 1 << 20);
  ASSERT_EQ(parts.size(), 1u);
  EXPECT_EQ(parts[0].SerializeAsString(), request.SerializeAsString());
  EXPECT_EQ(split_push_request(v1::PushGenerationRequest(), 100).size(), 1u);
}

// Concatenates the messages the way the daemon does: a change naming the same map and slot as
// the previous message's last change continues it.
v1::PushGenerationRequest join_parts(const std::vector<v1::PushGenerationRequest>& parts) {
  v1::PushGenerationRequest joined;
  joined.set_label(parts[0].label());
  joined.set_expected_generation(parts[0].expected_generation());
  joined.set_request_id(parts[0].request_id());
  for (size_t i = 0; i < parts.size(); ++i) {
    for (int c = 0; c < parts[i].changes_size(); ++c) {
      const v1::SlotChange& change = parts[i].changes(c);
      if (i > 0 && c == 0 && joined.changes_size() > 0) {
        v1::SlotChange* last = joined.mutable_changes(joined.changes_size() - 1);
        if (last->map() == change.map() &&
            last->slot().SerializeAsString() == change.slot().SerializeAsString()) {
          for (const v1::Entry& e : change.entries()) *last->add_entries() = e;
          continue;
        }
      }
      *joined.add_changes() = change;
    }
  }
  return joined;
}

void expect_valid_split(const v1::PushGenerationRequest& request,
                        const std::vector<v1::PushGenerationRequest>& parts, size_t max) {
  ASSERT_FALSE(parts.empty());
  EXPECT_EQ(parts[0].label(), request.label());
  EXPECT_EQ(parts[0].expected_generation(), request.expected_generation());
  EXPECT_EQ(parts[0].request_id(), request.request_id());
  for (size_t i = 0; i < parts.size(); ++i) {
    EXPECT_LE(parts[i].ByteSizeLong(), max) << "message " << i;
    EXPECT_FALSE(parts[i].changes().empty()) << "message " << i;
    if (i > 0) {
      EXPECT_TRUE(parts[i].label().empty());
      EXPECT_EQ(parts[i].expected_generation(), 0u);
      EXPECT_TRUE(parts[i].request_id().empty());
    }
  }
  EXPECT_EQ(join_parts(parts).SerializeAsString(), request.SerializeAsString());
}

TEST(SplitPushRequestTest, SplitsAtChangeBoundariesWhenChangesFit) {
  const v1::PushGenerationRequest request = big_request(10, 100);  // ~2.9 KB per change
  const std::vector<v1::PushGenerationRequest> parts = split_push_request(request, 8000);
  ASSERT_GT(parts.size(), 3u);
  expect_valid_split(request, parts, 8000);
  for (const auto& part : parts) {
    for (const auto& change : part.changes()) EXPECT_EQ(change.entries_size(), 100);
  }
}

TEST(SplitPushRequestTest, ContinuesALargeChangeOverMessages) {
  v1::PushGenerationRequest request = big_request(3, 10);
  *request.mutable_changes(1) = big_request(1, 2000).changes(0);  // ~58 KB
  request.mutable_changes(1)->mutable_slot()->set_index(1);
  request.mutable_changes(2)->set_delete_(true);
  request.mutable_changes(2)->clear_entries();
  const std::vector<v1::PushGenerationRequest> parts = split_push_request(request, 4000);
  ASSERT_GE(parts.size(), 14u);
  expect_valid_split(request, parts, 4000);
  // Every message between the first and the last carries only a piece of slot 1.
  for (size_t i = 1; i + 1 < parts.size(); ++i) {
    ASSERT_EQ(parts[i].changes_size(), 1) << "message " << i;
    EXPECT_EQ(parts[i].changes(0).slot().index(), 1u);
  }
  EXPECT_TRUE(parts.back().changes(parts.back().changes_size() - 1).delete_());
}

TEST(SplitPushRequestTest, HugeHashSlotChangeKeepsItsSlotKeyInEveryPiece) {
  v1::PushGenerationRequest request;
  v1::SlotChange* change = request.add_changes();
  change->set_map("ports");
  change->mutable_slot()->set_key(std::string("\x03\0\0\0", 4));
  for (int i = 0; i < 5000; ++i) {
    v1::Entry* e = change->add_entries();
    e->set_key(std::string(4, static_cast<char>(i)) + std::to_string(i));
    e->set_value(std::string(12, 'v'));
  }
  const std::vector<v1::PushGenerationRequest> parts = split_push_request(request, 16 * 1024);
  ASSERT_GT(parts.size(), 5u);
  expect_valid_split(request, parts, 16 * 1024);
  for (const auto& part : parts) EXPECT_EQ(part.changes(0).slot().key(), change->slot().key());
}

// ---- the shipped examples parse against the maps of config/policyd.yaml ----

std::string read_source_file(const std::string& relative) {
  std::ifstream in(std::string(POLICYD_SOURCE_DIR) + "/" + relative);
  EXPECT_TRUE(in.good()) << relative;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(PolicyFileExamplesTest, ExamplesParse) {
  Result<v1::PushGenerationRequest> v1 = parse_policy_file(
      read_source_file("config/examples/acl-v1.yaml"), "acl-v1.yaml", example_state());
  ASSERT_TRUE(v1.ok()) << v1.error().message();
  EXPECT_EQ(v1->label(), "acl-v1");
  ASSERT_EQ(v1->changes_size(), 3);
  EXPECT_EQ(v1->changes(0).entries_size(), 4);
  EXPECT_EQ(hex(v1->changes(1).entries(0).key()), "20000000c0000201");
  EXPECT_EQ(hex(v1->changes(2).slot().key()), "01000000");

  Result<v1::PushGenerationRequest> v2 = parse_policy_file(
      read_source_file("config/examples/acl-v2.yaml"), "acl-v2.yaml", example_state());
  ASSERT_TRUE(v2.ok()) << v2.error().message();
  EXPECT_EQ(v2->label(), "acl-v2");
  ASSERT_EQ(v2->changes_size(), 4);
  EXPECT_TRUE(v2->changes(1).delete_());
  EXPECT_EQ(v2->changes(1).slot().index(), 1u);
  EXPECT_EQ(hex(v2->changes(3).slot().key()), "02000000");
}

}  // namespace
}  // namespace policyd::ctl
