// A small JSON writer for policyctl's own --json outputs (counters, dump), where numbers must be
// JSON numbers (the protobuf JSON mapping prints 64-bit integers as strings). Output follows
// the common `{"a": 1, "b": [2, 3]}` spacing on one line. Not thread-safe; one writer per text.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace policyd::ctl {

// `text` as a JSON string literal, quotes included. Control characters, quotes and backslashes
// are escaped; valid UTF-8 passes through; each byte of invalid UTF-8 becomes U+FFFD.
[[nodiscard]] std::string json_quote(std::string_view text);

// Builds one JSON value. Inside an object, call key() before each member's value. Misuse (a
// value without a key in an object, unbalanced end_*) is a programming error and asserts.
class JsonWriter {
 public:
  JsonWriter& begin_object();
  JsonWriter& end_object();
  JsonWriter& begin_array();
  JsonWriter& end_array();
  JsonWriter& key(std::string_view name);
  JsonWriter& value(std::string_view text);
  JsonWriter& value(const char* text) { return value(std::string_view(text)); }
  JsonWriter& value(const std::string& text) { return value(std::string_view(text)); }
  JsonWriter& value(uint64_t n);
  JsonWriter& value(int64_t n);
  JsonWriter& value(uint32_t n) { return value(uint64_t{n}); }
  JsonWriter& value(int32_t n) { return value(int64_t{n}); }
  JsonWriter& value(double d);  // NaN and infinities become null
  JsonWriter& value(bool b);
  JsonWriter& null();

  // The text so far; complete once every begin_* has its end_*.
  [[nodiscard]] const std::string& str() const { return out_; }

 private:
  struct Level {
    bool object = false;
    bool empty = true;
    bool have_key = false;
  };
  void before_value();

  std::string out_;
  std::vector<Level> stack_;
};

}  // namespace policyd::ctl
