// Time as policyd measures and records it: elapsed milliseconds on the monotonic clock (phase
// timings) and wall-clock Unix milliseconds (what records and events carry).
#pragma once

#include <chrono>
#include <cstdint>

namespace policyd::util {

[[nodiscard]] inline double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

[[nodiscard]] inline int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace policyd::util
