// Config loader: the example config loads; every refusal names file:line:col and the field
// path; a refused config yields no DaemonConfig at all.
#include <gtest/gtest.h>

#include <string>

#include "config/config.h"

namespace policyd::config {
namespace {

constexpr const char* kMinimal = R"(pin_dir: /sys/fs/bpf/pd
maps:
  - name: acl
    type: array_of_maps
    slots: 64
    inner:
      type: lpm_trie
      max_entries: 1024
      key:   [{name: prefix, type: ipv4_prefix}]
      value: [{name: action, type: u32}, {name: hits, type: u64, counter: true}]
)";

std::string error_of(const std::string& yaml) {
  Result<DaemonConfig> cfg = parse_config(yaml, "test.yaml");
  EXPECT_FALSE(cfg.ok()) << "accepted:\n" << yaml;
  if (cfg.ok()) return "";
  EXPECT_EQ(cfg.error().code, ErrorCode::kInvalidArgument);
  return cfg.error().message();
}

std::string replace(std::string s, const std::string& from, const std::string& to) {
  const size_t pos = s.find(from);
  EXPECT_NE(pos, std::string::npos) << from;
  if (pos != std::string::npos) s.replace(pos, from.size(), to);
  return s;
}

TEST(ConfigTest, ExampleConfigLoads) {
  Result<DaemonConfig> cfg = load_config_file(POLICYD_EXAMPLE_CONFIG);
  ASSERT_TRUE(cfg.ok()) << cfg.error().message();
  ASSERT_EQ(cfg->engine.maps.size(), 2u);
  const core::OuterMapConfig& acl = cfg->engine.maps[0];
  EXPECT_EQ(acl.name, "acl");
  EXPECT_EQ(acl.inner.key_size, 8u);     // u32 prefixlen + IPv4 address
  EXPECT_EQ(acl.inner.value_size, 12u);  // packed u32 + u64
  ASSERT_EQ(acl.inner.counters.size(), 1u);
  EXPECT_EQ(acl.inner.counters[0].name, "hits");
  EXPECT_EQ(acl.inner.counters[0].offset, 4u);
  const core::OuterMapConfig& ports = cfg->engine.maps[1];
  EXPECT_EQ(ports.kind, core::OuterKind::kHash);
  EXPECT_EQ(ports.slot_key_size, 4u);
  EXPECT_EQ(ports.inner.key_size, 4u);
  EXPECT_EQ(ports.inner.value_size, 12u);
  EXPECT_TRUE(cfg->schemas.at("ports").slot_key.has_value());
  EXPECT_EQ(cfg->api.socket_mode, 0660u);
}

TEST(ConfigTest, NaturalAlignmentPadsLikeC) {
  Result<DaemonConfig> cfg =
      parse_config(replace(kMinimal, "      max_entries: 1024\n",
                           "      max_entries: 1024\n      align: natural\n"),
                   "test.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.error().message();
  EXPECT_EQ(cfg->engine.maps[0].inner.value_size, 16u);  // u32, 4 bytes padding, u64
  EXPECT_EQ(cfg->engine.maps[0].inner.counters[0].offset, 8u);
}

TEST(ConfigTest, UnknownFieldTypeNamesLineColumnAndPath) {
  const std::string msg = error_of(replace(kMinimal, "type: ipv4_prefix", "type: ipv5"));
  EXPECT_NE(msg.find("test.yaml:9:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("maps[0].inner.key[0].type: unknown type \"ipv5\""), std::string::npos) << msg;
}

TEST(ConfigTest, UnknownKeyIsRefusedNotIgnored) {
  const std::string msg =
      error_of(replace(kMinimal, "    slots: 64\n", "    slots: 64\n    slot: 3\n"));
  EXPECT_NE(msg.find("maps[0].slot: unknown key"), std::string::npos) << msg;
  EXPECT_NE(msg.find("test.yaml:6:"), std::string::npos) << msg;
}

TEST(ConfigTest, MalformedYamlNamesThePosition) {
  const std::string msg = error_of("maps: [\n  {name: acl\n");
  EXPECT_NE(msg.find("test.yaml:"), std::string::npos) << msg;
}

TEST(ConfigTest, MapNameTooLong) {
  const std::string msg = error_of(replace(kMinimal, "name: acl", "name: a_very_long_map_name"));
  EXPECT_NE(msg.find("maps[0].name"), std::string::npos) << msg;
  EXPECT_NE(msg.find("at most 15"), std::string::npos) << msg;
}

TEST(ConfigTest, LpmKeyMustStartWithAPrefix) {
  const std::string msg =
      error_of(replace(kMinimal, "{name: prefix, type: ipv4_prefix}", "{name: port, type: u32}"));
  EXPECT_NE(msg.find("maps[0].inner.key"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lpm_trie key must start"), std::string::npos) << msg;
}

TEST(ConfigTest, CounterMustBeAnInteger) {
  const std::string msg = error_of(
      replace(kMinimal, "{name: action, type: u32}", "{name: action, type: ipv4, counter: true}"));
  EXPECT_NE(msg.find("maps[0].inner.value[0].counter"), std::string::npos) << msg;
}

TEST(ConfigTest, ConnectionLimitsAreBoundedAndNamed) {
  const std::string base = std::string("api: {idle_timeout_s: X}\n") + kMinimal;
  auto with = [&](const std::string& v) { return replace(base, "X", v); };
  Result<DaemonConfig> ok = parse_config(with("30"), "t.yaml");
  ASSERT_TRUE(ok.ok()) << ok.error().message();
  EXPECT_EQ(ok.value().api.idle_timeout_s, 30u);
  EXPECT_NE(error_of(with("0")).find("api.idle_timeout_s: must be at least 1"), std::string::npos)
      << error_of(with("0"));
  EXPECT_NE(error_of(with("86401")).find("api.idle_timeout_s"), std::string::npos);
  const std::string watchers = error_of(std::string("api: {max_watchers_per_uid: 0}\n") + kMinimal);
  EXPECT_NE(watchers.find("api.max_watchers_per_uid: must be at least 1"), std::string::npos)
      << watchers;
}

TEST(ConfigTest, BadValues) {
  EXPECT_NE(error_of(replace(kMinimal, "slots: 64", "slots: -1")).find("maps[0].slots"),
            std::string::npos);
  EXPECT_NE(error_of(replace(kMinimal, "slots: 64", "slots: 0")).find("at least 1"),
            std::string::npos);
  EXPECT_NE(
      error_of(replace(kMinimal, "type: lpm_trie", "type: ringbuf")).find("unknown inner map type"),
      std::string::npos);
  EXPECT_NE(
      error_of(replace(kMinimal, "type: array_of_maps", "type: array")).find("unknown outer type"),
      std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "barrier: fast\n").find("barrier"), std::string::npos);
  EXPECT_NE(
      error_of(std::string(kMinimal) + "api: {socket: relative.sock}\n").find("absolute path"),
      std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "api: {socket_mode: \"999\"}\n").find("octal"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "api: {allow: {write: {uids: [no-such-user-pd]}}}\n")
                .find("api.allow.write.uids[0]: no user named \"no-such-user-pd\""),
            std::string::npos);
  EXPECT_NE(
      error_of(std::string(kMinimal) + "api: {allow: {read: {gids: [1, no-such-group-pd]}}}\n")
          .find("api.allow.read.gids[1]: no group named"),
      std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "api: {allow: {read: {gids: [[1]]}}}\n")
                .find("api.allow.read.gids[0]"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "api: {tls: {listen: \"0.0.0.0:1\"}}\n")
                .find("api.tls.cert: is required"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kMinimal) + "log_level: loud\n").find("log_level"),
            std::string::npos);
}

