// FakeEngine: a CommitEngine without a kernel, for the committer's unit tests. It keeps a data
// plane of slots -> inner maps (ids never reused, entries and counter sums per map), commits a
// batch all or nothing, drains what a commit replaced, and records every call the committer
// makes so that a test can check what reached the "kernel": which batches, in what order,
// restores and their ids.
//
// Faults and timing the tests steer: hold commits at a gate (to queue pushes behind a busy
// committer), refuse a commit whose batch holds a label, fail a build, report a failed barrier.
//
// Thread-safe: build() runs on the committer's builder thread, the readers on any thread, and
// the test's controls and observations on its own.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/commit_engine.h"

namespace policyd::core::testing {

// An inner map of the fake data plane.
struct FakeInner {
  uint32_t id = 0;
  uint64_t installed_by = 0;
  std::vector<Entry> entries;
  std::map<std::string, uint64_t> counters;  // what programs counted in it (add_hits)
};

// What survives a daemon restart: the pinned maps. Share one between two FakeEngines to model
// a restart (the second adopts what the first left); give the second a fresh one to model a
// reboot (empty bpffs).
struct FakeDrainPin {
  std::string map;
  Bytes slot;
  FakeInner inner;
};
struct FakeDataPlane {
  std::map<std::pair<std::string, Bytes>, FakeInner> slots;
  std::vector<FakeDrainPin> drain_pins;  // drained maps whose pins a release has not removed
  uint32_t next_id = 100;                // map ids are never reused
};

class FakeEngine final : public CommitEngine {
 public:
  explicit FakeEngine(std::vector<OuterMapConfig> maps,
                      std::shared_ptr<FakeDataPlane> plane = std::make_shared<FakeDataPlane>(),
                      std::string pin_dir = "/fake/pins");

  // ---- controls --------------------------------------------------------------------------
  // Commits wait at a gate until open_gate(); wait_at_gate() returns once one is waiting.
  void close_gate();
  void open_gate();
  void wait_at_gate();
  // A commit whose batch holds a generation labelled `label` is refused whole with `error`.
  void refuse_label(std::string label, Error error);
  // The build of a generation labelled `label` fails with `error`.
  void fail_build_of(std::string label, Error error);
  // The next commit succeeds but reports its barrier failed (the batch is live, unacked); what
  // it replaced is held back from drain() until a commit that writes a slot, or barrier().
  void fail_next_barrier(Error error);
  // While refused, barrier() fails with EAGAIN.
  void refuse_barriers(bool refuse);
  // Programs counted `n` in the live inner map of a slot.
  void add_hits(const std::string& map, const Bytes& slot, const std::string& field, uint64_t n);

  // ---- observations ----------------------------------------------------------------------
  struct Call {
    bool restore = false;             // restore(), not commit()
    uint64_t id = 0;                  // restore: the generation id it was given
    std::vector<std::string> labels;  // the batch, in the order the committer passed it
    std::vector<BuiltChange> changes;
    bool refused = false;
  };
  [[nodiscard]] std::vector<Call> calls() const;
  [[nodiscard]] std::vector<std::string> built_labels() const;
  // The live inner map of a slot, if any.
  [[nodiscard]] std::optional<FakeInner> live(const std::string& map, const Bytes& slot) const;
  [[nodiscard]] size_t live_count() const;
  [[nodiscard]] size_t barriers() const;  // barrier() calls that succeeded
  [[nodiscard]] size_t drained() const;   // inner maps drain() read

  // ---- CommitEngine ----------------------------------------------------------------------
  [[nodiscard]] const MapConfigs& maps() const override { return configs_; }
  [[nodiscard]] const std::string& pin_dir() const override { return pin_dir_; }
  [[nodiscard]] Strategy strategy() const override { return Strategy::kBatch; }
  [[nodiscard]] const std::string& kernel_release() const override { return release_; }
  [[nodiscard]] Status add_maps(const std::vector<OuterMapConfig>& maps) override;
  void forget_added_maps(const std::vector<std::string>& maps) override;
  [[nodiscard]] Status remove_maps(const std::vector<std::string>& maps) override;
  [[nodiscard]] Result<BuiltGeneration> build(const Generation& gen) override;
  [[nodiscard]] Result<CommitReport> commit(std::vector<BuiltGeneration> batch) override;
  [[nodiscard]] Status barrier() override;
  [[nodiscard]] Result<std::vector<DrainRecord>> drain() override;
  [[nodiscard]] std::vector<uint32_t> unreleased_drains() const override;
  void release_drained() override;
  [[nodiscard]] const std::map<CounterKey, uint64_t>& drained_totals() const override {
    return drained_totals_;
  }
  [[nodiscard]] uint64_t current_generation() const override;
  [[nodiscard]] EngineStats stats() const override;
  void set_generation(uint64_t id, std::string label) override;
  void restore_drained_totals(std::map<CounterKey, uint64_t> totals) override;
  [[nodiscard]] Status recover_drain_pins(const std::set<uint32_t>& counted) override;
  [[nodiscard]] Result<CommitReport> restore(BuiltGeneration gen, uint64_t id) override;
  [[nodiscard]] Result<std::vector<SlotInfo>> slots(const std::string& map) const override;
  [[nodiscard]] Result<DrainRecord> dump_slot(const std::string& map,
                                              const Bytes& slot) const override;
  [[nodiscard]] StateSnapshot state_snapshot() const override;
  [[nodiscard]] Result<CounterReading> read_counters(const std::string& only) const override;
  [[nodiscard]] Result<DrainRecord> read_slot(const std::string& map,
                                              const Bytes& slot) const override;

 private:
  using Key = std::pair<std::string, Bytes>;
  Result<CommitReport> apply(std::vector<BuiltGeneration> batch, uint64_t first_id, Call call);
  Status known(const std::string& map) const;
  DrainRecord record_of(const std::string& map, const Bytes& slot, const FakeInner& inner) const;

  MapConfigs configs_;
  std::shared_ptr<FakeDataPlane> plane_;
  std::string pin_dir_;
  std::string release_ = "fake";

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool gate_closed_ = false;
  bool waiting_at_gate_ = false;
  std::map<std::string, Error> refused_labels_;
  std::map<std::string, Error> failed_builds_;
  std::optional<Error> fail_barrier_;
  bool refuse_barriers_ = false;
  size_t barriers_ = 0;
  std::map<uint32_t, FakeInner> built_;  // built, not installed yet
  struct Pending {
    std::string map;
    Bytes slot;
    FakeInner inner;
    uint64_t replaced_by = 0;
  };
  std::vector<Pending> pending_;  // replaced, not drained yet
  std::vector<Pending> held_;     // replaced under a failed barrier: not drained until one waits
  std::map<CounterKey, uint64_t> drained_totals_;
  uint64_t current_ = 0;
  std::string label_;
  std::vector<Call> calls_;
  std::vector<std::string> built_labels_;
  EngineStats stats_;
};

}  // namespace policyd::core::testing
