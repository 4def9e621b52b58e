// Hex text for raw keys and values ("0a0b"; input may carry a "0x" prefix).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "util/result.h"

namespace policyd::util {

// The base to parse an integer's text in: 16 after "0x", else 10. A leading zero is not octal
// (strtoull's base 0 would read "010" as 8).
[[nodiscard]] inline int integer_base(const std::string& text) {
  return text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X') ? 16 : 10;
}

[[nodiscard]] std::string to_hex(const std::vector<uint8_t>& bytes);
[[nodiscard]] Result<std::vector<uint8_t>> from_hex(const std::string& text);

}  // namespace policyd::util
