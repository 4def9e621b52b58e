// Engine: owns the outer maps and commits generations into them.
//
// Pipeline: validate -> build (new inner maps, parallel, any thread) -> commit (one committer:
// all slot writes of a batch of generations in one round, i.e. one barrier; undo on failure)
// -> drain (read replaced inner maps after the barrier, publish counters) -> close.
//
// Threading: validate() and build() are thread-safe and may run concurrently with the
// committer. Every other non-const call belongs to the single committer thread; const queries
// must also run on it (they read committer state), except the snapshots (state_snapshot(),
// counter_snapshot(), slot_snapshot()), which any thread may take at any time: the committer
// holds the engine's read lock only while it updates its bookkeeping, never across a kernel
// call that waits, and a snapshot holds it only to copy what a reader needs.
#pragma once

#include <atomic>
#include <compare>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/builder.h"
#include "core/commit_engine.h"
#include "core/inner_pool.h"
#include "core/model.h"
#include "core/pin_paths.h"
#include "core/slot_writer.h"
#include "core/validate.h"
#include "kernel/probe.h"
#include "kernel/unique_fd.h"
#include "util/result.h"
#include "util/worker_pool.h"

namespace policyd::core {

// An inner map whose counts are not in CounterSnapshot::drained yet.
struct CounterSource {
  std::string map;
  Bytes slot;
  uint32_t id = 0;
  bool live = false;  // false: replaced, its drain has not read it yet
};
// What a counter read needs, taken at one instant (G5): every inner map that ever held counts
// for the maps read is either summed in `drained` or listed in `sources`, never both. Reading
// a source later than the snapshot only finds more of its counts, never another map's.
struct CounterSnapshot {
  std::map<CounterKey, uint64_t> drained;
  std::vector<CounterSource> sources;
  MapConfigs maps;  // the maps read
};

// One slot at one instant (Engine::slot_snapshot).
struct SlotSnapshot {
  OuterMapConfig config;
  uint32_t id = 0;  // the live inner map; 0: the slot is empty
  uint64_t installed_by = 0;
};

class Engine final : public CommitEngine {
 public:
  // Creates (and pins) or re-adopts every configured outer map. Probes the kernel when the
  // barrier mode is kAuto. Refuses pinned maps that do not match the configuration.
  [[nodiscard]] static Result<std::unique_ptr<Engine>> open(EngineConfig config);
  ~Engine() override;
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Creates (or adopts) outer maps added to the configuration, as open() does; all or nothing:
  // when one fails, the others of this call are forgotten and their new pins removed. Committer
  // thread only, and no build() may run meanwhile (it reads the map configurations).
  [[nodiscard]] Status add_maps(const std::vector<OuterMapConfig>& maps) override;
  // Undoes add_maps() for `maps` (a reload that fails after it): forgets them and removes the
  // pins that call created; pins it adopted stay, with what their slots hold. Committer thread
  // only, no build meanwhile.
  void forget_added_maps(const std::vector<std::string>& maps) override;
  // Unpins and forgets outer maps whose slots are all empty and drained (a reloaded
  // configuration no longer lists them). Programs that hold them keep them until they let go.
  [[nodiscard]] Status remove_maps(const std::vector<std::string>& maps) override;

  [[nodiscard]] Status validate(const Generation& gen) const;
  [[nodiscard]] Result<BuiltGeneration> build(const Generation& gen) override;

  // Commits a batch of built generations (acceptance order; later ones win per slot) behind one
  // barrier. On a kernel failure every write of the batch is undone and the error returned.
  [[nodiscard]] Result<CommitReport> commit(std::vector<BuiltGeneration> batch) override;
  [[nodiscard]] Status barrier() override;
  // Convenience: build + commit one generation.
  [[nodiscard]] Result<CommitReport> push(const Generation& gen);
  // Reads out and closes every inner map that left the data plane at an earlier commit.
  // With drain_pins, their pins stay until release_drained().
  [[nodiscard]] Result<std::vector<DrainRecord>> drain() override;
  // For tests: the next explicit barrier fails with `err` (a fault the kernel cannot be made to
  // produce on demand).
  // Thread-safe (a test may call it while the committer thread commits).
  void fail_next_barrier_for_test(int err) { fail_next_barrier_ = err; }
  // Ids of drained inner maps whose pins are still there: the durable record lists them, so
  // that a restart before release_drained() does not count them twice.
  [[nodiscard]] std::vector<uint32_t> unreleased_drains() const override;
  // Removes the pins of drained maps (call once their totals are durable).
  void release_drained() override;

  // ---- recovery (G8); before the first commit -----------------------------------------------
  // The generation the pinned maps hold, and its label, as the durable record says.
  void set_generation(uint64_t id, std::string label) override {
    std::lock_guard lock(read_mu_);
    current_ = id;
    current_label_ = std::move(label);
  }
  void restore_drained_totals(std::map<CounterKey, uint64_t> totals) override {
    std::lock_guard lock(read_mu_);
    drained_totals_ = std::move(totals);
  }
  // Takes up the maps a previous run left under the drain directory: pins of maps already in
  // `counted` (or still live in a slot) are removed; the others are queued for drain().
  [[nodiscard]] Status recover_drain_pins(const std::set<uint32_t>& counted) override;
  // Commits `gen` as generation `id` (not as a new generation): re-creates or repairs what the
  // durable record says the data plane holds.
  [[nodiscard]] Result<CommitReport> restore(BuiltGeneration gen, uint64_t id) override;

