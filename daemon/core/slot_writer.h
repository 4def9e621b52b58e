// SlotWriter: writes outer-map slots the way this kernel makes cheapest (the barrier strategy),
// one *round* at a time. Every successful outer-map write makes the kernel wait for a grace
// period; a round issues all its writes at once (one batch call per outer map and operation, or
// one concurrent single call per slot) so the waits overlap and the round costs about one grace
// period. Also provides the explicit barrier for commits that write no outer-map slot.
// Not thread-safe: the committer owns it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/model.h"
#include "kernel/unique_fd.h"
#include "util/result.h"
#include "util/worker_pool.h"

namespace policyd::core {

struct OuterWrite {
  int outer_fd = -1;
  bool array = true;  // ARRAY_OF_MAPS (no delete batch) or HASH_OF_MAPS
  Bytes slot;
  int inner_fd = -1;  // -1: delete the slot
  std::string what;   // "map \"acl\" slot 3", for errors
};

struct RoundResult {
  std::vector<bool> applied;   // per write, in input order
  std::optional<Error> error;  // the first failure, naming its slot
};

// The committer's own accounting, so tests can assert "one round" without timing anything.
struct WriterStats {
  uint64_t rounds = 0;         // apply() calls that wrote something
  uint64_t waiting_calls = 0;  // outer-map syscalls issued (each waits one grace period)
  uint64_t last_round_calls = 0;
  // ceil(calls / pool size) of the last round: 1 when every call ran at the same time.
  uint64_t last_round_depth = 0;
  uint64_t barriers = 0;  // explicit barriers
};

class SlotWriter {
 public:
  // `pool` must outlive the writer; its size bounds how many waits overlap.
  static Result<std::unique_ptr<SlotWriter>> create(Strategy strategy, util::WorkerPool& pool);

  // Applies every write in one round. Writes to the same outer map must name distinct slots.
  [[nodiscard]] RoundResult apply(const std::vector<OuterWrite>& writes);
  // Waits one grace period by writing slot 0 of a private one-slot ARRAY_OF_MAPS.
  [[nodiscard]] Status barrier();

  [[nodiscard]] Strategy strategy() const { return strategy_; }
  [[nodiscard]] const WriterStats& stats() const { return stats_; }
  // Ids of the private barrier maps (for leak accounting).
  [[nodiscard]] std::vector<uint32_t> own_map_ids() const;

 private:
  SlotWriter(Strategy strategy, util::WorkerPool& pool) : strategy_(strategy), pool_(pool) {}

  Strategy strategy_;
  util::WorkerPool& pool_;
  kernel::UniqueFd barrier_inner_;
  kernel::UniqueFd barrier_outer_;
  WriterStats stats_;
};

}  // namespace policyd::core
