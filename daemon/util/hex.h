// Hex text for raw keys and values ("0a0b"; input may carry a "0x" prefix).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "util/result.h"

namespace policyd::util {

[[nodiscard]] std::string to_hex(const std::vector<uint8_t>& bytes);
[[nodiscard]] Result<std::vector<uint8_t>> from_hex(const std::string& text);

}  // namespace policyd::util
