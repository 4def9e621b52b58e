// History: bounded, newest first; rollback plans walk back through the deltas.
#include "core/history.h"

#include <string>

namespace policyd::core {
namespace {

bool same(const SlotContents& a, const SlotContents& b) {
  if (a == b) return true;
  if (!a || !b) return false;
  if (!a->digest.empty() && !b->digest.empty()) return a->digest == b->digest;
  return a->entries.size() == b->entries.size() &&
         std::equal(
             a->entries.begin(), a->entries.end(), b->entries.begin(),
             [](const Entry& x, const Entry& y) { return x.key == y.key && x.value == y.value; });
}

}  // namespace

void History::push(GenerationRecordPtr record) {
  records_.push_front(std::move(record));
  trim();
}

void History::push_oldest(GenerationRecordPtr record) {
  records_.push_back(std::move(record));
  trim();
}

void History::set_limit(uint32_t limit) {
  limit_ = limit;
  trim();
}

void History::trim() {
  while (records_.size() > limit_ && !records_.empty()) records_.pop_back();
}

uint64_t History::oldest_id() const { return records_.empty() ? 0 : records_.back()->id; }

uint64_t History::previous_id() const { return records_.size() < 2 ? 0 : records_[1]->id; }

Result<RollbackPlan> History::rollback_to(uint64_t target, const SlotState& current) const {
  // Walking from the newest generation back to `target`, the last `before` seen for a slot is
  // what it held right after `target`.
  std::map<SlotKey, SlotContents> want;
  bool found = false;
  for (const GenerationRecordPtr& rec : records_) {
    if (rec->id == target) {
      found = true;
      break;
    }
    for (const SlotDelta& d : rec->changed) want[d.key] = d.before;
  }
  if (!found) {
    return Error{ErrorCode::kNotFound, 0,
                 "generation " + std::to_string(target) +
                     " is not in the history (it keeps the last " + std::to_string(limit_) + ")"};
  }
  RollbackPlan plan;
  for (auto& [key, contents] : want) {
    auto cur = current.find(key);
    const SlotContents now = cur == current.end() ? nullptr : cur->second;
    if (same(now, contents)) continue;
    plan.changes.emplace_back(key, contents);
  }
  return plan;
}

std::vector<SlotDelta> apply_changes(SlotState& state,
                                     std::vector<std::pair<SlotKey, SlotContents>> changes) {
  std::vector<SlotDelta> deltas;
  deltas.reserve(changes.size());
  for (auto& [key, contents] : changes) {
    auto it = state.find(key);
    SlotContents before = it == state.end() ? nullptr : it->second;
    if (contents) {
      if (it == state.end())
        state.emplace(key, contents);
      else
        it->second = contents;
    } else if (it != state.end()) {
      state.erase(it);
    }
    deltas.push_back(SlotDelta{std::move(key), std::move(before), std::move(contents)});
  }
  return deltas;
}

}  // namespace policyd::core
