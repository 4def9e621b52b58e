// api/convert: proto -> core conversion (typed and raw fields, slot refs,
// field paths in errors, limits, streamed pushes) and core -> proto conversion. No kernel.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "api/convert.h"
#include "api/status.h"
#include "config/config.h"

namespace policyd::api {
namespace {

constexpr const char* kConfig = R"(
pin_dir: /sys/fs/bpf/test
limits: {max_entries_per_push: 6}
maps:
  - name: acl
    type: array_of_maps
    slots: 8
    inner:
      type: lpm_trie
      max_entries: 16
      key: [{name: prefix, type: ipv4_prefix}]
      value: [{name: action, type: u8}, {name: pad, type: "pad[3]"},
              {name: hits, type: u32, counter: true}]
  - name: ports
    type: hash_of_maps
    slots: 4
    slot_key: [{name: ifindex, type: u32}]
    inner:
      type: percpu_hash
      max_entries: 16
      key: [{name: port, type: be16}, {name: proto, type: u8}, {name: pad, type: "pad[1]"}]
      value: [{name: packets, type: u64, counter: true}]
)";

config::DaemonConfig test_config() {
  Result<config::DaemonConfig> cfg = config::parse_config(kConfig, "test.yaml");
  if (!cfg.ok()) ADD_FAILURE() << cfg.error().message();
  return std::move(cfg).value();
}

core::Bytes bytes(std::initializer_list<int> b) {
  core::Bytes out;
  for (int x : b) out.push_back(static_cast<uint8_t>(x));
  return out;
}

std::string str(const core::Bytes& b) { return {b.begin(), b.end()}; }

v1::SlotChange* add_change(v1::PushGenerationRequest& req, const std::string& map) {
  v1::SlotChange* c = req.add_changes();
  c->set_map(map);
  return c;
}

void set_fields(v1::Fields* f, std::initializer_list<std::pair<const char*, const char*>> kv) {
  for (auto& [k, v] : kv) (*f->mutable_values())[k] = v;
}

// The conversion error for `req`, or "" when it converts.
Error convert_error(const v1::PushGenerationRequest& req, const config::DaemonConfig& cfg) {
  Result<core::PushRequest> r = to_push_request(req, cfg);
  if (r.ok()) return Error{ErrorCode::kInternal, 0, "(converted)"};
  return r.error();
}

// ---- proto -> core

TEST(ConvertPushTest, RawEntriesAndHeader) {
  auto cfg = test_config();
  v1::PushGenerationRequest req;
  req.set_label("v1");
  req.set_expected_generation(7);
  req.set_request_id("r-1");
  v1::SlotChange* c = add_change(req, "acl");
  c->mutable_slot()->set_index(3);
  v1::Entry* e = c->add_entries();
  e->set_key(str(bytes({8, 0, 0, 0, 10, 0, 0, 0})));
  e->set_value(str(bytes({1, 0, 0, 0, 9, 9, 9, 9})));
  v1::SlotChange* d = add_change(req, "acl");
  d->mutable_slot()->set_index(4);
  d->set_delete_(true);

  Result<core::PushRequest> r = to_push_request(req, cfg);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->generation.label, "v1");
  EXPECT_EQ(r->expected_generation, 7u);
  EXPECT_EQ(r->request_id, "r-1");
  ASSERT_EQ(r->generation.changes.size(), 2u);
  const core::SlotChange& ch = r->generation.changes[0];
  EXPECT_EQ(ch.map, "acl");
  EXPECT_EQ(ch.slot, core::array_slot(3));
  EXPECT_FALSE(ch.remove);
  ASSERT_EQ(ch.entries.size(), 1u);
  EXPECT_EQ(ch.entries[0].key, bytes({8, 0, 0, 0, 10, 0, 0, 0}));
  // Raw bytes pass through untouched (core zeroes counters, not the conversion).
  EXPECT_EQ(ch.entries[0].value, bytes({1, 0, 0, 0, 9, 9, 9, 9}));
  EXPECT_TRUE(r->generation.changes[1].remove);
  EXPECT_EQ(r->generation.changes[1].slot, core::array_slot(4));
}

