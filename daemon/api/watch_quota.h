// How many WatchEvents streams each caller may hold at once (api.max_watchers_per_uid). Shared
// by the services of all access levels, so the count is per caller whatever server serves it.
// Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "util/result.h"

namespace policyd::api {

class WatchQuota {
 public:
  explicit WatchQuota(uint32_t per_owner) : limit_(per_owner) {}

  // One more stream for `owner` ("uid 1000"), or RESOURCE_EXHAUSTED naming the limit.
  [[nodiscard]] Status acquire(const std::string& owner);
  void release(const std::string& owner);
  // A reload may change the limit; streams held above a lowered one keep running.
  void set_limit(uint32_t per_owner);

 private:
  std::mutex mu_;
  uint32_t limit_;
  std::map<std::string, uint32_t> held_;
};

}  // namespace policyd::api