  [[nodiscard]] uint64_t current_generation() const override { return current_; }
  [[nodiscard]] Strategy strategy() const override { return writer_->strategy(); }
  [[nodiscard]] const kernel::KernelFacts& kernel_facts() const { return facts_; }
  [[nodiscard]] const PinPaths& pins() const { return pins_; }
  [[nodiscard]] const MapConfigs& maps() const override { return configs_; }
  [[nodiscard]] const std::string& pin_dir() const override { return pins_.dir(); }
  [[nodiscard]] const std::string& kernel_release() const override { return facts_.release; }
  [[nodiscard]] EngineStats stats() const override;
  [[nodiscard]] size_t pending_drains() const { return pending_.size() + unsettled_.size(); }
  // Pre-created inner maps (null when EngineConfig::inner_pool is 0). Thread-safe.
  [[nodiscard]] InnerMapPool* inner_pool() const { return inner_pool_.get(); }

  // The data plane's view of a map: for group members, the active bank.
  [[nodiscard]] Result<std::vector<SlotInfo>> slots(const std::string& map) const override;
  [[nodiscard]] Result<int> outer_fd(const std::string& map) const;
  // Counter sums of the inner map live in a slot; empty map when the slot is empty.
  [[nodiscard]] Result<std::map<std::string, uint64_t>> live_counters(const std::string& map,
                                                                      const Bytes& slot) const;
  // Entries of the inner map live in a slot (kNotFound when the slot is empty).
  [[nodiscard]] Result<DrainRecord> dump_slot(const std::string& map,
                                              const Bytes& slot) const override;
  // Cumulative sums drained from replaced inner maps.
  [[nodiscard]] const std::map<CounterKey, uint64_t>& drained_totals() const override {
    return drained_totals_;
  }
  // ---- snapshots for readers on any thread ---------------------------------------------------
  // The generation, its label and every map, taken together.
  [[nodiscard]] StateSnapshot state_snapshot() const override;
  // core/reads.h over this engine's snapshots.
  [[nodiscard]] Result<CounterReading> read_counters(const std::string& only) const override;
  [[nodiscard]] Result<DrainRecord> read_slot(const std::string& map,
                                              const Bytes& slot) const override;
  // The counters of `only` (every map with counter fields when empty); kNotFound for an
  // unknown map.
  [[nodiscard]] Result<CounterSnapshot> counter_snapshot(const std::string& only) const;
  // kNotFound for an unknown map.
  [[nodiscard]] Result<SlotSnapshot> slot_snapshot(const std::string& map, const Bytes& slot) const;

  // Ids of every BPF map policyd holds open: outer maps, bank words, live and pending inner
  // maps, the barrier map, pooled inner maps. Tests compare it with the kernel's list to find
  // leaks.
  [[nodiscard]] std::vector<uint32_t> owned_map_ids() const;

 private:
  struct Outer;
  struct Group;
  struct PendingDrain {
    InnerRef inner;
    uint64_t replaced_by = 0;
  };
  struct Plan;

  Engine(EngineConfig config, kernel::KernelFacts facts);
  Status open_maps();
  Status open_outer(Outer& outer, int bank, const std::string& kernel_name,
                    const std::string& path);
  Status open_group(Group& group);
  // One map of add_maps(); what it made so far stays in outers_/configs_ when it fails.
  Status add_map(const OuterMapConfig& m);
  // The pins a map uses in pin_dir: its own, or a group member's two banks and the bank word.
  std::vector<std::string> pin_paths_of(const OuterMapConfig& m) const;
  // Undoes add_map() for `names` (the last first), unpinning only what was not in
  // `pinned_before`.
  void forget_added(const std::vector<std::string>& names,
                    const std::set<std::string>& pinned_before);
  Status adopt_slots(Outer& outer, int bank);
  Result<const Outer*> find(const std::string& map) const;

  Plan plan(std::vector<BuiltGeneration>& batch);
  Status pin_leaving(const Plan& plan);
  void unpin_unless_pending(const Plan& plan);
  Status pin_for_drain(InnerMap& inner);
  Status undo(Plan& plan, const RoundResult& round);
  Status flip_groups(Plan& plan);
  // A grace period has passed since the failed barrier that held unsettled_ back: it goes to
  // pending_ (drained next). read_mu_ held.
  void release_unsettled();

  EngineConfig config_;
  kernel::KernelFacts facts_;
  // Held by the committer thread while it changes what snapshots read (maps, slots, the
  // active bank, pending drains, drained totals), and by a snapshot while it copies them.
  mutable std::mutex read_mu_;
  PinPaths pins_;
  kernel::UniqueFd pin_dir_lock_;  // flock on pin_dir: one engine (daemon) per pin_dir
  MapConfigs configs_;
  util::WorkerPool build_pool_;
  util::WorkerPool barrier_pool_;
  std::unique_ptr<InnerMapPool> inner_pool_;  // after configs_: its thread copies templates
  std::unique_ptr<SlotWriter> writer_;
  std::map<std::string, std::unique_ptr<Outer>> outers_;
  std::map<std::string, std::unique_ptr<Group>> groups_;
  // Per map an add_maps() call made: the pins that were there before it (adopted).
  std::map<std::string, std::set<std::string>> pinned_before_add_;
  std::vector<PendingDrain> pending_;
  // Left the data plane in a commit whose barrier failed: moved to pending_ once a later commit
  // has waited successfully.
  std::vector<PendingDrain> unsettled_;
  std::atomic<int> fail_next_barrier_{0};
  std::vector<InnerRef> drained_;  // drained, still pinned until release_drained()
  std::map<CounterKey, uint64_t> drained_totals_;
  uint64_t current_ = 0;
  std::string current_label_;  // the label of generation current_ (under read_mu_)
  EngineStats stats_;
};

// Chooses the strategy for `mode` given what the probe measured.
[[nodiscard]] Strategy choose_strategy(BarrierMode mode, const kernel::KernelFacts& facts);

}  // namespace policyd::core
