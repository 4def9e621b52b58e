// Bad inputs (G1 validate first, G9 stale expected generation, size limits, hostile bytes):
// each is answered with a precise error (status code and the words that locate the problem),
// the daemon keeps running and serving, and the data plane keeps its generation: GetState's
// generation and commit count are unchanged and the kernel's outer maps still hold the same
// inner maps (read through the pins). Every bad gRPC push also carries a valid change first,
// which must not be applied either.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "daemon_fixture.h"

namespace policyd::e2e {
namespace {

using grpc::StatusCode;

class ErrorsTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    // Two generations: the data plane is at generation 2 with acl slot 0 and ports ifindex 3.
    push_ok(acl_push(0, {{"10.0.0.0/8", 1}}, "base-1"));
    v1::PushGenerationRequest req =
        acl_push(0, {{"10.0.0.0/8", 1}, {"192.168.0.0/16", 2}}, "base-2");
    add_change(req, "ports", fields_slot({{"ifindex", "3"}}),
               {typed_entry({{"port", "443"}, {"proto", "6"}}, {{"verdict", "1"}})});
    ASSERT_EQ(push_ok(req), 2u);
    base_state_ = get_state();
    base_snapshot_ = snapshot();
    ASSERT_EQ(base_snapshot_["acl"].size(), 1u);
    ASSERT_EQ(base_snapshot_["ports"].size(), 1u);
  }

  // The daemon is alive, still at the base generation, and the kernel unchanged.
  void expect_unchanged(const std::string& what) {
    SCOPED_TRACE(what);
    ASSERT_TRUE(daemon().running()) << "policyd died";
    v1::GetStateResponse st = get_state();
    EXPECT_EQ(st.generation(), base_state_.generation()) << "the generation moved";
    EXPECT_EQ(st.label(), base_state_.label());
    EXPECT_EQ(st.generations_committed(), base_state_.generations_committed());
    EXPECT_EQ(snapshot(), base_snapshot_) << "the data plane changed";
    std::optional<KernelSlot> acl0 = kernel_slot("acl", 0u);
    ASSERT_TRUE(acl0.has_value());
    EXPECT_EQ(acl0->entries, (std::map<Bytes, Bytes>{{acl_key(8, 10, 0, 0, 0), acl_value(1)},
                                                     {acl_key(16, 192, 168, 0, 0), acl_value(2)}}));
  }

  // A request that starts with a valid change (acl slot 5) followed by the bad ones.
  static v1::PushGenerationRequest with_valid_first() {
    v1::PushGenerationRequest req = acl_push(5, {{"10.5.0.0/16", 5}}, "must-not-commit");
    return req;
  }

  // Pushes `req` and expects one of `codes` with every word in the message.
  void expect_refused(const std::string& what, const v1::PushGenerationRequest& req,
                      std::vector<StatusCode> codes, const std::vector<std::string>& words) {
    SCOPED_TRACE(what);
    grpc::Status s = push(req);
    bool code_ok = false;
    for (StatusCode c : codes) code_ok = code_ok || s.error_code() == c;
    std::string want;
    for (StatusCode c : codes) want += std::string(want.empty() ? "" : " or ") + code_name(c);
    EXPECT_TRUE(code_ok) << "want " << want << ", got " << describe(s);
    EXPECT_TRUE(contains_all(s.error_message(), words)) << describe(s);
    expect_unchanged(what);
  }

  // `policyctl push FILE args...` must fail, with every word on stderr.
  void expect_ctl_refused(const std::string& what, const std::string& file_name,
                          const std::string& yaml, const std::vector<std::string>& extra_args,
                          const std::vector<std::string>& words) {
    SCOPED_TRACE(what);
    const std::string path = write_file(file_name, yaml);
    std::vector<std::string> args = {"push", path};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    CmdResult r = ctl(args);
    EXPECT_NE(r.exit_code, 0) << "policyctl accepted it; stdout: " << r.out;
    EXPECT_NE(r.exit_code, 128 + SIGSEGV) << "policyctl crashed";
    EXPECT_FALSE(r.err.empty()) << "policyctl failed without a message";
    EXPECT_TRUE(contains_all(r.err, words)) << "stderr: " << r.err;
    expect_unchanged(what);
  }

