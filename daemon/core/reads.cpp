// Reads beside the committer: a snapshot, then the inner maps it names, opened by id.
#include "core/reads.h"

#include <cerrno>
#include <optional>

#include "core/drain.h"
#include "kernel/map.h"

namespace policyd::core {
namespace {

bool vanished(const Error& e) { return e.sys_errno == ENOENT; }

Error gave_up(const std::string& what) {
  return Error{ErrorCode::kUnavailable, 0,
               what + " changed under " + std::to_string(kReadAttempts) +
                   " reads in a row (commits replaced the maps being read); retry"};
}

// One attempt: nullopt when a map of the snapshot was freed before it could be opened.
Result<std::optional<CounterReading>> read_counters_once(const Engine& engine,
                                                         const std::string& only) {
  POLICYD_ASSIGN_OR_RETURN(CounterSnapshot snap, engine.counter_snapshot(only));
  CounterReading out;
  for (const auto& [key, total] : snap.drained) {
    out.table[{key.map, key.slot}].drained[key.field] += total;
  }
  for (const CounterSource& s : snap.sources) {
    Result<kernel::UniqueFd> fd = kernel::map_fd_by_id(s.id);
    if (!fd.ok()) {
      if (vanished(fd.error())) return std::optional<CounterReading>{};
      return fd.error();
    }
    const OuterMapConfig& cfg = snap.maps.at(s.map);
    POLICYD_ASSIGN_OR_RETURN(auto totals, read_counter_totals(fd->get(), cfg));
    SlotCounters& slot = out.table[{s.map, s.slot}];
    auto& into = s.live ? slot.live : slot.drained;
    for (const auto& [field, value] : totals) into[field] += value;
  }
  out.maps = std::move(snap.maps);
  return std::optional<CounterReading>{std::move(out)};
}

}  // namespace

Result<CounterReading> read_counters(const Engine& engine, const std::string& only) {
  for (size_t attempt = 0; attempt < kReadAttempts; ++attempt) {
    POLICYD_ASSIGN_OR_RETURN(std::optional<CounterReading> r, read_counters_once(engine, only));
    if (r) return *std::move(r);
  }
  return gave_up(only.empty() ? "the counters" : "the counters of map \"" + only + "\"");
}

Result<DrainRecord> read_slot(const Engine& engine, const std::string& map, const Bytes& slot) {
  std::string what;
  for (size_t attempt = 0; attempt < kReadAttempts; ++attempt) {
    POLICYD_ASSIGN_OR_RETURN(SlotSnapshot snap, engine.slot_snapshot(map, slot));
    what = describe(snap.config, slot);
    if (snap.id == 0) return Error{ErrorCode::kNotFound, 0, what + " is empty"};
    Result<kernel::UniqueFd> fd = kernel::map_fd_by_id(snap.id);
    if (!fd.ok()) {
      if (vanished(fd.error())) continue;
      return fd.error();
    }
    InnerMap inner;
    inner.fd = std::move(fd).value();
    inner.id = snap.id;
    inner.map = map;
    inner.slot = slot;
    inner.installed_by = snap.installed_by;
    return read_inner(inner, snap.config);
  }
  return gave_up(what);
}

Result<CounterReading> Engine::read_counters(const std::string& only) const {
  return core::read_counters(*this, only);
}

Result<DrainRecord> Engine::read_slot(const std::string& map, const Bytes& slot) const {
  return core::read_slot(*this, map, slot);
}

}  // namespace policyd::core
