// Pushing generations through policyctl and through the gRPC API, and reading the result back
// from the kernel through the pinned outer maps (never through the daemon): typed and raw
// entries, array and hash slots, deletes, empty inner maps, GetState and DumpSlot agreeing with
// the kernel.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/utsname.h>

#include <map>
#include <string>
#include <vector>

#include "daemon_fixture.h"

namespace policyd::e2e {
namespace {

using Entries = std::map<Bytes, Bytes>;

class PushTest : public DaemonTest {
 protected:
  // The kernel holds exactly `want` in `map` slot `slot`; returns the inner map id (0: none).
  uint32_t expect_kernel(const std::string& map, const Bytes& slot, const Entries& want) {
    std::optional<KernelSlot> ks = kernel_slot(map, slot);
    EXPECT_TRUE(ks.has_value()) << map << " slot " << hex(slot) << " is empty in the kernel";
    if (!ks) return 0;
    EXPECT_EQ(ks->entries.size(), want.size()) << map << " slot " << hex(slot);
    for (const auto& [k, v] : want) {
      auto it = ks->entries.find(k);
      if (it == ks->entries.end()) {
        ADD_FAILURE() << map << " slot " << hex(slot) << ": key " << hex(k) << " missing";
        continue;
      }
      EXPECT_EQ(hex(it->second), hex(v)) << map << " slot " << hex(slot) << " key " << hex(k);
    }
    return ks->map_id;
  }