  v1::GetStateResponse base_state_;
  KernelSnapshot base_snapshot_;
};

// A policy file whose 6th line is `entry_line`.
std::string policy_with_entry(const std::string& map, const std::string& slot,
                              const std::string& entry_line) {
  return "label: bad\n"
         "changes:\n"
         "  - map: " +
         map +
         "\n"
         "    slot: " +
         slot +
         "\n"
         "    entries:\n"
         "      " +
         entry_line + "\n";
}

TEST_F(ErrorsTest, PolicyctlMalformedYamlNamesFileAndLine) {
  const std::string path = write_file("malformed.yaml",
                                      "label: bad\n"
                                      "changes:\n"
                                      "  - map: acl\n"
                                      "    slot: 0\n"
                                      "    entries:\n"
                                      "      - {key: {prefix: 10.0.0.0/8}, value: {action: 1}\n"
                                      "  - map: acl\n");
  CmdResult r = ctl({"push", path});
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_TRUE(std::regex_search(r.err, std::regex("malformed\\.yaml:[0-9]+")))
      << "no file:line in: " << r.err;
  expect_unchanged("malformed yaml");

  // Valid YAML that is not a policy (changes is not a list): also located.
  expect_ctl_refused("changes not a list", "shape.yaml", "label: x\nchanges: {map: acl}\n", {},
                     {"shape.yaml:2", "changes"});
  // A file that does not exist.
  CmdResult missing = ctl({"push", work_dir() + "/no-such-file.yaml"});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_TRUE(contains_all(missing.err, {"no-such-file.yaml"})) << missing.err;
}

TEST_F(ErrorsTest, PolicyctlTypedErrorsNameFileLineAndField) {
  expect_ctl_refused(
      "unknown map", "map.yaml",
      policy_with_entry("nosuch", "0", "- {key: {prefix: 10.0.0.0/8}, value: {action: 1}}"), {},
      {"nosuch"});
  expect_ctl_refused(
      "unknown key field", "typo.yaml",
      policy_with_entry("acl", "0", "- {key: {prefx: 10.0.0.0/8}, value: {action: 1}}"), {},
      {"typo.yaml:6", "prefx"});
  expect_ctl_refused(
      "unknown value field", "vtypo.yaml",
      policy_with_entry("acl", "0", "- {key: {prefix: 10.0.0.0/8}, value: {acton: 1}}"), {},
      {"vtypo.yaml:6", "acton"});
  expect_ctl_refused(
      "u32 out of range", "range.yaml",
      policy_with_entry("acl", "0", "- {key: {prefix: 10.0.0.0/8}, value: {action: 4294967296}}"),
      {}, {"range.yaml:6", "action"});
  expect_ctl_refused("u8 out of range", "range8.yaml",
                     policy_with_entry("ports", "{ifindex: 3}",
                                       "- {key: {port: 80, proto: 6}, value: {verdict: 256}}"),
                     {}, {"range8.yaml:6", "verdict"});
  expect_ctl_refused(
      "bad prefix length", "prefix.yaml",
      policy_with_entry("acl", "0", "- {key: {prefix: 10.0.0.0/33}, value: {action: 1}}"), {},
      {"prefix.yaml:6", "prefix"});
  expect_ctl_refused(
      "bad address", "addr.yaml",
      policy_with_entry("acl", "0", "- {key: {prefix: 10.0.300.0/24}, value: {action: 1}}"), {},
      {"addr.yaml:6", "prefix"});
  expect_ctl_refused("wrong raw key length", "hexlen.yaml",
                     policy_with_entry("acl", "0", "- {key_hex: \"0800000a\", value: {action: 1}}"),
                     {}, {"hexlen.yaml:6", "8"});
  expect_ctl_refused(
      "slot out of range", "slot.yaml",
      policy_with_entry("acl", "64", "- {key: {prefix: 10.0.0.0/8}, value: {action: 1}}"), {},
      {"acl", "64"});
}