TEST(ConvertPushTest, TypedEntriesEncodeBySchema) {
  auto cfg = test_config();
  v1::PushGenerationRequest req;
  v1::SlotChange* c = add_change(req, "acl");
  c->mutable_slot()->set_index(0);
  v1::Entry* e = c->add_entries();
  set_fields(e->mutable_key_fields(), {{"prefix", "10.0.0.0/8"}});
  set_fields(e->mutable_value_fields(), {{"action", "2"}});
  v1::Entry* zero = c->add_entries();  // no value at all: all zero
  set_fields(zero->mutable_key_fields(), {{"prefix", "192.168.0.0/16"}});

  Result<core::PushRequest> r = to_push_request(req, cfg);
  ASSERT_TRUE(r.ok()) << r.error().message();
  const auto& entries = r->generation.changes[0].entries;
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].key, bytes({8, 0, 0, 0, 10, 0, 0, 0}));
  EXPECT_EQ(entries[0].value, bytes({2, 0, 0, 0, 0, 0, 0, 0}));  // missing fields are zero
  EXPECT_EQ(entries[1].key, bytes({16, 0, 0, 0, 192, 168, 0, 0}));
  EXPECT_EQ(entries[1].value, core::Bytes(8, 0));
}

TEST(ConvertPushTest, HashSlotsByKeyOrFields) {
  auto cfg = test_config();
  v1::PushGenerationRequest req;
  v1::SlotChange* typed = add_change(req, "ports");
  set_fields(typed->mutable_slot()->mutable_fields(), {{"ifindex", "3"}});
  v1::Entry* e = typed->add_entries();
  set_fields(e->mutable_key_fields(), {{"port", "443"}, {"proto", "6"}});
  set_fields(e->mutable_value_fields(), {{"packets", "5"}});
  v1::SlotChange* raw = add_change(req, "ports");
  raw->mutable_slot()->set_key(str(bytes({4, 0, 0, 0})));

  Result<core::PushRequest> r = to_push_request(req, cfg);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->generation.changes[0].slot, bytes({3, 0, 0, 0}));
  EXPECT_EQ(r->generation.changes[0].entries[0].key, bytes({0x01, 0xbb, 6, 0}));
  EXPECT_EQ(r->generation.changes[0].entries[0].value, bytes({5, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(r->generation.changes[1].slot, bytes({4, 0, 0, 0}));
}

TEST(ConvertPushTest, G1_UnknownMapNamesTheChange) {
  auto cfg = test_config();
  v1::PushGenerationRequest req;
  add_change(req, "acl")->mutable_slot()->set_index(0);
  add_change(req, "nope")->mutable_slot()->set_index(0);
  Error e = convert_error(req, cfg);
  EXPECT_EQ(e.code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(e.message(), "changes[1].map: unknown map \"nope\"");
  EXPECT_EQ(to_grpc_status(e).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(ConvertPushTest, G1_BadValueFieldNamesEntryAndField) {
  auto cfg = test_config();
  v1::PushGenerationRequest req;
  v1::SlotChange* c = add_change(req, "acl");
  c->mutable_slot()->set_index(0);
  for (int i = 0; i < 4; ++i) {
    v1::Entry* e = c->add_entries();
    set_fields(e->mutable_key_fields(),
               {{"prefix", ("10." + std::to_string(i) + ".0.0/16").c_str()}});
    set_fields(e->mutable_value_fields(), {{"action", i == 3 ? "300" : "1"}});
  }
  Error e = convert_error(req, cfg);
  EXPECT_EQ(e.code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(e.message(),
            "changes[0].entries[3].value_fields (map \"acl\" slot 0): action: value 300 is out of "
            "range (max 255)");
}

TEST(ConvertPushTest, G1_FieldErrors) {
  auto cfg = test_config();
  struct Case {
    const char* name;
    std::function<void(v1::Entry*)> fill;
    std::string want;
  };
  const std::vector<Case> cases = {
      {"missing key field",
       [](v1::Entry* e) {
         set_fields(e->mutable_key_fields(), {{"port", "80"}});
       },
       "changes[0].entries[0].key_fields (map \"ports\" slot 0x61626364): missing field \"proto\""},
      {"unknown value field",
       [](v1::Entry* e) {
         set_fields(e->mutable_key_fields(), {{"port", "80"}, {"proto", "6"}});
         set_fields(e->mutable_value_fields(), {{"bytes", "1"}});
       },
       "changes[0].entries[0].value_fields (map \"ports\" slot 0x61626364): unknown field "
       "\"bytes\" (fields: packets)"},
      {"bad key text",
       [](v1::Entry* e) {
         set_fields(e->mutable_key_fields(), {{"port", "http"}, {"proto", "6"}});
       },
       "changes[0].entries[0].key_fields (map \"ports\" slot 0x61626364): port: \"http\" is not "
       "an unsigned integer"},
      {"no key", [](v1::Entry* e) { e->set_value(std::string(8, '\0')); },
       "changes[0].entries[0].key (map \"ports\" slot 0x61626364): missing (give key or "
       "key_fields)"},
      {"key twice",
       [](v1::Entry* e) {
         e->set_key("abcd");
         set_fields(e->mutable_key_fields(), {{"port", "80"}, {"proto", "6"}});
       },
       "changes[0].entries[0].key (map \"ports\" slot 0x61626364): give key or key_fields, not "
       "both"},
      {"value twice",
       [](v1::Entry* e) {
         e->set_key("abcd");
         e->set_value(std::string(8, '\0'));
         set_fields(e->mutable_value_fields(), {{"packets", "1"}});
       },
       "changes[0].entries[0].value (map \"ports\" slot 0x61626364): give value or value_fields, "
       "not both"},
  };
  for (const Case& c : cases) {
    v1::PushGenerationRequest req;
    v1::SlotChange* ch = add_change(req, "ports");
    ch->mutable_slot()->set_key("abcd");
    c.fill(ch->add_entries());
    Error e = convert_error(req, cfg);
    EXPECT_EQ(e.code, ErrorCode::kInvalidArgument) << c.name;
    EXPECT_EQ(e.message(), c.want) << c.name;
  }
}

TEST(ConvertPushTest, G1_SlotErrors) {
  auto cfg = test_config();
  struct Case {
    const char* map;
    std::function<void(v1::SlotRef*)> fill;
    std::string want;
  };
  const std::vector<Case> cases = {
      {"acl", [](v1::SlotRef*) {},
       "changes[0].slot: no slot given (map \"acl\" is an array_of_maps: give index)"},
      {"acl", [](v1::SlotRef* s) { s->set_key("abcd"); },
       "changes[0].slot.key: map \"acl\" is an array_of_maps: give index"},
      {"acl",
       [](v1::SlotRef* s) {
         set_fields(s->mutable_fields(), {{"ifindex", "1"}});
       },
       "changes[0].slot.fields: map \"acl\" is an array_of_maps: give index"},
      {"ports", [](v1::SlotRef* s) { s->set_index(1); },
       "changes[0].slot.index: map \"ports\" is a hash_of_maps: give key or fields"},
      {"ports",
       [](v1::SlotRef* s) {
         set_fields(s->mutable_fields(), {{"ifindex", "-1"}});
       },
       "changes[0].slot.fields (map \"ports\"): ifindex: \"-1\" is not an unsigned integer"},
      {"ports",
       [](v1::SlotRef* s) {
         set_fields(s->mutable_fields(), {});
         s->mutable_fields();
       },
       "changes[0].slot.fields (map \"ports\"): missing field \"ifindex\""},
  };
  for (const Case& c : cases) {
    v1::PushGenerationRequest req;
    v1::SlotChange* ch = add_change(req, c.map);
    c.fill(ch->mutable_slot());
    Error e = convert_error(req, cfg);
    EXPECT_EQ(e.code, ErrorCode::kInvalidArgument) << c.want;
    EXPECT_EQ(e.message(), c.want);
  }
}

TEST(ConvertPushTest, SizesAndRangesAreLeftToCoreValidation) {
  // The conversion does not duplicate byte-level checks: core validation reports them with
  // map, slot and entry (G1).
  auto cfg = test_config();
  v1::PushGenerationRequest req;
  v1::SlotChange* c = add_change(req, "acl");
  c->mutable_slot()->set_index(99);
  c->add_entries()->set_key("short");
  EXPECT_TRUE(to_push_request(req, cfg).ok());
}

TEST(ConvertPushTest, G6_EntryLimitIsResourceExhausted) {
  auto cfg = test_config();  // max_entries_per_push: 6
  v1::PushGenerationRequest req;
  for (int slot = 0; slot < 2; ++slot) {
    v1::SlotChange* c = add_change(req, "acl");
    c->mutable_slot()->set_index(static_cast<uint32_t>(slot));
    for (int i = 0; i < 3; ++i) c->add_entries()->set_key("x");
  }
  ASSERT_TRUE(to_push_request(req, cfg).ok());  // exactly at the limit
  req.mutable_changes(1)->add_entries()->set_key("x");
  Error e = convert_error(req, cfg);
  EXPECT_EQ(e.code, ErrorCode::kResourceExhausted);
  EXPECT_NE(e.message().find("limits.max_entries_per_push (6)"), std::string::npos) << e.message();
  EXPECT_EQ(to_grpc_status(e).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST(ConvertPushTest, G6_LabelAndRequestIdLengthsAreBoundedAndNamed) {
  auto cfg = test_config();
  v1::PushGenerationRequest req;
  req.set_label(std::string(kMaxLabelBytes, 'l'));
  req.set_request_id(std::string(kMaxRequestIdBytes, 'r'));
  add_change(req, "acl")->mutable_slot()->set_index(0);
  ASSERT_TRUE(to_push_request(req, cfg).ok());  // exactly at both limits

  v1::PushGenerationRequest long_label = req;
  long_label.set_label(std::string(kMaxLabelBytes + 1, 'l'));
  Error e = convert_error(long_label, cfg);
  EXPECT_EQ(e.code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(e.message().rfind("label: 257 bytes, longer than the limit of 256", 0), 0u)
      << e.message();

  v1::PushGenerationRequest long_id = req;
  long_id.set_request_id(std::string(kMaxRequestIdBytes + 1, 'r'));
  e = convert_error(long_id, cfg);
  EXPECT_EQ(e.code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(e.message().rfind("request_id: 129 bytes, longer than the limit of 128", 0), 0u)
      << e.message();
  EXPECT_EQ(check_length(std::string(200, 'x'), "request_id", kMaxRequestIdBytes)
                .error()
                .message()
                .rfind("request_id: 200 bytes", 0),
            0u);
}

TEST(ConvertPushTest, G6_MoreChangesToAMapThanItHasSlotsAreRefusedBeforeConversion) {
  auto cfg = test_config();  // ports: hash_of_maps with 4 slots
  v1::PushGenerationRequest req;
  for (uint32_t i = 0; i < 4; ++i) {
    set_fields(add_change(req, "ports")->mutable_slot()->mutable_fields(),
               {{"ifindex", std::to_string(i + 1).c_str()}});
  }
  ASSERT_TRUE(to_push_request(req, cfg).ok()) << convert_error(req, cfg).message();
  set_fields(add_change(req, "ports")->mutable_slot()->mutable_fields(), {{"ifindex", "9"}});
  Error e = convert_error(req, cfg);
  EXPECT_EQ(e.code, ErrorCode::kResourceExhausted);
  EXPECT_NE(e.message().find("sets more than the 4 slots of map \"ports\""), std::string::npos)
      << e.message();

  // Deleting all four old keys while setting four new ones is a valid generation.
  v1::PushGenerationRequest swap;
  for (uint32_t i = 0; i < 4; ++i) {
    set_fields(add_change(swap, "ports")->mutable_slot()->mutable_fields(),
               {{"ifindex", std::to_string(i + 1).c_str()}});
    v1::SlotChange* d = add_change(swap, "ports");
    d->set_delete_(true);
    set_fields(d->mutable_slot()->mutable_fields(), {{"ifindex", std::to_string(i + 11).c_str()}});
  }
  EXPECT_TRUE(to_push_request(swap, cfg).ok()) << convert_error(swap, cfg).message();
}

TEST(PushAssemblerTest, G6_ByteLimitSpansMessages) {
  std::string yaml = kConfig;
  const std::string limits = "limits: {max_entries_per_push: 6}";
  yaml.replace(yaml.find(limits), limits.size(),
               "limits: {max_message_bytes: 1024, max_bytes_per_push: 2048}");
  Result<config::DaemonConfig> parsed = config::parse_config(yaml, "test.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.error().message();
  const config::DaemonConfig cfg = std::move(parsed).value();
  PushAssembler a(cfg);
  v1::PushGenerationRequest msg;
  v1::SlotChange* c = add_change(msg, "acl");
  c->mutable_slot()->set_index(0);
  c->add_entries()->set_key(std::string(900, 'k'));
  ASSERT_TRUE(a.add(msg).ok());
  ASSERT_TRUE(a.add(msg).ok());  // about 1,820 bytes in all
  Status st = a.add(msg);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kResourceExhausted);
  EXPECT_NE(st.error().message().find("limits.max_bytes_per_push (2048)"), std::string::npos)
      << st.error().message();
}

// gRPC enforces the max_message_bytes the daemon started with; a reload may lower it, and the
// assembler enforces the current value on every message.
TEST(PushAssemblerTest, G6_AMessageOverTheCurrentMaxMessageBytesIsRefused) {
  std::string yaml = kConfig;
  const std::string limits = "limits: {max_entries_per_push: 6}";
  yaml.replace(yaml.find(limits), limits.size(), "limits: {max_message_bytes: 1024}");
  Result<config::DaemonConfig> parsed = config::parse_config(yaml, "test.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.error().message();
  const config::DaemonConfig cfg = std::move(parsed).value();
  v1::PushGenerationRequest msg;
  v1::SlotChange* c = add_change(msg, "acl");
  c->mutable_slot()->set_index(0);
  c->add_entries()->set_key(std::string(900, 'k'));
  EXPECT_TRUE(PushAssembler(cfg).add(msg).ok()) << "the control: 900 bytes fit";
  c->mutable_entries(0)->set_key(std::string(1100, 'k'));
  Status st = PushAssembler(cfg).add(msg);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kResourceExhausted);
  EXPECT_NE(st.error().message().find("limits.max_message_bytes (1024)"), std::string::npos)
      << st.error().message();
}

TEST(PushAssemblerTest, StreamAccumulatesWithGlobalChangeIndexes) {
  auto cfg = test_config();
  PushAssembler a(cfg);
  v1::PushGenerationRequest first;
  first.set_label("big");
  first.set_request_id("id");
  add_change(first, "acl")->mutable_slot()->set_index(0);
  ASSERT_TRUE(a.add(first).ok());

  v1::PushGenerationRequest second;  // header repeated: fine
  second.set_label("big");
  add_change(second, "acl")->mutable_slot()->set_index(1);
  ASSERT_TRUE(a.add(second).ok());

  v1::PushGenerationRequest third;
  add_change(third, "nope");
  Status st = a.add(third);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().message(), "changes[2].map: unknown map \"nope\"");

  core::PushRequest req = a.take();
  EXPECT_EQ(req.generation.label, "big");
  EXPECT_EQ(req.request_id, "id");
  ASSERT_EQ(req.generation.changes.size(), 2u);
  EXPECT_EQ(req.generation.changes[1].slot, core::array_slot(1));
}

TEST(PushAssemblerTest, LargeSlotContinuesAcrossMessages) {
  auto cfg = test_config();
  PushAssembler a(cfg);
  v1::PushGenerationRequest first;
  add_change(first, "acl")->mutable_slot()->set_index(0);
  v1::SlotChange* big = add_change(first, "acl");
  big->mutable_slot()->set_index(1);
  big->add_entries()->set_key("k0");
  ASSERT_TRUE(a.add(first).ok());

  // The next message opens with the same map and slot: its entries continue changes[1].
  v1::PushGenerationRequest second;
  v1::SlotChange* more = add_change(second, "acl");
  more->mutable_slot()->set_index(1);
  more->add_entries()->set_key("k1");
  v1::Entry* bad = more->add_entries();
  set_fields(bad->mutable_key_fields(), {{"prefix", "10.0.0.1/8"}});
  Status st = a.add(second);
  ASSERT_FALSE(st.ok());
  // The path names the entry as core will see it: the third entry of changes[1].
  EXPECT_EQ(st.error().message(),
            "changes[1].entries[2].key_fields (map \"acl\" slot 1): prefix: \"10.0.0.1/8\" has "
            "host bits set past /8");

  PushAssembler b(cfg);
  ASSERT_TRUE(b.add(first).ok());
  more->mutable_entries()->RemoveLast();
  v1::SlotChange* other = add_change(second, "acl");  // not first in its message: a new change
  other->mutable_slot()->set_index(1);
  ASSERT_TRUE(b.add(second).ok());
  core::PushRequest req = b.take();
  ASSERT_EQ(req.generation.changes.size(), 3u);
  ASSERT_EQ(req.generation.changes[1].entries.size(), 2u);
  EXPECT_EQ(req.generation.changes[1].entries[1].key, core::Bytes({'k', '1'}));
  EXPECT_EQ(req.generation.changes[2].slot, core::array_slot(1));  // left to core validation

  // Within one message (and so in a unary push) a repeated slot is never merged.
  v1::PushGenerationRequest unary;
  add_change(unary, "acl")->mutable_slot()->set_index(1);
  add_change(unary, "acl")->mutable_slot()->set_index(1);
  Result<core::PushRequest> r = to_push_request(unary, cfg);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->generation.changes.size(), 2u);
}

TEST(PushAssemblerTest, HeaderCannotChangeMidStream) {
  auto cfg = test_config();
  PushAssembler a(cfg);
  v1::PushGenerationRequest first;
  first.set_expected_generation(3);
  ASSERT_TRUE(a.add(first).ok());
  v1::PushGenerationRequest second;
  second.set_expected_generation(4);
  Status st = a.add(second);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(st.error().message().rfind("messages[1].expected_generation: differs", 0), 0u)
      << st.error().message();
}

TEST(PushAssemblerTest, G6_EntryLimitSpansMessages) {
  auto cfg = test_config();
  PushAssembler a(cfg);
  for (int m = 0; m < 3; ++m) {
    v1::PushGenerationRequest msg;
    v1::SlotChange* c = add_change(msg, "acl");
    c->mutable_slot()->set_index(static_cast<uint32_t>(m));
    for (int i = 0; i < 3; ++i) c->add_entries()->set_key("x");
    Status st = a.add(msg);
    if (m < 2) {
      ASSERT_TRUE(st.ok()) << st.error().message();
    } else {
      ASSERT_FALSE(st.ok());
      EXPECT_EQ(st.error().code, ErrorCode::kResourceExhausted);
    }
  }
  EXPECT_EQ(a.entries(), 6u);
}

// ---- core -> proto

TEST(ConvertStateTest, MapStateCarriesLayoutsAndSlots) {
  auto cfg = test_config();
  const core::OuterMapConfig& ports = cfg.engine.maps[1];
  std::vector<core::SlotInfo> live = {{bytes({3, 0, 0, 0}), 41, 5}};
  v1::MapState m;
  to_map_state(ports, &cfg.schemas.at("ports"), "/pin/ports", live, &m);
  EXPECT_EQ(m.name(), "ports");
  EXPECT_EQ(m.type(), "hash_of_maps");
  EXPECT_EQ(m.slots(), 4u);
  EXPECT_EQ(m.inner_type(), "percpu_hash");
  EXPECT_EQ(m.inner_max_entries(), 16u);
  EXPECT_EQ(m.key_size(), 4u);
  EXPECT_EQ(m.value_size(), 8u);
  EXPECT_EQ(m.slot_key_size(), 4u);
  ASSERT_EQ(m.key_layout_size(), 3);
  EXPECT_EQ(m.key_layout(1).name(), "proto");
  EXPECT_EQ(m.key_layout(1).type(), "u8");
  EXPECT_EQ(m.key_layout(1).offset(), 2u);
  EXPECT_EQ(m.key_layout(1).size(), 1u);
  EXPECT_EQ(m.key_layout(2).type(), "pad[1]");
  ASSERT_EQ(m.value_layout_size(), 1);
  EXPECT_TRUE(m.value_layout(0).counter());
  ASSERT_EQ(m.slot_key_layout_size(), 1);
  EXPECT_EQ(m.slot_key_layout(0).name(), "ifindex");
  EXPECT_EQ(m.drain(), "entries");
  EXPECT_EQ(m.pin_path(), "/pin/ports");
  ASSERT_EQ(m.live_slots_size(), 1);
  EXPECT_EQ(m.live_slots(0).slot().key(), str(bytes({3, 0, 0, 0})));
  EXPECT_EQ(m.live_slots(0).map_id(), 41u);
  EXPECT_EQ(m.live_slots(0).generation(), 5u);

  v1::MapState acl;
  to_map_state(cfg.engine.maps[0], &cfg.schemas.at("acl"), "/pin/acl",
               {{core::array_slot(2), 7, 1}}, &acl);
  EXPECT_EQ(acl.inner_type(), "lpm_trie");
  EXPECT_EQ(acl.slot_key_layout_size(), 0);
  EXPECT_EQ(acl.live_slots(0).slot().slot_case(), v1::SlotRef::kIndex);
  EXPECT_EQ(acl.live_slots(0).slot().index(), 2u);
}

TEST(ConvertStateTest, HeaderAndHistoryFromView) {
  core::CommitterView view;
  view.generation = 9;
  view.label = "v9";
  view.strategy = core::Strategy::kConcurrent;
  view.kernel = "6.18.0";
  view.stats.generations = 4;
  view.stats.writer.rounds = 3;
  view.stats.writer.barriers = 2;
  core::GenerationRecord rec;
  rec.id = 9;
  rec.label = "v9";
  rec.committed_unix_ms = 1234;
  rec.changes = 2;
  rec.entries = 10;
  rec.request_id = "r";
  view.history = {std::make_shared<const core::GenerationRecord>(rec)};

  v1::GetStateResponse s;
  to_state_header(view, &s);
  EXPECT_EQ(s.generation(), 9u);
  EXPECT_EQ(s.label(), "v9");
  EXPECT_EQ(s.barrier_strategy(), "concurrent");
  EXPECT_EQ(s.kernel(), "6.18.0");
  EXPECT_EQ(s.barriers(), 5u);
  EXPECT_EQ(s.generations_committed(), 4u);

  v1::ListGenerationsResponse l;
  to_list_generations(view, &l);
  EXPECT_EQ(l.current(), 9u);
  ASSERT_EQ(l.generations_size(), 1);
  EXPECT_EQ(l.generations(0).generation(), 9u);
  EXPECT_EQ(l.generations(0).committed_unix_ms(), 1234);
  EXPECT_EQ(l.generations(0).changes(), 2u);
  EXPECT_EQ(l.generations(0).entries(), 10u);
  EXPECT_EQ(l.generations(0).request_id(), "r");
}

TEST(ConvertStateTest, DumpDecodesAndSumsPerCpuCounters) {
  auto cfg = test_config();
  core::DrainRecord rec;
  rec.map = "ports";
  rec.map_id = 12;
  rec.installed_by = 3;
  rec.entries.push_back(
      core::DrainedEntry{bytes({0x00, 0x50, 17, 0}),
                         {bytes({1, 0, 0, 0, 0, 0, 0, 0}), bytes({2, 0, 0, 0, 0, 0, 0, 0})}});
  v1::DumpSlotResponse out;
  to_dump(rec, cfg.engine.maps[1], &cfg.schemas.at("ports"), &out);
  EXPECT_EQ(out.map_id(), 12u);
  EXPECT_EQ(out.generation(), 3u);
  ASSERT_EQ(out.entries_size(), 1);
  const v1::DumpedEntry& e = out.entries(0);
  EXPECT_EQ(e.key(), str(bytes({0x00, 0x50, 17, 0})));
  EXPECT_EQ(e.value(), str(bytes({1, 0, 0, 0, 0, 0, 0, 0})));  // CPU 0
  ASSERT_EQ(e.per_cpu_values_size(), 2);
  EXPECT_EQ(e.key_fields().values().at("port"), "80");
  EXPECT_EQ(e.key_fields().values().at("proto"), "17");
  EXPECT_EQ(e.key_fields().values().count("pad"), 0u);
  EXPECT_EQ(e.value_fields().values().at("packets"), "3");  // summed over CPUs
}

TEST(ConvertStateTest, DumpOfPlainMapHasNoPerCpuValues) {
  auto cfg = test_config();
  core::DrainRecord rec;
  rec.entries.push_back(
      core::DrainedEntry{bytes({24, 0, 0, 0, 10, 1, 2, 0}), {bytes({1, 0, 0, 0, 5, 0, 0, 0})}});
  v1::DumpSlotResponse out;
  to_dump(rec, cfg.engine.maps[0], &cfg.schemas.at("acl"), &out);
  ASSERT_EQ(out.entries_size(), 1);
  EXPECT_EQ(out.entries(0).per_cpu_values_size(), 0);
  EXPECT_EQ(out.entries(0).key_fields().values().at("prefix"), "10.1.2.0/24");
  EXPECT_EQ(out.entries(0).value_fields().values().at("action"), "1");
  EXPECT_EQ(out.entries(0).value_fields().values().at("hits"), "5");
}

TEST(ConvertStateTest, CountersMergeDrainedAndLive) {
  auto cfg = test_config();
  core::MapConfigs maps;
  for (const auto& m : cfg.engine.maps) maps.emplace(m.name, m);
  core::CounterTable table;
  table[{"acl", core::array_slot(1)}].drained["hits"] = 10;
  table[{"acl", core::array_slot(1)}].live["hits"] = 5;
  table[{"acl", core::array_slot(2)}].drained["hits"] = 4;
  table[{"acl", core::array_slot(5)}].live["hits"] = 1;  // live only
  table[{"ports", bytes({3, 0, 0, 0})}].drained["packets"] = 7;
  table[{"gone", core::array_slot(0)}].drained["hits"] = 3;  // a map not in `maps`: skipped
  v1::GetCountersResponse out;
  to_counters(table, maps, &out);
  ASSERT_EQ(out.counters_size(), 4);
  EXPECT_EQ(out.counters(0).map(), "acl");
  EXPECT_EQ(out.counters(0).slot(), "1");
  EXPECT_EQ(out.counters(0).field(), "hits");
  EXPECT_EQ(out.counters(0).drained(), 10u);
  EXPECT_EQ(out.counters(0).live(), 5u);
  EXPECT_EQ(out.counters(1).slot(), "2");
  EXPECT_EQ(out.counters(1).live(), 0u);
  EXPECT_EQ(out.counters(2).slot(), "5");
  EXPECT_EQ(out.counters(2).drained(), 0u);
  EXPECT_EQ(out.counters(2).live(), 1u);
  EXPECT_EQ(out.counters(3).map(), "ports");
  EXPECT_EQ(out.counters(3).slot(), "0x03000000");
  EXPECT_EQ(out.counters(3).drained(), 7u);
}

TEST(ConvertEventTest, CommittedDrainedReloaded) {
  core::CommittedEvent c;
  c.generations = {4, 5};
  c.labels = {"a", "b"};
  c.slots_written = 3;
  c.build_ms = 1.5;
  c.swap_ms = 2.5;
  c.barrier_ms = 0.5;
  v1::Event ev = to_event(c, 99);
  EXPECT_EQ(ev.unix_ms(), 99);
  ASSERT_EQ(ev.kind_case(), v1::Event::kCommitted);
  EXPECT_EQ(ev.committed().generations_size(), 2);
  EXPECT_EQ(ev.committed().labels(1), "b");
  EXPECT_EQ(ev.committed().slots_written(), 3u);
  EXPECT_DOUBLE_EQ(ev.committed().swap_ms(), 2.5);

  core::DrainedEvent d;
  d.record.map = "acl";
  d.record.slot = core::array_slot(6);
  d.record.map_id = 77;
  d.record.installed_by = 4;
  d.record.replaced_by = 5;
  d.record.entry_count = 2;
  d.record.counters["hits"] = 12;
  ev = to_event(d, core::OuterKind::kArray, 100);
  ASSERT_EQ(ev.kind_case(), v1::Event::kDrained);
  EXPECT_EQ(ev.drained().slot(), "6");
  EXPECT_EQ(ev.drained().map_id(), 77u);
  EXPECT_EQ(ev.drained().installed_by(), 4u);
  EXPECT_EQ(ev.drained().replaced_by(), 5u);
  EXPECT_EQ(ev.drained().entries(), 2u);
  EXPECT_EQ(ev.drained().counters().at("hits"), 12u);

  ReloadSummary s{{"new"}, {"old"}, {}};
  ev = to_event(s, 101);
  ASSERT_EQ(ev.kind_case(), v1::Event::kReloaded);
  EXPECT_EQ(ev.reloaded().added_maps(0), "new");
  EXPECT_EQ(ev.reloaded().kept_maps(0), "old");
  EXPECT_EQ(ev.reloaded().removed_maps_size(), 0);
}

}  // namespace
}  // namespace policyd::api