  // Live slots GetState reports for `map`: raw slot key -> inner map id.
  std::map<Bytes, uint32_t> state_slots(const v1::GetStateResponse& st, const std::string& map) {
    std::map<Bytes, uint32_t> out;
    for (const v1::MapState& m : st.maps()) {
      if (m.name() != map) continue;
      for (const v1::SlotState& s : m.live_slots()) {
        Bytes key;
        if (s.slot().slot_case() == v1::SlotRef::kIndex) {
          key = u32le(s.slot().index());
        } else if (s.slot().slot_case() == v1::SlotRef::kKey) {
          key.assign(s.slot().key().begin(), s.slot().key().end());
        } else {
          ADD_FAILURE() << "GetState reports a " << map << " slot as typed fields";
        }
        out[key] = s.map_id();
      }
    }
    return out;
  }
};

TEST_F(PushTest, GetStateDescribesConfiguredMapsAndTheyArePinned) {
  v1::GetStateResponse st = get_state();
  EXPECT_EQ(st.generation(), 0u);
  EXPECT_TRUE(st.barrier_strategy() == "batch" || st.barrier_strategy() == "concurrent")
      << st.barrier_strategy();
  utsname uts{};
  ::uname(&uts);
  EXPECT_EQ(st.kernel(), uts.release);
  ASSERT_EQ(st.maps_size(), 3);

  std::map<std::string, v1::MapState> maps;
  for (const auto& m : st.maps()) maps[m.name()] = m;
  ASSERT_EQ(maps.count("acl"), 1u);
  ASSERT_EQ(maps.count("ports"), 1u);
  ASSERT_EQ(maps.count("blob"), 1u);

  const v1::MapState& acl = maps["acl"];
  EXPECT_EQ(acl.type(), "array_of_maps");
  EXPECT_EQ(acl.slots(), kAclSlots);
  EXPECT_EQ(acl.inner_type(), "lpm_trie");
  EXPECT_EQ(acl.inner_max_entries(), kAclInnerMax);
  EXPECT_EQ(acl.key_size(), kAclKeySize);
  EXPECT_EQ(acl.value_size(), kAclValueSize);
  EXPECT_EQ(acl.drain(), "entries");
  EXPECT_EQ(acl.pin_path(), pin("acl"));
  ASSERT_EQ(acl.key_layout().size(), 1);
  ASSERT_EQ(acl.value_layout().size(), 3);
  EXPECT_EQ(acl.key_layout(0).name(), "prefix");
  EXPECT_EQ(acl.key_layout(0).type(), "ipv4_prefix");
  EXPECT_EQ(acl.key_layout(0).offset(), 0u);
  EXPECT_EQ(acl.key_layout(0).size(), 8u);
  EXPECT_EQ(acl.value_layout(0).name(), "action");
  EXPECT_EQ(acl.value_layout(0).offset(), 0u);
  EXPECT_EQ(acl.value_layout(0).size(), 4u);
  EXPECT_FALSE(acl.value_layout(0).counter());
  EXPECT_EQ(acl.value_layout(2).name(), "hits");
  EXPECT_EQ(acl.value_layout(2).offset(), 8u);
  EXPECT_EQ(acl.value_layout(2).size(), 8u);
  EXPECT_TRUE(acl.value_layout(2).counter());
  EXPECT_TRUE(acl.live_slots().empty());

  const v1::MapState& ports = maps["ports"];
  EXPECT_EQ(ports.type(), "hash_of_maps");
  EXPECT_EQ(ports.slots(), kPortsSlots);
  EXPECT_EQ(ports.inner_type(), "hash");
  EXPECT_EQ(ports.key_size(), kPortsKeySize);
  EXPECT_EQ(ports.value_size(), kPortsValueSize);
  EXPECT_EQ(ports.slot_key_size(), 4u);
  ASSERT_EQ(ports.slot_key_size(), 4u);
  ASSERT_EQ(ports.slot_key_layout().size(), 1);
  EXPECT_EQ(ports.slot_key_layout(0).name(), "ifindex");
  EXPECT_EQ(ports.slot_key_layout(0).type(), "u32");
  ASSERT_GE(ports.value_layout().size(), 3);
  EXPECT_EQ(ports.value_layout(2).name(), "packets");
  EXPECT_EQ(ports.value_layout(2).offset(), 4u);
  EXPECT_TRUE(ports.value_layout(2).counter());

  EXPECT_EQ(maps["blob"].value_size(), kBlobValueSize);
  EXPECT_EQ(maps["blob"].drain(), "none");

  // The kernel agrees: the outer maps are pinned with the configured shapes.
  struct Want {
    const char* name;
    bpf_map_type type;
    uint32_t key_size;
    uint32_t max_entries;
  };
  for (const Want& w : {Want{"acl", BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, kAclSlots},
                        Want{"ports", BPF_MAP_TYPE_HASH_OF_MAPS, 4, kPortsSlots},
                        Want{"blob", BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, kBlobSlots}}) {
    auto fd = kernel::open_pinned(pin(w.name));
    ASSERT_TRUE(fd.ok()) << fd.error().message();
    auto info = kernel::map_info(fd->get());
    ASSERT_TRUE(info.ok()) << info.error().message();
    EXPECT_EQ(info->type, w.type) << w.name;
    EXPECT_EQ(info->key_size, w.key_size) << w.name;
    EXPECT_EQ(info->value_size, 4u) << w.name;
    EXPECT_EQ(info->max_entries, w.max_entries) << w.name;
  }
}

TEST_F(PushTest, SocketHasConfiguredMode) {
  struct stat sb {};
  ASSERT_EQ(::stat(socket_path().c_str(), &sb), 0) << socket_path();
  EXPECT_TRUE(S_ISSOCK(sb.st_mode));
  EXPECT_EQ(sb.st_mode & 07777, 0660u) << std::oct << (sb.st_mode & 07777);
}

TEST_F(PushTest, PolicyctlPushTypedAndRawEntriesReachTheKernel) {
  const std::string file = write_file("v42.yaml", R"(label: v42
changes:
  - map: acl
    slot: 0
    entries:
      - {key: {prefix: 10.0.0.0/8}, value: {action: 1}}
      - {key_hex: "18000000c0a80100", value: {action: 2}}
  - map: acl
    slot: 5
    entries:
      - {key: {prefix: 192.168.0.0/16}, value: {action: 7, hits: 99}}
  - map: ports
    slot: {ifindex: 3}
    entries:
      - {key: {port: 443, proto: 6}, value: {verdict: 1}}
      - {key_hex: "00351100", value_hex: "020000000000000000000000"}
)");
  CmdResult r = ctl({"push", file});
  ASSERT_EQ(r.exit_code, 0) << "stdout: " << r.out << "\nstderr: " << r.err;

  v1::GetStateResponse st = get_state();
  EXPECT_EQ(st.generation(), 1u);
  EXPECT_EQ(st.label(), "v42");

  const uint32_t acl0 = expect_kernel(
      "acl", u32le(0),
      {{acl_key(8, 10, 0, 0, 0), acl_value(1)}, {acl_key(24, 192, 168, 1, 0), acl_value(2)}});
  // Counter fields are zero-filled whatever the file says.
  expect_kernel("acl", u32le(5), {{acl_key(16, 192, 168, 0, 0), acl_value(7, 0)}});
  expect_kernel("ports", u32le(3),
                {{ports_key(443, 6), ports_value(1)}, {ports_key(53, 17), ports_value(2)}});

  // The inner map really is of the configured shape.
  std::optional<KernelSlot> ks = kernel_slot("acl", 0u);
  ASSERT_TRUE(ks.has_value());
  EXPECT_EQ(ks->info.type, BPF_MAP_TYPE_LPM_TRIE);
  EXPECT_EQ(ks->info.key_size, kAclKeySize);
  EXPECT_EQ(ks->info.value_size, kAclValueSize);
  EXPECT_EQ(ks->info.max_entries, kAclInnerMax);

  // GetState's live slots name the same inner maps as the kernel.
  auto live = state_slots(st, "acl");
  EXPECT_EQ(live.size(), 2u);
  EXPECT_EQ(live[u32le(0)], acl0);
  EXPECT_EQ(state_slots(st, "ports").count(u32le(3)), 1u);
  EXPECT_TRUE(kernel_slot("acl", 1u) == std::nullopt) << "an untouched slot got a map";

  // policyctl reads it back.
  CmdResult dump = ctl({"dump", "acl", "0"});
  ASSERT_EQ(dump.exit_code, 0) << dump.err;
  EXPECT_TRUE(contains_all(dump.out, {"10.0.0.0/8", "192.168.1.0/24"}));
  CmdResult jdump = ctl({"--json", "dump", "acl", "0"});
  ASSERT_EQ(jdump.exit_code, 0) << jdump.err;
  EXPECT_TRUE(parse_json(jdump.out).has_value()) << "not a JSON object: " << jdump.out;
  EXPECT_TRUE(contains_all(jdump.out, {"10.0.0.0/8"}));

  CmdResult status = ctl({"status"});
  ASSERT_EQ(status.exit_code, 0) << status.err;
  EXPECT_TRUE(contains_all(status.out, {"v42", "acl", "ports"}));
  CmdResult jstatus = ctl({"--json", "status"});
  ASSERT_EQ(jstatus.exit_code, 0) << jstatus.err;
  auto js = parse_json(jstatus.out);
  ASSERT_TRUE(js.has_value()) << "not a JSON object: " << jstatus.out;
  ASSERT_TRUE(js->fields().count("generation")) << jstatus.out;
  const auto& gen = js->fields().at("generation");
  // uint64 may be printed as a number or (proto3 JSON style) as a string.
  EXPECT_TRUE((gen.has_number_value() && gen.number_value() == 1) ||
              (gen.has_string_value() && gen.string_value() == "1"))
      << jstatus.out;

  // --label overrides the file's label; a file can delete a slot.
  const std::string del = write_file("del.yaml", R"(label: from-file
changes:
  - {map: acl, slot: 5, delete: true}
)");
  CmdResult r2 = ctl({"push", del, "--label", "override"});
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  st = get_state();
  EXPECT_EQ(st.generation(), 2u);
  EXPECT_EQ(st.label(), "override");
  EXPECT_TRUE(kernel_slot("acl", 5u) == std::nullopt) << "acl slot 5 survived its delete";
  EXPECT_EQ(kernel_slot("acl", 0u).value_or(KernelSlot{}).map_id, acl0)
      << "a slot the generation did not touch was replaced";

  CmdResult gens = ctl({"generations"});
  ASSERT_EQ(gens.exit_code, 0) << gens.err;
  EXPECT_TRUE(contains_all(gens.out, {"v42", "override"}));
}

TEST_F(PushTest, GrpcPushTypedRawArrayAndHashSlots) {
  v1::PushGenerationRequest req;
  req.set_label("grpc-1");
  add_change(req, "acl", index_slot(1),
             {typed_entry({{"prefix", "10.1.0.0/16"}}, {{"action", "11"}}),
              typed_entry({{"prefix", "10.1.2.0/24"}}, {{"action", "12"}})});
  add_change(req, "acl", index_slot(2),
             {raw_entry(acl_key(32, 172, 16, 0, 1), acl_value(21)),
              raw_entry(acl_key(12, 172, 16, 0, 0), acl_value(22))});
  add_change(req, "ports", fields_slot({{"ifindex", "7"}}),
             {typed_entry({{"port", "80"}, {"proto", "6"}}, {{"verdict", "1"}}),
              typed_entry({{"port", "8080"}, {"proto", "17"}}, {{"verdict", "255"}})});
  v1::SlotRef raw_slot;
  const Bytes nine = u32le(9);
  raw_slot.set_key(std::string(nine.begin(), nine.end()));
  add_change(req, "ports", raw_slot, {raw_entry(ports_key(22, 6), ports_value(3))});
  add_change(req, "blob", index_slot(0), {raw_entry(u32le(1), blob_value(0xab))});

  const v1::GetStateResponse before = get_state();
  v1::PushGenerationResponse resp;
  grpc::Status s = push(req, &resp);
  ASSERT_TRUE(s.ok()) << describe(s);
  EXPECT_EQ(resp.generation(), 1u);
  EXPECT_GE(resp.batch_size(), 1u);
  EXPECT_FALSE(resp.replayed());
  // G3: five slots in three outer maps, one barrier.
  EXPECT_EQ(get_state().barriers() - before.barriers(), 1u);

  const uint32_t acl1 = expect_kernel(
      "acl", u32le(1),
      {{acl_key(16, 10, 1, 0, 0), acl_value(11)}, {acl_key(24, 10, 1, 2, 0), acl_value(12)}});
  const uint32_t acl2 = expect_kernel(
      "acl", u32le(2),
      {{acl_key(32, 172, 16, 0, 1), acl_value(21)}, {acl_key(12, 172, 16, 0, 0), acl_value(22)}});
  const uint32_t ports7 =
      expect_kernel("ports", u32le(7),
                    {{ports_key(80, 6), ports_value(1)}, {ports_key(8080, 17), ports_value(255)}});
  expect_kernel("ports", u32le(9), {{ports_key(22, 6), ports_value(3)}});
  expect_kernel("blob", u32le(0), {{u32le(1), blob_value(0xab)}});

  v1::GetStateResponse st = get_state();
  EXPECT_EQ(st.generation(), 1u);
  EXPECT_EQ(st.label(), "grpc-1");
  EXPECT_EQ(state_slots(st, "acl")[u32le(1)], acl1);
  EXPECT_EQ(state_slots(st, "ports")[u32le(7)], ports7);

  // DumpSlot reads the live map: same id as the kernel's, decoded fields.
  {
    grpc::ClientContext ctx;
    set_deadline(ctx);
    v1::DumpSlotRequest dreq;
    dreq.set_map("acl");
    *dreq.mutable_slot() = index_slot(1);
    v1::DumpSlotResponse dresp;
    grpc::Status ds = stub().DumpSlot(&ctx, dreq, &dresp);
    ASSERT_TRUE(ds.ok()) << describe(ds);
    EXPECT_EQ(dresp.map_id(), acl1);
    EXPECT_EQ(dresp.generation(), 1u);
    ASSERT_EQ(dresp.entries_size(), 2);
    std::map<std::string, std::string> prefix_to_action;
    for (const v1::DumpedEntry& e : dresp.entries()) {
      EXPECT_EQ(e.key().size(), kAclKeySize);
      EXPECT_EQ(e.value().size(), kAclValueSize);
      prefix_to_action[e.key_fields().values().at("prefix")] =
          e.value_fields().values().at("action");
    }
    EXPECT_EQ(prefix_to_action["10.1.0.0/16"], "11");
    EXPECT_EQ(prefix_to_action["10.1.2.0/24"], "12");
  }
  {
    grpc::ClientContext ctx;
    set_deadline(ctx);
    v1::DumpSlotRequest dreq;
    dreq.set_map("ports");
    *dreq.mutable_slot() = fields_slot({{"ifindex", "7"}});
    v1::DumpSlotResponse dresp;
    grpc::Status ds = stub().DumpSlot(&ctx, dreq, &dresp);
    ASSERT_TRUE(ds.ok()) << describe(ds);
    EXPECT_EQ(dresp.map_id(), ports7);
    EXPECT_EQ(dresp.entries_size(), 2);
  }

  // Generation 2: delete acl slot 1, replace acl slot 2; ports and blob are untouched.
  v1::PushGenerationRequest req2;
  req2.set_label("grpc-2");
  add_delete(req2, "acl", index_slot(1));
  add_change(req2, "acl", index_slot(2),
             {typed_entry({{"prefix", "0.0.0.0/0"}}, {{"action", "99"}})});
  v1::PushGenerationResponse resp2;
  s = push(req2, &resp2);
  ASSERT_TRUE(s.ok()) << describe(s);
  EXPECT_EQ(resp2.generation(), 2u);

  EXPECT_TRUE(kernel_slot("acl", 1u) == std::nullopt) << "acl slot 1 survived its delete";
  const uint32_t acl2b = expect_kernel("acl", u32le(2), {{acl_key(0, 0, 0, 0, 0), acl_value(99)}});
  EXPECT_NE(acl2b, acl2) << "a replaced slot must get a new inner map";
  EXPECT_EQ(
      expect_kernel("ports", u32le(7),
                    {{ports_key(80, 6), ports_value(1)}, {ports_key(8080, 17), ports_value(255)}}),
      ports7);
  st = get_state();
  EXPECT_EQ(st.generation(), 2u);
  EXPECT_EQ(state_slots(st, "acl").count(u32le(1)), 0u);
  EXPECT_EQ(state_slots(st, "acl")[u32le(2)], acl2b);
}

TEST_F(PushTest, EmptyEntriesInstallAnEmptyInnerMap) {
  v1::PushGenerationRequest req;
  add_change(req, "acl", index_slot(4), {});
  ASSERT_NE(push_ok(req), 0u);
  std::optional<KernelSlot> ks = kernel_slot("acl", 4u);
  ASSERT_TRUE(ks.has_value()) << "replacing a slot with no entries must install an empty map";
  EXPECT_TRUE(ks->entries.empty());
  EXPECT_EQ(ks->info.type, BPF_MAP_TYPE_LPM_TRIE);
}

TEST_F(PushTest, StreamPushLargerThanTheUnaryLimit) {
  // 1000 blob entries of 512 bytes: ~520 KB, over the 256 KiB unary limit of the test config.
  std::vector<v1::PushGenerationRequest> msgs(4);
  msgs[0].set_label("big");
  for (uint32_t part = 0; part < 4; ++part) {
    std::vector<v1::Entry> entries;
    for (uint32_t i = part * 250; i < (part + 1) * 250; ++i) {
      entries.push_back(raw_entry(u32le(i), blob_value(static_cast<uint8_t>(i))));
    }
    // Changes of one slot continued over several messages are concatenated by the daemon.
    add_change(msgs[part], "blob", index_slot(1), entries);
  }
  size_t total = 0;
  for (const auto& m : msgs) total += m.ByteSizeLong();
  ASSERT_GT(total, 256u * 1024);

  grpc::ClientContext ctx;
  set_deadline(ctx);
  v1::PushGenerationResponse resp;
  auto writer = stub().PushGenerationStream(&ctx, &resp);
  for (const auto& m : msgs) ASSERT_TRUE(writer->Write(m)) << "stream closed early";
  ASSERT_TRUE(writer->WritesDone());
  grpc::Status s = writer->Finish();
  ASSERT_TRUE(s.ok()) << describe(s);
  EXPECT_EQ(resp.generation(), 1u);

  std::optional<KernelSlot> ks = kernel_slot("blob", 1u);
  ASSERT_TRUE(ks.has_value());
  EXPECT_EQ(ks->entries.size(), 1000u);
  for (uint32_t i : {0u, 249u, 250u, 999u}) {
    auto it = ks->entries.find(u32le(i));
    ASSERT_NE(it, ks->entries.end()) << "entry " << i;
    EXPECT_EQ(it->second, blob_value(static_cast<uint8_t>(i))) << "entry " << i;
  }
  EXPECT_EQ(get_state().label(), "big");
}

TEST_F(PushTest, PolicyctlPushesFilesOverTheUnaryLimit) {
  // ~1 MB of YAML, ~520 KB encoded: policyctl must use the streaming push.
  std::string yaml = "label: big-file\nchanges:\n  - map: blob\n    slot: 2\n    entries:\n";
  for (uint32_t i = 0; i < 1000; ++i) {
    yaml += "      - {key_hex: \"" + hex(u32le(i)) + "\", value_hex: \"" +
            hex(blob_value(static_cast<uint8_t>(i * 7))) + "\"}\n";
  }
  CmdResult r = ctl({"push", write_file("big.yaml", yaml)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::optional<KernelSlot> ks = kernel_slot("blob", 2u);
  ASSERT_TRUE(ks.has_value());
  EXPECT_EQ(ks->entries.size(), 1000u);
  EXPECT_EQ(ks->entries[u32le(999)], blob_value(static_cast<uint8_t>(999 * 7)));
}

// The daemon's default size limit (16 MiB) and a single slot whose entries serialize to more than
// policyctl's 3 MiB unary threshold: policyctl streams the push in ~2 MiB messages, continuing
// the slot's change from one message to the next, and the daemon must concatenate them.
class LargePushTest : public PushTest {
 protected:
  DaemonOptions daemon_options() const override {
    DaemonOptions o;
    o.max_message_bytes = 16 << 20;
    o.max_entries_per_push = 100000;
    o.maps_yaml += R"(  - name: big
    type: array_of_maps
    slots: 2
    drain: none
    inner:
      type: hash
      max_entries: 4096
      key:   [{name: id, type: u32}]
      value: [{name: data, type: "bytes[1024]"}]
)";
    return o;
  }
};

TEST_F(LargePushTest, PolicyctlStreamsOneLargeSlotAtTheDefaultLimit) {
  constexpr uint32_t kEntries = 3500;  // ~3.6 MB encoded
  std::string yaml = "label: big-slot\nchanges:\n  - map: big\n    slot: 1\n    entries:\n";
  const std::string value(2048, 'a');  // 1024 bytes of 0xaa
  for (uint32_t i = 0; i < kEntries; ++i) {
    yaml += "      - {key_hex: \"" + hex(u32le(i)) + "\", value_hex: \"" + value + "\"}\n";
  }
  CmdResult r = ctl({"push", write_file("big-slot.yaml", yaml)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::optional<KernelSlot> ks = kernel_slot("big", 1u);
  ASSERT_TRUE(ks.has_value());
  EXPECT_EQ(ks->entries.size(), kEntries);
  EXPECT_EQ(ks->entries[u32le(kEntries - 1)], Bytes(1024, 0xaa));
}

}  // namespace
}  // namespace policyd::e2e
