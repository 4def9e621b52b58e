// RequestLedger: what policyd remembers of request ids, so that a retried push gets the
// original answer (and waits for it while the first is still in the pipeline). The last
// `remembered` successful ids are kept; a failed push forgets its id, so it may be retried.
// A push whose generation went live without an ack (its barrier or its record failed) is
// neither: its id stays unsettled, retries are refused without committing it again, and once
// the committer settles it (a later barrier waited, the record caught up) retries get its
// generation. Thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "util/result.h"

namespace policyd::core {

struct PushResult {
  uint64_t generation = 0;
  uint32_t batch_size = 0;  // generations committed under the same barrier
  bool replayed = false;    // the result of an earlier push with the same request_id
  uint64_t restored = 0;    // rollbacks: the generation whose state was re-committed
};

using PushCallback = std::function<void(Result<PushResult>)>;

class RequestLedger {
 public:
  explicit RequestLedger(size_t remembered) : remembered_(remembered) {}

  // Takes `done` unless the push is new: true when the caller must run the push. When the id
  // is known, `done` gets the original result (now, or when the push in flight finishes).
  [[nodiscard]] bool claim(const std::string& id, PushCallback& done);
  // Ends the push of `id` with `result`: returns the retries that waited for it, each to be
  // called with the result marked replayed.
  [[nodiscard]] std::vector<PushCallback> finish(const std::string& id,
                                                 const Result<PushResult>& result);
  // Ends the push of `id` whose generation is live but not acknowledged: returns the retries
  // that waited for it, each to be called with `error` (as the push itself). Later retries get
  // kUnavailable naming `live.generation` until settle(), then `live`, marked replayed.
  // Nothing is kept for an empty id.
  [[nodiscard]] std::vector<PushCallback> finish_unsettled(const std::string& id,
                                                           const PushResult& live,
                                                           const Error& error);
  // The unsettled push of `id` is acknowledgeable now: retries get its generation.
  void settle(const std::string& id);
  // An id the durable record names (loaded newest first): retries get `generation`.
  void remember_recorded(const std::string& id, uint64_t generation);
  [[nodiscard]] size_t size() const;

 private:
  struct State {
    bool done = false;
    bool unsettled = false;  // live, not acknowledged: result.generation is live
    std::string why;         // unsettled: what failed
    PushResult result;
    std::vector<PushCallback> waiters;
  };
  void forget_oldest();

  size_t remembered_;
  mutable std::mutex mu_;
  std::map<std::string, State> ids_;
  std::deque<std::string> order_;  // done ids, oldest first, for forgetting
};

}  // namespace policyd::core
