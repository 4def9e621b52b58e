// Committer start-up recovery (G8): the record, the drains a previous run left pinned, and the
// data plane brought to the recorded generation.
#include <spdlog/spdlog.h>

#include "core/committer_impl.h"
#include "util/clock.h"

namespace policyd::core {

// Loads the record, finishes drains left pinned, and brings the data plane to the recorded
// generation: untouched when the adopted maps match it, re-committed (same id) otherwise.
Status Committer::Impl::recover() {
  POLICYD_ASSIGN_OR_RETURN(std::optional<StoredState> stored, store->load());
  if (!stored) return adopt_without_record();
  if (!stored->pin_dir.empty() && stored->pin_dir != engine->pin_dir()) {
    return failed_precondition(
        store->db_path() + " records the maps of pin_dir " + stored->pin_dir +
        ", but the config's pin_dir is " + engine->pin_dir() +
        ": a state_dir belongs to one pin_dir. Give this config its own state_dir, or set "
        "pin_dir back");
  }
  POLICYD_TRY(load_history(*stored));
  std::map<CounterKey, uint64_t> totals;
  for (const StoredCounter& c : stored->drained) totals[{c.map, c.slot, c.field}] = c.total;
  engine->restore_drained_totals(std::move(totals));
  POLICYD_TRY(engine->recover_drain_pins(
      {stored->drained_inner_ids.begin(), stored->drained_inner_ids.end()}));

  const uint64_t id = stored->generation;
  POLICYD_ASSIGN_OR_RETURN(Generation repair, repair_changes(stored->slots));
  const std::string label = stored->history.empty() ? "" : stored->history.front().label;
  if (repair.changes.empty()) {
    engine->set_generation(id, label);
    spdlog::info(
        "adopted generation {}: the pinned maps match its record ({} slot(s)); the "
        "data plane was not touched",
        id, stored->slots.size());
  } else {
    const size_t differ = repair.changes.size();
    POLICYD_ASSIGN_OR_RETURN(BuiltGeneration rebuilt, engine->build(repair));
    Result<CommitReport> report = engine->restore(std::move(rebuilt), id);
    if (!report.ok()) return report.error().wrap("restore generation " + std::to_string(id));
    engine->set_generation(id, label);
    spdlog::warn(
        "restored generation {}: {} slot(s) differed from its record (empty bpffs "
        "after a reboot, or a crash in the middle of a commit)",
        id, differ);
  }
  read_live_ids();
  for (const auto& [key, contents] : state) slots_used[key.first] += 1;
  drain_and_publish();
  // The record learns the inner ids of re-created slots, and what the drains above counted.
  RecordUpdate up;
  for (const StoredSlot& s : stored->slots) {
    auto live = live_ids.find({s.map, s.slot});
    const uint32_t now = live == live_ids.end() ? 0 : live->second;
    if (now != s.inner_id && now != 0) up.slots.push_back({s.map, s.slot, s.contents, now});
  }
  add_drain_state(up);
  POLICYD_TRY(store->write(up));
  written();
  return {};
}

// No record yet (first start, or the state directory was moved away): the pinned maps are
// taken as they are and recorded.
Status Committer::Impl::adopt_without_record() {
  POLICYD_TRY(engine->recover_drain_pins({}));
  POLICYD_TRY(load_adopted_state());
  if (!state.empty()) {
    spdlog::warn("no record in {}: adopted the pinned maps as they are ({} slot(s))", store->dir(),
                 state.size());
  }
  RecordUpdate up;
  up.pin_dir = engine->pin_dir();
  up.generation = engine->current_generation();
  auto rec = std::make_shared<GenerationRecord>();
  rec->id = engine->current_generation();
  rec->label = "adopted";
  rec->committed_unix_ms = util::unix_ms_now();
  StoredGeneration g;
  for (auto& [key, contents] : state) {
    const InnerTemplate& t = engine->maps().at(key.first).inner;
    auto e = std::make_shared<const EncodedContents>(
        encode_contents(contents->entries, t.key_size, t.value_size));
    contents = std::make_shared<const SlotData>(SlotData{contents->entries, e->digest});
    rec->changed.push_back(SlotDelta{key, nullptr, contents});
    g.slots.push_back({key.first, key.second, e->digest, {}});
    up.slots.push_back({key.first, key.second, e->digest, live_ids[key]});
    up.contents.push_back(std::move(e));
  }
  if (!state.empty()) {
    static_cast<GenerationMeta&>(g) = *rec;
    up.generations.push_back(std::move(g));
    history.push(rec);
  }
  drain_and_publish();
  add_drain_state(up);
  POLICYD_TRY(store->write(up));
  written();
  return {};
}

// The current state and history from the record; each contents row is read once.
Status Committer::Impl::load_history(const StoredState& stored) {
  std::map<Digest, SlotContents> loaded;
  auto contents_of = [&](const Digest& digest) -> Result<SlotContents> {
    if (digest.empty()) return SlotContents{};
    auto it = loaded.find(digest);
    if (it == loaded.end()) {
      POLICYD_ASSIGN_OR_RETURN(std::vector<Entry> entries, store->get_contents(digest));
      it = loaded
               .emplace(digest,
                        std::make_shared<const SlotData>(SlotData{std::move(entries), digest}))
               .first;
    }
    return it->second;
  };
  for (const StoredSlot& s : stored.slots) {
    POLICYD_ASSIGN_OR_RETURN(SlotContents c, contents_of(s.contents));
    state.emplace(SlotKey{s.map, s.slot}, std::move(c));
  }
  size_t kept = 0;
  for (const StoredGeneration& g : stored.history) {
    // A retried push after the restart is answered from the record (idempotency survives),
    // also for generations beyond the history's bound.
    ledger.remember_recorded(g.request_id, g.id);
    if (kept++ >= history.limit()) continue;
    auto rec = std::make_shared<GenerationRecord>();
    static_cast<GenerationMeta&>(*rec) = g;
    for (const SlotWrite& w : g.slots) {
      POLICYD_ASSIGN_OR_RETURN(SlotContents after, contents_of(w.contents));
      POLICYD_ASSIGN_OR_RETURN(SlotContents before, contents_of(w.previous));
      rec->changed.push_back(SlotDelta{{w.map, w.slot}, std::move(before), std::move(after)});
    }
    history.push_oldest(std::move(rec));
  }
  return {};
}

// The changes that bring the adopted maps to the recorded slots: a slot is right when the
// inner map the record names (by kernel id) is the one installed there.
Result<Generation> Committer::Impl::repair_changes(const std::vector<StoredSlot>& recorded) {
  std::map<SlotKey, const StoredSlot*> want;
  for (const StoredSlot& s : recorded) {
    if (!engine->maps().count(s.map)) {
      spdlog::warn("the record names map \"{}\", which the config no longer has; ignored", s.map);
      continue;
    }
    want[{s.map, s.slot}] = &s;
  }
  Generation repair;
  repair.label = "restore";
  for (const auto& [name, cfg] : engine->maps()) {
    POLICYD_ASSIGN_OR_RETURN(std::vector<SlotInfo> live, engine->slots(name));
    for (const SlotInfo& info : live) {
      auto it = want.find({name, info.slot});
      if (it == want.end()) {
        repair.changes.push_back(SlotChange{name, info.slot, true, {}});
      } else if (it->second->inner_id == info.map_id) {
        want.erase(it);  // the recorded inner map itself: nothing to do
      }
    }
  }
  for (const auto& [key, slot] : want) {
    repair.changes.push_back(SlotChange{key.first, key.second, false, state.at(key)->entries});
  }
  return repair;
}

void Committer::Impl::read_live_ids() {
  live_ids.clear();
  for (const auto& [name, cfg] : engine->maps()) {
    Result<std::vector<SlotInfo>> slots = engine->slots(name);
    if (!slots.ok()) continue;
    for (const SlotInfo& s : *slots) live_ids[{name, s.slot}] = s.map_id;
  }
}

// Reads what adopted slots hold, so that rollback diffs start from the truth.
// A slot that cannot be read is an error: recorded without it, the next start would take
// it for a stray slot and delete it.
Status Committer::Impl::load_adopted_state() {
  for (const auto& [name, cfg] : engine->maps()) {
    POLICYD_ASSIGN_OR_RETURN(std::vector<SlotInfo> slots, engine->slots(name));
    for (const SlotInfo& s : slots) {
      Result<DrainRecord> dump = engine->dump_slot(name, s.slot);
      if (!dump.ok()) return dump.error().wrap("read adopted map \"" + name + "\"");
      std::vector<Entry> entries;
      for (DrainedEntry& e : dump->entries) {
        entries.push_back(Entry{std::move(e.key), std::move(e.values.front())});
      }
      state[{name, s.slot}] = std::make_shared<const SlotData>(SlotData{std::move(entries), {}});
      live_ids[{name, s.slot}] = s.map_id;
      slots_used[name] += 1;
    }
  }
  return {};
}

}  // namespace policyd::core
