// The typed field codec: layouts (packed and natural), text -> bytes for every type, the
// refusals, and bytes -> text back.
#include <gtest/gtest.h>

#include "schema/schema.h"
#include "util/hex.h"

namespace policyd::schema {
namespace {

Layout layout(const std::vector<FieldSpec>& specs, Align align = Align::kPacked) {
  Result<Layout> l = make_layout(specs, align);
  EXPECT_TRUE(l.ok()) << l.error().message();
  return l.ok() ? *l : Layout{};
}

std::string hex_of(const Layout& l, const std::map<std::string, std::string>& values) {
  Result<Bytes> b = encode(l, values, false);
  EXPECT_TRUE(b.ok()) << b.error().message();
  return b.ok() ? util::to_hex(*b) : "";
}

std::string error_of(const Layout& l, const std::map<std::string, std::string>& values) {
  Result<Bytes> b = encode(l, values, false);
  EXPECT_FALSE(b.ok());
  return b.ok() ? "" : b.error().message();
}

TEST(SchemaTest, PackedAndNaturalLayouts) {
  const std::vector<FieldSpec> specs = {{"a", "u8"}, {"b", "u32"}, {"c", "u16"}};
  Layout packed = layout(specs);
  EXPECT_EQ(packed.size, 7u);
  EXPECT_EQ(packed.fields[1].offset, 1u);
  Layout natural = layout(specs, Align::kNatural);
  EXPECT_EQ(natural.fields[1].offset, 4u);
  EXPECT_EQ(natural.fields[2].offset, 8u);
  EXPECT_EQ(natural.size, 12u);  // rounded up to the widest alignment
}

TEST(SchemaTest, EncodesEveryType) {
  Layout l = layout({{"u8", "u8"},
                     {"u16", "u16"},
                     {"u64", "u64"},
                     {"p", "be16"},
                     {"n", "be32"},
                     {"ip", "ipv4"},
                     {"ip6", "ipv6"},
                     {"mac", "mac"},
                     {"raw", "bytes[2]"},
                     {"", "pad[1]"}});
  EXPECT_EQ(hex_of(l, {{"u8", "255"},
                       {"u16", "0x1234"},
                       {"u64", "1"},
                       {"p", "443"},
                       {"n", "1"},
                       {"ip", "10.0.0.1"},
                       {"ip6", "::1"},
                       {"mac", "aa:bb:cc:dd:ee:ff"},
                       {"raw", "beef"}}),
            "ff"
            "3412"
            "0100000000000000"
            "01bb"
            "00000001"
            "0a000001"
            "00000000000000000000000000000001"
            "aabbccddeeff"
            "beef"
            "00");
}

TEST(SchemaTest, PrefixesAreLpmKeys) {
  Layout v4 = layout({{"prefix", "ipv4_prefix"}});
  EXPECT_EQ(hex_of(v4, {{"prefix", "10.0.0.0/8"}}), "080000000a000000");
  Layout v6 = layout({{"prefix", "ipv6_prefix"}});
  EXPECT_EQ(hex_of(v6, {{"prefix", "2001:db8::/32"}}), "2000000020010db8000000000000000000000000");
  EXPECT_NE(error_of(v4, {{"prefix", "10.0.0.1/8"}}).find("host bits"), std::string::npos);
  EXPECT_NE(error_of(v4, {{"prefix", "10.0.0.0/33"}}).find("prefix length"), std::string::npos);
  EXPECT_NE(error_of(v4, {{"prefix", "10.0.0/8"}}).find("not an IPv4 address"), std::string::npos);
  EXPECT_NE(error_of(v4, {{"prefix", "10.0.0.0"}}).find("not a prefix"), std::string::npos);
}

TEST(SchemaTest, IntegersAreDecimalOrHexNeverOctal) {
  Layout l = layout({{"v", "u16"}});
  EXPECT_EQ(hex_of(l, {{"v", "010"}}), "0a00");
  EXPECT_EQ(hex_of(l, {{"v", "0x10"}}), "1000");
  EXPECT_NE(error_of(l, {{"v", "65536"}}).find("out of range (max 65535)"), std::string::npos);
  EXPECT_NE(error_of(l, {{"v", "-1"}}).find("not an unsigned integer"), std::string::npos);
  EXPECT_NE(error_of(l, {{"v", "12abc"}}).find("not an unsigned integer"), std::string::npos);
}

TEST(SchemaTest, RefusalsNameTheField) {
  Layout l = layout({{"mac", "mac"}, {"raw", "bytes[4]"}, {"", "pad[2]"}});
  EXPECT_NE(error_of(l, {{"mac", "aa:bb"}}).find("mac: "), std::string::npos);
  EXPECT_NE(error_of(l, {{"raw", "beef"}}).find("raw: expected 4 bytes"), std::string::npos);
  EXPECT_NE(error_of(l, {{"nope", "1"}}).find("unknown field \"nope\" (fields: mac, raw)"),
            std::string::npos);
  Result<Bytes> missing = encode(l, {{"mac", "aa:bb:cc:dd:ee:ff"}}, true);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message().find("missing field \"raw\""), std::string::npos);
}

TEST(SchemaTest, LayoutRefusals) {
  EXPECT_NE(make_layout({{"a", "ipv5"}}, Align::kPacked)
                .error()
                .message()
                .find("[0].type: unknown type \"ipv5\""),
            std::string::npos);
  EXPECT_NE(make_layout({{"a", "u8"}, {"a", "u8"}}, Align::kPacked)
                .error()
                .message()
                .find("duplicate field"),
            std::string::npos);
  EXPECT_NE(make_layout({{"a", "ipv4", true}}, Align::kPacked)
                .error()
                .message()
                .find("counters must be u32 or u64"),
            std::string::npos);
}

TEST(SchemaTest, DecodeIsTheInverse) {
  Layout l = layout({{"prefix", "ipv4_prefix"}, {"port", "be16"}, {"mac", "mac"}, {"", "pad[2]"}});
  const std::map<std::string, std::string> values = {
      {"prefix", "192.168.0.0/16"}, {"port", "8080"}, {"mac", "01:02:03:04:05:06"}};
  Result<Bytes> b = encode(l, values, true);
  ASSERT_TRUE(b.ok()) << b.error().message();
  EXPECT_EQ(decode(l, *b), values);
}

}  // namespace
}  // namespace policyd::schema
