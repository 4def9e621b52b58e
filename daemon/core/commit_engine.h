// CommitEngine: what the committer needs of an engine, and nothing more. The kernel engine
// (core/engine.h) is the one production implementation; the committer's unit tests drive the
// committer's own logic (ordering, group commit, request ids, history, rollback, recovery) on
// a fake behind this interface, without root (tests/unit/fake_engine.h).
//
// Threading is the kernel engine's: build() and the readers (state_snapshot(),
// read_counters(), read_slot()) may run on any thread; every other call belongs to the one
// committer thread.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/builder.h"
#include "core/inner_pool.h"
#include "core/model.h"
#include "core/slot_writer.h"
#include "util/result.h"

namespace policyd::core {

struct CommitReport {
  uint64_t first_generation = 0;  // ids assigned to the batch, in acceptance order
  uint64_t last_generation = 0;
  size_t slots_written = 0;  // outer-map slot writes, banks included
  size_t rounds = 0;         // write rounds + explicit barriers this commit waited for
  double write_ms = 0;       // outer-map writes (their waits included)
  double barrier_ms = 0;     // explicit barrier (atomic groups only)
  // Set when the explicit barrier after an atomic-group flip failed. The batch is live (the
  // flip cannot be taken back without another unwaited flip), but no grace period is known to
  // have passed: not acknowledgeable, and what it replaced is held back from drain() until a
  // later commit has waited successfully.
  std::optional<Error> barrier_failed;
};

struct SlotInfo {
  Bytes slot;
  uint32_t map_id = 0;
  uint64_t installed_by = 0;
};

struct CounterKey {
  std::string map;
  Bytes slot;
  std::string field;
  auto operator<=>(const CounterKey&) const = default;
};

// One outer map as a reader sees it at one instant (state_snapshot()).
struct MapSnapshot {
  OuterMapConfig config;
  std::string pin;             // the map's pin (an atomic-group member: its bank a)
  std::vector<SlotInfo> live;  // the data plane's view (a group member: the active bank)
};
// The data plane at one instant: the generation the engine last committed (its slots carry
// installed_by up to it), that generation's label, and every map in name order.
struct StateSnapshot {
  uint64_t generation = 0;
  std::string label;
  std::vector<MapSnapshot> maps;
};

// Counter totals of one slot: `drained`, what its replaced inner maps held (those whose drain
// has not read them yet are read as they are); `live`, what its live inner map holds now.
struct SlotCounters {
  std::map<std::string, uint64_t> drained;
  std::map<std::string, uint64_t> live;
};
using CounterTable = std::map<std::pair<std::string, Bytes>, SlotCounters>;

struct CounterReading {
  CounterTable table;
  MapConfigs maps;  // the maps read
};

struct EngineStats {
  uint64_t commits = 0;      // commit() calls that succeeded
  uint64_t generations = 0;  // generations committed
  uint64_t failed_commits = 0;
  uint64_t drained_maps = 0;
  uint64_t drained_entries = 0;
  uint64_t live_inner_maps = 0;  // inner maps installed in outer maps (both banks of groups)
  WriterStats writer;            // rounds, waiting calls, explicit barriers
  // Worker threads started so far: the pools start them when a build or a write round needs
  // them, up to build_threads and barrier_threads (G6: an idle engine holds none it never used).
  uint64_t build_threads_started = 0;
  uint64_t barrier_threads_started = 0;
  PoolStats pool;  // pre-created inner maps (EngineConfig::inner_pool)
};

class CommitEngine {
 public:
  virtual ~CommitEngine() = default;

  // ---- configuration ---------------------------------------------------------------------
  [[nodiscard]] virtual const MapConfigs& maps() const = 0;
  [[nodiscard]] virtual const std::string& pin_dir() const = 0;
  [[nodiscard]] virtual Strategy strategy() const = 0;
  [[nodiscard]] virtual const std::string& kernel_release() const = 0;
  // A reload's maps: all or nothing; forget_added_maps() undoes add_maps(); remove_maps() takes
  // maps whose slots are empty and drained. No build() runs meanwhile.
  [[nodiscard]] virtual Status add_maps(const std::vector<OuterMapConfig>& maps) = 0;
  virtual void forget_added_maps(const std::vector<std::string>& maps) = 0;
  [[nodiscard]] virtual Status remove_maps(const std::vector<std::string>& maps) = 0;

  // ---- the commit path -------------------------------------------------------------------
  // Validates, then makes the inner maps of `gen` (any thread).
  [[nodiscard]] virtual Result<BuiltGeneration> build(const Generation& gen) = 0;
  // Commits a batch (acceptance order; later ones win per slot) behind one barrier, as
  // generations current+1 .. current+batch.size(). All or nothing: on a refusal the data plane
  // and current_generation() are as before.
  [[nodiscard]] virtual Result<CommitReport> commit(std::vector<BuiltGeneration> batch) = 0;
  // Waits one grace period without writing a slot (an explicit barrier). On success, what an
  // earlier failed barrier held back from drain() is drained by the next drain(), as after a
  // commit that waited.
  [[nodiscard]] virtual Status barrier() = 0;
  // Reads out every inner map that left the data plane at an earlier commit and adds its sums
  // to drained_totals(); with drain pins, they stay listed in unreleased_drains() until
  // release_drained().
  [[nodiscard]] virtual Result<std::vector<DrainRecord>> drain() = 0;
  [[nodiscard]] virtual std::vector<uint32_t> unreleased_drains() const = 0;
  virtual void release_drained() = 0;
  [[nodiscard]] virtual const std::map<CounterKey, uint64_t>& drained_totals() const = 0;
  [[nodiscard]] virtual uint64_t current_generation() const = 0;
  [[nodiscard]] virtual EngineStats stats() const = 0;

  // ---- recovery (G8), before the first commit ----------------------------------------------
  virtual void set_generation(uint64_t id, std::string label) = 0;
  virtual void restore_drained_totals(std::map<CounterKey, uint64_t> totals) = 0;
  // Drains a previous run left pinned: ids in `counted` are in the record's totals already.
  [[nodiscard]] virtual Status recover_drain_pins(const std::set<uint32_t>& counted) = 0;
  // Commits `gen` as generation `id` itself (re-creates what the record says is live).
  [[nodiscard]] virtual Result<CommitReport> restore(BuiltGeneration gen, uint64_t id) = 0;
  // The data plane's view of a map, and what one of its slots holds (kNotFound when empty).
  [[nodiscard]] virtual Result<std::vector<SlotInfo>> slots(const std::string& map) const = 0;
  [[nodiscard]] virtual Result<DrainRecord> dump_slot(const std::string& map,
                                                      const Bytes& slot) const = 0;

  // ---- reads, on any thread, never queued behind a commit ----------------------------------
  [[nodiscard]] virtual StateSnapshot state_snapshot() const = 0;
  // The counters of `only` (every map with counter fields when empty), each inner map counted
  // once (G5); kNotFound for an unknown map.
  [[nodiscard]] virtual Result<CounterReading> read_counters(const std::string& only) const = 0;
  // Every entry of the inner map live in `slot` (kNotFound when it is empty).
  [[nodiscard]] virtual Result<DrainRecord> read_slot(const std::string& map,
                                                      const Bytes& slot) const = 0;
};

}  // namespace policyd::core
