// Unit tests for ctl/json: string escaping (control characters, quotes, invalid UTF-8) and the
// writer's separators, which `policyctl counters --json` output depends on.
#include "ctl/json.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

namespace policyd::ctl {
namespace {

using std::string_literals::operator""s;

TEST(JsonQuoteTest, PlainTextIsQuoted) {
  EXPECT_EQ(json_quote(""), "\"\"");
  EXPECT_EQ(json_quote("acl"), "\"acl\"");
  EXPECT_EQ(json_quote("10.0.0.0/8"), "\"10.0.0.0/8\"");  // '/' needs no escape
}

TEST(JsonQuoteTest, EscapesQuotesBackslashesAndControlCharacters) {
  EXPECT_EQ(json_quote("a\"b\\c"), R"("a\"b\\c")");
  EXPECT_EQ(json_quote("\b\f\n\r\t"), R"("\b\f\n\r\t")");
  EXPECT_EQ(json_quote("\x01\x1f\x7f"), R"("\u0001\u001f\u007f")");
  EXPECT_EQ(json_quote("nul\0byte"s), R"("nul\u0000byte")");
}

TEST(JsonQuoteTest, ValidUtf8PassesThrough) {
  EXPECT_EQ(json_quote("caf\xc3\xa9"), "\"caf\xc3\xa9\"");            // é
  EXPECT_EQ(json_quote("\xe2\x82\xac"), "\"\xe2\x82\xac\"");          // €
  EXPECT_EQ(json_quote("\xf0\x9f\x98\x80"), "\"\xf0\x9f\x98\x80\"");  // U+1F600
}

TEST(JsonQuoteTest, InvalidUtf8BecomesReplacementCharacters) {
  EXPECT_EQ(json_quote("\xff"), R"("\ufffd")");
  EXPECT_EQ(json_quote("a\xc3"), R"("a\ufffd")");                              // truncated sequence
  EXPECT_EQ(json_quote("\xc0\xaf"), R"("\ufffd\ufffd")");                      // overlong '/'
  EXPECT_EQ(json_quote("\xed\xa0\x80"), R"("\ufffd\ufffd\ufffd")");            // UTF-16 surrogate
  EXPECT_EQ(json_quote("\xf4\x90\x80\x80"), R"("\ufffd\ufffd\ufffd\ufffd")");  // > U+10FFFF
  EXPECT_EQ(json_quote("\xe2\x82x"), R"("\ufffd\ufffdx")");
}

TEST(JsonWriterTest, CountersShape) {
  JsonWriter w;
  w.begin_object().key("counters").begin_array();
  w.begin_object()
      .key("map")
      .value("acl")
      .key("slot")
      .value("0")
      .key("field")
      .value("hits")
      .key("drained")
      .value(uint64_t{18446744073709551615u})
      .key("live")
      .value(uint64_t{0})
      .end_object();
  w.begin_object().key("map").value("ports").key("slot").value("0x01000000").end_object();
  w.end_array().end_object();
  EXPECT_EQ(w.str(), R"({"counters": [{"map": "acl", "slot": "0", "field": "hits", )"
                     R"("drained": 18446744073709551615, "live": 0}, )"
                     R"({"map": "ports", "slot": "0x01000000"}]})");
}

TEST(JsonWriterTest, EmptyContainersAndScalars) {
  JsonWriter w;
  w.begin_object().key("a").begin_array().end_array().key("o").begin_object().end_object();
  w.key("t").value(true).key("f").value(false).key("n").null();
  w.key("i").value(int64_t{-5}).key("u32").value(uint32_t{7}).key("i32").value(int32_t{-7});
  w.end_object();
  EXPECT_EQ(
      w.str(),
      R"({"a": [], "o": {}, "t": true, "f": false, "n": null, "i": -5, "u32": 7, "i32": -7})");
}

TEST(JsonWriterTest, Doubles) {
  JsonWriter w;
  w.begin_array()
      .value(1.5)
      .value(0.1)
      .value(2.0)
      .value(std::nan(""))
      .value(std::numeric_limits<double>::infinity())
      .end_array();
  EXPECT_EQ(w.str(), "[1.5, 0.1, 2, null, null]");
}

TEST(JsonWriterTest, KeysAreEscaped) {
  JsonWriter w;
  w.begin_object().key("a\"b").value("x\ny").end_object();
  EXPECT_EQ(w.str(), R"({"a\"b": "x\ny"})");
}

TEST(JsonWriterTest, NestedArrays) {
  JsonWriter w;
  w.begin_array()
      .begin_array()
      .value(uint64_t{1})
      .end_array()
      .begin_array()
      .end_array()
      .value("s")
      .end_array();
  EXPECT_EQ(w.str(), R"([[1], [], "s"])");
}

TEST(JsonWriterTest, TopLevelScalar) {
  JsonWriter w;
  w.value("only");
  EXPECT_EQ(w.str(), R"("only")");
}

}  // namespace
}  // namespace policyd::ctl