TEST_F(ErrorsTest, G9_PolicyctlStaleExpectIsRefused) {
  const std::string yaml =
      policy_with_entry("acl", "0", "- {key: {prefix: 10.0.0.0/8}, value: {action: 1}}");
  expect_ctl_refused("stale --expect", "stale.yaml", yaml, {"--expect", "1"}, {"expect", "1", "2"});
  expect_ctl_refused("future --expect", "future.yaml", yaml, {"--expect", "7"}, {"expect", "7"});
  // The current generation is accepted.
  CmdResult r = ctl({"push", write_file("ok.yaml", yaml), "--expect", "2"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(get_state().generation(), 3u);
}

TEST_F(ErrorsTest, G1_UnknownMapIsRefused) {
  v1::PushGenerationRequest req = with_valid_first();
  add_change(req, "nosuch", index_slot(0), {raw_entry(u32le(1), u32le(1))});
  // The proto's header: "an unknown map in a push is INVALID_ARGUMENT too"; the message names it.
  expect_refused("unknown map", req, {StatusCode::INVALID_ARGUMENT}, {"nosuch"});
  v1::PushGenerationRequest empty_name = with_valid_first();
  add_change(empty_name, "", index_slot(0), {});
  expect_refused("empty map name", empty_name, {StatusCode::INVALID_ARGUMENT}, {"map"});
}

TEST_F(ErrorsTest, G1_UnknownFieldIsRefused) {
  v1::PushGenerationRequest key = with_valid_first();
  add_change(key, "acl", index_slot(1), {typed_entry({{"prefx", "10.0.0.0/8"}}, {})});
  expect_refused("unknown key field", key, {StatusCode::INVALID_ARGUMENT},
                 {"changes[1]", "entries[0]", "prefx"});

  v1::PushGenerationRequest value = with_valid_first();
  add_change(value, "acl", index_slot(1),
             {typed_entry({{"prefix", "10.0.0.0/8"}}, {{"acton", "1"}})});
  expect_refused("unknown value field", value, {StatusCode::INVALID_ARGUMENT},
                 {"changes[1]", "entries[0]", "acton"});

  v1::PushGenerationRequest slot = with_valid_first();
  add_change(slot, "ports", fields_slot({{"ifidx", "3"}}), {});
  expect_refused("unknown slot key field", slot, {StatusCode::INVALID_ARGUMENT},
                 {"changes[1]", "slot", "ifidx"});

  v1::PushGenerationRequest missing = with_valid_first();
  add_change(missing, "ports", fields_slot({{"ifindex", "4"}}),
             {typed_entry({{"port", "80"}}, {{"verdict", "1"}})});
  expect_refused("key field missing", missing, {StatusCode::INVALID_ARGUMENT},
                 {"changes[1]", "entries[0]", "proto"});
}

TEST_F(ErrorsTest, G1_ValueOutOfRangeIsRefused) {
  struct Case {
    std::string map, field, text;
  };
  for (const Case& c : {Case{"acl", "action", "4294967296"}, Case{"acl", "action", "-1"},
                        Case{"acl", "action", "abc"}, Case{"ports", "verdict", "256"},
                        Case{"ports", "port", "65536"}, Case{"ports", "proto", "300"}}) {
    v1::PushGenerationRequest req = with_valid_first();
    if (c.map == "acl") {
      add_change(req, "acl", index_slot(1),
                 {typed_entry({{"prefix", "10.0.0.0/8"}}, {{c.field, c.text}})});
    } else {
      std::map<std::string, std::string> key = {{"port", "80"}, {"proto", "6"}};
      std::map<std::string, std::string> value = {{"verdict", "1"}};
      (c.field == "verdict" ? value : key)[c.field] = c.text;
      add_change(req, "ports", fields_slot({{"ifindex", "4"}}), {typed_entry(key, value)});
    }
    expect_refused(c.map + "." + c.field + " = " + c.text, req, {StatusCode::INVALID_ARGUMENT},
                   {"changes[1]", "entries[0]", c.field});
  }
  v1::PushGenerationRequest slot = with_valid_first();
  add_change(slot, "ports", fields_slot({{"ifindex", "4294967296"}}), {});
  expect_refused("slot key out of range", slot, {StatusCode::INVALID_ARGUMENT},
                 {"changes[1]", "slot", "ifindex"});
}

TEST_F(ErrorsTest, G1_BadPrefixIsRefused) {
  for (const char* bad :
       {"10.0.0.0/33", "10.0.0/8", "300.1.1.0/24", "10.0.0.0/-1", "10.0.0.0/x", "fe80::/64", ""}) {
    v1::PushGenerationRequest req = with_valid_first();
    add_change(req, "acl", index_slot(1), {typed_entry({{"prefix", bad}}, {{"action", "1"}})});
    expect_refused(std::string("prefix \"") + bad + "\"", req, {StatusCode::INVALID_ARGUMENT},
                   {"changes[1]", "entries[0]", "prefix"});
  }
}

TEST_F(ErrorsTest, G1_WrongRawLengthIsRefused) {
  v1::PushGenerationRequest key = with_valid_first();
  add_change(key, "acl", index_slot(1), {raw_entry(Bytes(7, 1), acl_value(1))});
  expect_refused("7-byte raw key", key, {StatusCode::INVALID_ARGUMENT}, {"acl", "key", "8"});

  v1::PushGenerationRequest value = with_valid_first();
  add_change(value, "acl", index_slot(1), {raw_entry(acl_key(8, 10, 0, 0, 0), Bytes(15, 0))});
  expect_refused("15-byte raw value", value, {StatusCode::INVALID_ARGUMENT},
                 {"acl", "value", "16"});

  v1::PushGenerationRequest slot = with_valid_first();
  v1::SlotRef short_slot;
  short_slot.set_key(std::string(2, '\x03'));
  add_change(slot, "ports", short_slot, {});
  expect_refused("2-byte raw slot key", slot, {StatusCode::INVALID_ARGUMENT},
                 {"ports", "slot", "4"});

  v1::PushGenerationRequest mix = with_valid_first();
  add_change(mix, "acl", index_slot(1), {raw_entry(acl_key(8, 10, 0, 0, 0), Bytes(17, 0))});
  expect_refused("17-byte raw value", mix, {StatusCode::INVALID_ARGUMENT}, {"acl", "value"});
}

TEST_F(ErrorsTest, G1_DuplicateKeysAndContradictoryChangesAreRefused) {
  v1::PushGenerationRequest dup = with_valid_first();
  add_change(dup, "acl", index_slot(1),
             {typed_entry({{"prefix", "10.0.0.0/8"}}, {{"action", "1"}}),
              raw_entry(acl_key(8, 10, 0, 0, 0), acl_value(2))});
  expect_refused("duplicate key", dup, {StatusCode::INVALID_ARGUMENT}, {"acl", "duplicate"});

  v1::PushGenerationRequest twice = with_valid_first();
  add_change(twice, "acl", index_slot(5), {});
  expect_refused("two changes to one slot", twice, {StatusCode::INVALID_ARGUMENT}, {"acl", "5"});

  v1::PushGenerationRequest del = with_valid_first();
  add_delete(del, "acl", index_slot(0))
      ->add_entries()
      ->CopyFrom(typed_entry({{"prefix", "10.0.0.0/8"}}, {}));
  expect_refused("delete with entries", del, {StatusCode::INVALID_ARGUMENT}, {"acl", "delete"});

  v1::PushGenerationRequest no_slot = with_valid_first();
  v1::SlotChange* c = no_slot.add_changes();
  c->set_map("acl");
  expect_refused("no slot", no_slot, {StatusCode::INVALID_ARGUMENT}, {"acl", "slot"});
}

TEST_F(ErrorsTest, G1_G6_TooManyEntriesIsRefused) {
  // More than ports' inner max_entries (1024) in one slot.
  v1::PushGenerationRequest inner = with_valid_first();
  std::vector<v1::Entry> entries;
  for (uint32_t i = 0; i < kPortsInnerMax + 1; ++i) {
    entries.push_back(raw_entry(ports_key(static_cast<uint16_t>(i + 1), 6), ports_value(1)));
  }
  add_change(inner, "ports", fields_slot({{"ifindex", "4"}}), entries);
  expect_refused("1025 entries in a 1024-entry inner map", inner,
                 {StatusCode::INVALID_ARGUMENT, StatusCode::RESOURCE_EXHAUSTED}, {"ports", "1024"});

  // More than limits.max_entries_per_push (2000) over several slots, each within max_entries.
  v1::PushGenerationRequest total = with_valid_first();
  for (uint32_t slot = 4; slot < 7; ++slot) {
    std::vector<v1::Entry> e;
    for (uint32_t i = 0; i < 700; ++i) {
      e.push_back(raw_entry(ports_key(static_cast<uint16_t>(i + 1), 17), ports_value(2)));
    }
    add_change(total, "ports", fields_slot({{"ifindex", std::to_string(slot)}}), e);
  }
  expect_refused("2101 entries over the 2000 per-push limit", total,
                 {StatusCode::RESOURCE_EXHAUSTED}, {"2000"});
}

TEST_F(ErrorsTest, G1_SlotOutOfRangeIsRefused) {
  v1::PushGenerationRequest req = with_valid_first();
  add_change(req, "acl", index_slot(kAclSlots), {});
  expect_refused("acl slot 64", req, {StatusCode::INVALID_ARGUMENT}, {"acl", "64"});

  v1::PushGenerationRequest del = with_valid_first();
  add_delete(del, "acl", index_slot(1000));
  expect_refused("delete acl slot 1000", del, {StatusCode::INVALID_ARGUMENT}, {"acl", "1000"});

  // An array map addressed by a raw key of the wrong size, a hash map by an index.
  v1::PushGenerationRequest hash_by_index = with_valid_first();
  add_change(hash_by_index, "ports", index_slot(3), {});
  v1::PushGenerationRequest array_by_fields = with_valid_first();
  add_change(array_by_fields, "acl", fields_slot({{"ifindex", "3"}}), {});
  for (const auto* r : {&hash_by_index, &array_by_fields}) {
    grpc::Status s = push(*r);
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT) << describe(s);
    expect_unchanged("slot of the wrong kind");
  }

  // The hash outer map holds 16 slots; one already used, 16 more do not fit.
  v1::PushGenerationRequest full = with_valid_first();
  for (uint32_t ifindex = 100; ifindex < 116; ++ifindex) {
    add_change(full, "ports", fields_slot({{"ifindex", std::to_string(ifindex)}}), {});
  }
  expect_refused("17 slots in a 16-slot hash_of_maps", full,
                 {StatusCode::RESOURCE_EXHAUSTED, StatusCode::INVALID_ARGUMENT}, {"ports"});
}

// DESIGN.md G1: a refused generation is answered "naming map, slot and entry". The field path
// (changes[i].entries[j]) locates the entry in the request; the map and slot must be named too,
// whichever layer (typed-field encoding or core validation) finds the problem.
TEST_F(ErrorsTest, G1_InvalidArgumentsNameMapSlotAndEntry) {
  struct Case {
    std::string what;
    v1::PushGenerationRequest req;
    std::vector<std::string> words;
  };
  std::vector<Case> cases;
  {
    Case c{"unknown key field", with_valid_first(), {"acl", "17", "entries[0]", "prefx"}};
    add_change(c.req, "acl", index_slot(17), {typed_entry({{"prefx", "10.0.0.0/8"}}, {})});
    cases.push_back(c);
  }
  {
    Case c{"value out of range", with_valid_first(), {"acl", "17", "entries[1]", "action"}};
    add_change(c.req, "acl", index_slot(17),
               {typed_entry({{"prefix", "10.0.0.0/8"}}, {}),
                typed_entry({{"prefix", "11.0.0.0/8"}}, {{"action", "4294967296"}})});
    cases.push_back(c);
  }
  {
    Case c{"bad port", with_valid_first(), {"ports", "0x0b000000", "entries[0]", "port"}};
    add_change(c.req, "ports", fields_slot({{"ifindex", "11"}}),
               {typed_entry({{"port", "x"}, {"proto", "6"}}, {})});
    cases.push_back(c);
  }
  {
    Case c{"wrong raw length", with_valid_first(), {"acl", "17", "entry 0", "key"}};
    add_change(c.req, "acl", index_slot(17), {raw_entry(Bytes(7, 1), acl_value(1))});
    cases.push_back(c);
  }
  for (const Case& c : cases) {
    expect_refused(c.what, c.req, {StatusCode::INVALID_ARGUMENT}, c.words);
  }
}

TEST_F(ErrorsTest, G6_MessageOverTheSizeLimitIsRefused) {
  // 300 KB against limits.max_message_bytes = 262144.
  v1::PushGenerationRequest big = with_valid_first();
  big.set_label(std::string(300 * 1024, 'x'));
  expect_refused("unary push over the size limit", big, {StatusCode::RESOURCE_EXHAUSTED},
                 {"262144"});

  // The streaming form has the same per-message limit.
  grpc::ClientContext ctx;
  set_deadline(ctx);
  v1::PushGenerationResponse resp;
  auto writer = stub().PushGenerationStream(&ctx, &resp);
  (void)writer->Write(big);
  (void)writer->WritesDone();
  grpc::Status s = writer->Finish();
  EXPECT_TRUE(has_error(s, StatusCode::RESOURCE_EXHAUSTED, {"262144"}));
  expect_unchanged("stream message over the size limit");
}

// Connects to the daemon's socket without gRPC.
int raw_connect(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void write_all(int fd, const std::string& bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;  // the daemon may close a garbage connection: that is fine
    off += static_cast<size_t>(n);
  }
}

TEST_F(ErrorsTest, GarbageBytesOnTheSocketDoNotDisturbTheDaemon) {
  std::mt19937 rng(4242);
  auto random_bytes = [&](size_t n) {
    std::string s(n, '\0');
    for (char& c : s) c = static_cast<char>(rng() & 0xff);
    return s;
  };
  const std::string preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  const std::vector<std::string> payloads = {
      random_bytes(64 * 1024),
      "GET / HTTP/1.1\r\nHost: policyd\r\n\r\n",
      preface + random_bytes(4096),
      // A well-formed preface and a frame header announcing 16 MB that never comes.
      preface + std::string("\xff\xff\xff\x00\x00\x00\x00\x00\x01", 9),
      std::string(1, '\0'),
  };
  for (size_t i = 0; i < payloads.size(); ++i) {
    const int fd = raw_connect(socket_path());
    ASSERT_GE(fd, 0) << "connect: " << std::strerror(errno);
    write_all(fd, payloads[i]);
    ::close(fd);
    expect_unchanged("garbage payload " + std::to_string(i));
  }

  // Idle and half-open connections must not hold up other clients.
  std::vector<int> idle;
  for (int i = 0; i < 8; ++i) {
    const int fd = raw_connect(socket_path());
    ASSERT_GE(fd, 0);
    if (i % 2) write_all(fd, preface.substr(0, 10));
    idle.push_back(fd);
  }
  expect_unchanged("with 8 idle connections open");
  v1::PushGenerationResponse resp;
  grpc::Status s = push(acl_push(6, {{"10.6.0.0/16", 6}}, "after-garbage"), &resp);
  ASSERT_TRUE(s.ok()) << describe(s);
  EXPECT_EQ(resp.generation(), base_state_.generation() + 1);
  for (int fd : idle) ::close(fd);
  std::optional<KernelSlot> ks = kernel_slot("acl", 6u);
  ASSERT_TRUE(ks.has_value());
  EXPECT_EQ(ks->entries.size(), 1u);
  EXPECT_TRUE(daemon().running());
}

}  // namespace
}  // namespace policyd::e2e
