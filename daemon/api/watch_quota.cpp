#include "api/watch_quota.h"

namespace policyd::api {

Status WatchQuota::acquire(const std::string& owner) {
  std::lock_guard lock(mu_);
  uint32_t& n = held_[owner];
  if (n >= limit_) {
    const uint32_t limit = limit_;
    if (n == 0) held_.erase(owner);
    return Error{ErrorCode::kResourceExhausted, 0,
                 owner + " holds api.max_watchers_per_uid (" + std::to_string(limit) +
                     ") WatchEvents streams"};
  }
  ++n;
  return {};
}

void WatchQuota::release(const std::string& owner) {
  std::lock_guard lock(mu_);
  auto it = held_.find(owner);
  if (it != held_.end() && --it->second == 0) held_.erase(it);
}

void WatchQuota::set_limit(uint32_t per_owner) {
  std::lock_guard lock(mu_);
  limit_ = per_owner;
}

}  // namespace policyd::api
