// Unit tests for util/hex: the text of raw keys and values (lower case, "0x" accepted on input)
// and the integer base rule (a leading zero is decimal, not octal).
#include "util/hex.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace policyd::util {
namespace {

TEST(HexTest, EncodesLowerCaseTwoDigitsPerByte) {
  EXPECT_EQ(to_hex({}), "");
  EXPECT_EQ(to_hex({0x00, 0x0a, 0xff, 0xC0}), "000affc0");
}

TEST(HexTest, DecodesEitherCaseWithOrWithoutPrefix) {
  const std::vector<uint8_t> want = {0x0a, 0x0b, 0xff};
  for (const std::string text : {"0a0bff", "0A0BFF", "0x0a0bff", "0X0a0bFF"}) {
    Result<std::vector<uint8_t>> got = from_hex(text);
    ASSERT_TRUE(got.ok()) << text << ": " << got.error().message();
    EXPECT_EQ(*got, want) << text;
  }
  Result<std::vector<uint8_t>> empty = from_hex("");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(HexTest, RefusesOddLengthAndNonHexNamingTheText) {
  Result<std::vector<uint8_t>> odd = from_hex("0x abc");
  ASSERT_FALSE(odd.ok());
  EXPECT_EQ(odd.error().code, ErrorCode::kInvalidArgument);
  Result<std::vector<uint8_t>> odd2 = from_hex("abc");
  ASSERT_FALSE(odd2.ok());
  EXPECT_EQ(odd2.error().message(), "\"abc\" has an odd number of hex digits");
  Result<std::vector<uint8_t>> bad = from_hex("zz");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message(), "\"zz\" is not hex");
}

TEST(HexTest, RoundTripsEveryByte) {
  std::vector<uint8_t> all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<uint8_t>(b));
  Result<std::vector<uint8_t>> back = from_hex(to_hex(all));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, all);
}

TEST(IntegerBaseTest, HexOnlyAfterZeroXNeverOctal) {
  EXPECT_EQ(integer_base("0x10"), 16);
  EXPECT_EQ(integer_base("0X10"), 16);
  EXPECT_EQ(integer_base("010"), 10);
  EXPECT_EQ(integer_base("0x"), 10);  // no digits after the prefix: not a hex number
  EXPECT_EQ(integer_base("42"), 10);
}

}  // namespace
}  // namespace policyd::util
