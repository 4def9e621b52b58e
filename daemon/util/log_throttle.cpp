#include "util/log_throttle.h"

namespace policyd::util {

uint64_t LogThrottle::occurred(const std::string& key, Clock::time_point now) {
  std::lock_guard lock(mu_);
  auto it = by_key_.find(key);
  if (it == by_key_.end()) {
    if (by_key_.size() >= kMaxKeys) {
      // Forget the keys that have not been logged for a second: their next occurrence logs anew.
      for (auto e = by_key_.begin(); e != by_key_.end();) {
        e = now - e->second.last_logged >= std::chrono::seconds(1) ? by_key_.erase(e) : ++e;
      }
      if (by_key_.size() >= kMaxKeys) return 0;  // 1,024 keys each logged this second
    }
    by_key_.emplace(key, Entry{now, 0});
    return 1;
  }
  Entry& e = it->second;
  ++e.quiet;
  if (now - e.last_logged < std::chrono::seconds(1)) return 0;
  const uint64_t n = e.quiet;
  e = Entry{now, 0};
  return n;
}

}  // namespace policyd::util
