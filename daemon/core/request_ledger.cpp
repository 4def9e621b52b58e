// RequestLedger: one map of ids, bounded by the order in which pushes finished.
#include "core/request_ledger.h"

namespace policyd::core {

bool RequestLedger::claim(const std::string& id, PushCallback& done) {
  if (id.empty()) return true;
  std::unique_lock lock(mu_);
  auto it = ids_.find(id);
  if (it == ids_.end()) {
    ids_.emplace(id, State{});
    return true;
  }
  if (it->second.unsettled) {
    const std::string gen = std::to_string(it->second.result.generation);
    Error refused{ErrorCode::kUnavailable, 0,
                  "request id \"" + id + "\": its generation " + gen +
                      " is live but not acknowledged yet (" + it->second.why +
                      "); it is not committed again. Retry later: once policyd can acknowledge "
                      "it, a retry gets generation " +
                      gen};
    lock.unlock();
    done(std::move(refused));
    return false;
  }
  if (!it->second.done) {
    it->second.waiters.push_back(std::move(done));
    return false;
  }
  PushResult replay = it->second.result;
  lock.unlock();
  replay.replayed = true;
  done(replay);
  return false;
}

std::vector<PushCallback> RequestLedger::finish(const std::string& id,
                                                const Result<PushResult>& result) {
  if (id.empty()) return {};
  std::lock_guard lock(mu_);
  auto it = ids_.find(id);
  if (it == ids_.end()) return {};
  std::vector<PushCallback> waiters = std::move(it->second.waiters);
  if (result.ok()) {
    it->second.done = true;
    it->second.result = result.value();
    order_.push_back(id);
    forget_oldest();
  } else {
    ids_.erase(it);  // a failed push may be retried with the same id
  }
  return waiters;
}

std::vector<PushCallback> RequestLedger::finish_unsettled(const std::string& id,
                                                          const PushResult& live,
                                                          const Error& error) {
  if (id.empty()) return {};
  std::lock_guard lock(mu_);
  auto it = ids_.find(id);
  if (it == ids_.end()) return {};
  std::vector<PushCallback> waiters = std::move(it->second.waiters);
  it->second.waiters.clear();
  it->second.unsettled = true;
  it->second.why = error.message();
  it->second.result = live;
  return waiters;
}

void RequestLedger::settle(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = ids_.find(id);
  if (it == ids_.end() || !it->second.unsettled) return;
  it->second.unsettled = false;
  it->second.why.clear();
  it->second.done = true;
  order_.push_back(id);
  forget_oldest();
}

void RequestLedger::remember_recorded(const std::string& id, uint64_t generation) {
  if (id.empty()) return;
  std::lock_guard lock(mu_);
  if (ids_.count(id)) return;
  State st;
  st.done = true;
  st.result.generation = generation;
  ids_.emplace(id, std::move(st));
  order_.push_front(id);  // loaded newest first: each is older than those already held
  forget_oldest();
}

size_t RequestLedger::size() const {
  std::lock_guard lock(mu_);
  return ids_.size();
}

void RequestLedger::forget_oldest() {
  while (order_.size() > remembered_) {
    ids_.erase(order_.front());
    order_.pop_front();
  }
}

}  // namespace policyd::core
