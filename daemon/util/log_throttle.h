// Says when a repeated log line should be written: at most once per second per key, with the
// number of occurrences since the last line. Keeps at most kMaxKeys keys (forgets the quiet ones
// first), so a stream of new keys cannot grow it. Thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace policyd::util {

class LogThrottle {
 public:
  static constexpr size_t kMaxKeys = 1024;
  using Clock = std::chrono::steady_clock;

  // The number of occurrences (this one included) to report now, or 0 when this one stays
  // quiet.
  [[nodiscard]] uint64_t occurred(const std::string& key, Clock::time_point now);

 private:
  struct Entry {
    Clock::time_point last_logged;
    uint64_t quiet = 0;  // occurrences since then
  };
  std::mutex mu_;
  std::map<std::string, Entry> by_key_;
};

}  // namespace policyd::util
