// Hex encoding and decoding.
#include "util/hex.h"

namespace policyd::util {
namespace {

int nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string to_hex(const std::vector<uint8_t>& bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s;
  s.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    s.push_back(kDigits[b >> 4]);
    s.push_back(kDigits[b & 0xf]);
  }
  return s;
}

Result<std::vector<uint8_t>> from_hex(const std::string& text) {
  std::string t = text;
  if (t.size() >= 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X')) t = t.substr(2);
  if (t.size() % 2 != 0) {
    return invalid_argument("\"" + text + "\" has an odd number of hex digits");
  }
  std::vector<uint8_t> out;
  out.reserve(t.size() / 2);
  for (size_t i = 0; i < t.size(); i += 2) {
    int hi = nibble(t[i]);
    int lo = nibble(t[i + 1]);
    if (hi < 0 || lo < 0) return invalid_argument("\"" + text + "\" is not hex");
    out.push_back(static_cast<uint8_t>(hi << 4 | lo));
  }
  return out;
}

}  // namespace policyd::util
