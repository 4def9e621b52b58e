// History: the last N committed generations, each as the slots it changed (what they held
// before and after), so that a record costs what its generation changed and a rollback to any
// remembered generation is computed from the generations since (no full snapshots).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <vector>

#include "core/model.h"
#include "core/state_store.h"
#include "util/result.h"

namespace policyd::core {

// The data-plane contents of a slot as pushed, shared by the current state and the history
// records that name it. `digest` names its row in the record (empty without a StateStore).
struct SlotData {
  std::vector<Entry> entries;
  Digest digest;
};
using SlotContents = std::shared_ptr<const SlotData>;
// Every populated slot and what it holds.
using SlotState = std::map<SlotKey, SlotContents>;

// One slot a generation changed; null: no inner map there.
struct SlotDelta {
  SlotKey key;
  SlotContents before;
  SlotContents after;
};

struct GenerationRecord : GenerationMeta {
  std::vector<SlotDelta> changed;
};
using GenerationRecordPtr = std::shared_ptr<const GenerationRecord>;

// What a rollback re-commits: per slot, the contents to install (null: empty the slot).
struct RollbackPlan {
  std::vector<std::pair<SlotKey, SlotContents>> changes;
};

class History {
 public:
  explicit History(uint32_t limit) : limit_(limit) {}

  // Adds the newest generation; the oldest beyond the limit are forgotten.
  void push(GenerationRecordPtr record);
  // Adds a generation older than every one held (loading the record, newest first).
  void push_oldest(GenerationRecordPtr record);
  void set_limit(uint32_t limit);

  [[nodiscard]] uint32_t limit() const { return limit_; }
  [[nodiscard]] const std::deque<GenerationRecordPtr>& records() const { return records_; }
  [[nodiscard]] bool empty() const { return records_.empty(); }
  [[nodiscard]] const GenerationRecord& newest() const { return *records_.front(); }
  // The id of the oldest generation held, 0 when empty.
  [[nodiscard]] uint64_t oldest_id() const;
  // The generation before the newest one, 0 when there is none.
  [[nodiscard]] uint64_t previous_id() const;

  // The changes that turn `current` (the state after the newest generation) into the state
  // right after generation `target`. kNotFound when `target` is not held; empty when the state
  // already matches. Costs the slots the generations after `target` changed.
  [[nodiscard]] Result<RollbackPlan> rollback_to(uint64_t target, const SlotState& current) const;

 private:
  void trim();
  uint32_t limit_;
  std::deque<GenerationRecordPtr> records_;  // newest first
};

// Applies a generation's changes to `state` and returns them as deltas.
std::vector<SlotDelta> apply_changes(SlotState& state,
                                     std::vector<std::pair<SlotKey, SlotContents>> changes);

}  // namespace policyd::core