// Allow-lists take names too (resolved at start and reload), e.g. deploy/systemd's policyd group.
TEST(ConfigTest, AllowListsResolveUserAndGroupNames) {
  auto cfg =
      parse_config(std::string(kMinimal) +
                       "api: {allow: {write: {uids: [root, 1234]}, read: {gids: [root, 7]}}}\n",
                   "t.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.error().message();
  EXPECT_EQ(cfg->api.write.uids, (std::set<uid_t>{0, 1234}));
  EXPECT_EQ(cfg->api.read.gids, (std::set<gid_t>{0, 7}));
}

TEST(ConfigTest, HashOuterMapNeedsSlotKey) {
  const std::string msg = error_of(replace(kMinimal, "type: array_of_maps", "type: hash_of_maps"));
  EXPECT_NE(msg.find("maps[0].slot_key: is required"), std::string::npos) << msg;
}

TEST(ConfigTest, DuplicateMapName) {
  std::string twice =
      std::string(kMinimal) + std::string(kMinimal).substr(std::string(kMinimal).find("  - name"));
  const std::string msg = error_of(twice);
  EXPECT_NE(msg.find("declared twice"), std::string::npos) << msg;
}

// A key given twice would silently lose to the first: refused with the second's position,
// at the top level and deep inside a map's template alike.
TEST(ConfigTest, DuplicateKeyIsRefusedWithFileLineAndColumn) {
  std::string top = std::string("history: 4\n") + kMinimal + "history: 8\n";
  std::string msg = error_of(top);
  EXPECT_EQ(
      msg.rfind("test.yaml:12:1: history: duplicate key (first given at line 1, column 1)", 0), 0u)
      << msg;
  msg = error_of(replace(kMinimal, "max_entries: 1024", "max_entries: 1024\n      max_entries: 8"));
  EXPECT_EQ(msg.rfind("test.yaml:9:7: maps[0].inner.max_entries: duplicate key (first given at "
                      "line 8, column 7)",
                      0),
            0u)
      << msg;
  EXPECT_TRUE(parse_config(kMinimal, "test.yaml").ok());  // the control: once is fine
}

// A key that is a mapping or a sequence (`? {a: 1}` or `[x]: ...`) is an error naming its place,
// not an exception out of the parser (tests/fuzz/config_fuzz found the crash: a reload would
// have ended the daemon).
TEST(ConfigTest, ANonScalarKeyIsAnErrorNotACrash) {
  std::string msg = error_of(std::string("[history]: 4\n") + kMinimal);
  EXPECT_EQ(msg.rfind("test.yaml:1:1: : a key must be a plain scalar", 0), 0u) << msg;
  msg = error_of(replace(kMinimal, "max_entries: 1024", "{x: 1}: 1024"));
  EXPECT_NE(msg.find("maps[0].inner: a key must be a plain scalar"), std::string::npos) << msg;
}

// Group member "foo" is pinned as foo_a and foo_b: a plain map "foo_a" would share the pin.
TEST(ConfigTest, PinNameCollisionsAreRefusedNamingBothMaps) {
  const std::string member = std::string(kMinimal).substr(std::string(kMinimal).find("  - name"));
  auto named = [&](const std::string& name, const std::string& group) {
    std::string m = replace(member, "name: acl", "name: " + name);
    return group.empty() ? m
                         : replace(m, "    type: array_of_maps",
                                   "    type: array_of_maps\n    group: " + group);
  };
  const std::string head = "pin_dir: /sys/fs/bpf/pd\nmaps:\n";
  std::string msg = error_of(head + named("foo", "g") + named("foo_a", ""));
  EXPECT_NE(msg.find("maps: pin name \"foo_a\" is used by both map \"foo\" (group \"g\", bank a) "
                     "and map \"foo_a\""),
            std::string::npos)
      << msg;
  msg = error_of(head + named("foo", "g") + named("g_bank", ""));
  EXPECT_NE(msg.find("pin name \"g_bank\" is used by both group \"g\"'s bank map and map "
                     "\"g_bank\""),
            std::string::npos)
      << msg;
  // Controls: two members of one group share its bank; distinct names do not collide.
  EXPECT_TRUE(parse_config(head + named("foo", "g") + named("bar", "g"), "t.yaml").ok());
  EXPECT_TRUE(parse_config(head + named("foo", "g") + named("foo_c", ""), "t.yaml").ok());
}

}  // namespace
}  // namespace policyd::config

namespace policyd::config {
namespace {

// "010" is ten, not eight: a leading zero must not switch to octal. 0x stays hex.
TEST(ConfigTest, IntegersAreDecimalOrHexNeverOctal) {
  Result<DaemonConfig> dec = parse_config(replace(kMinimal, "slots: 64", "slots: 010"), "t.yaml");
  ASSERT_TRUE(dec.ok()) << dec.error().message();
  EXPECT_EQ(dec->engine.maps[0].slots, 10u);
  Result<DaemonConfig> hex = parse_config(replace(kMinimal, "slots: 64", "slots: 0x40"), "t.yaml");
  ASSERT_TRUE(hex.ok()) << hex.error().message();
  EXPECT_EQ(hex->engine.maps[0].slots, 64u);
}

}  // namespace
}  // namespace policyd::config
