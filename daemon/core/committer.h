// Committer: the one thread that mutates outer maps. Accepts pushes from any thread (never
// blocking on the kernel), builds them in acceptance order on a builder thread while the
// previous commit waits for its barrier, commits everything built so far as one batch (group
// commit, one barrier), acks each push after the barrier, then drains the replaced inner maps
// and publishes events.
//
// Ordering (G9): generations commit in acceptance order. `expected_generation` is checked at
// commit time against the generation current after every push accepted before it.
// Idempotency: a push whose request_id was seen returns the original result (and waits for it
// if still in flight); ids are remembered for the last kRememberedRequests pushes.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/commit_engine.h"
#include "core/history.h"
#include "core/model.h"
#include "core/request_ledger.h"
#include "core/state_store.h"
#include "util/result.h"

namespace policyd::core {

struct PushRequest {
  Generation generation;
  uint64_t expected_generation = 0;  // 0: no check
  std::string request_id;            // empty: not idempotent
};

// Events, delivered on the committer thread: listeners must not block.
struct CommittedEvent {
  std::vector<uint64_t> generations;
  std::vector<std::string> labels;
  size_t slots_written = 0;
  double build_ms = 0, swap_ms = 0, barrier_ms = 0;
};
struct DrainedEvent {
  DrainRecord record;
};
// After the drain that follows a commit: how long it took and how many inner maps it read.
struct DrainFinishedEvent {
  double drain_ms = 0;
  size_t maps = 0;
};
struct EventListener {
  virtual ~EventListener() = default;
  virtual void on_committed(const CommittedEvent& e) = 0;
  virtual void on_drained(const DrainedEvent& e) = 0;
  virtual void on_drain_finished(const DrainFinishedEvent& /*e*/) {}
};

// A consistent, cheap copy of what readers need, refreshed after every commit.
struct CommitterView {
  uint64_t generation = 0;
  std::string label;
  std::vector<GenerationRecordPtr> history;  // newest first
  EngineStats stats;
  Strategy strategy = Strategy::kBatch;
  std::string kernel;
  std::vector<std::string> maps;  // outer maps the engine serves
};

struct CommitterOptions {
  uint32_t history = 16;
  size_t remembered_requests = 4096;
  // Idle time after which what the record lacks (drained totals, pins to release) gets a
  // write of its own instead of riding on the next commit's. Tests lengthen it to see the
  // state between two commits.
  std::chrono::milliseconds idle_flush_delay{20};
};

class Committer {
 public:
  // Without durable state: adopted slots are read back from the kernel; generation ids start
  // at 0. Tests and tools use it.
  Committer(std::unique_ptr<CommitEngine> engine, CommitterOptions options);
  // With durable state (G8), before anything is served: loads the record (refusing a corrupt
  // one), finishes drains a previous run left pinned, checks the adopted maps against the
  // record and, when they differ (reboot, crash mid-commit), re-commits the recorded
  // generation under its own id. The engine must have been opened with drain_pins.
  [[nodiscard]] static Result<std::unique_ptr<Committer>> open(std::unique_ptr<CommitEngine> engine,
                                                               std::unique_ptr<StateStore> store,
                                                               CommitterOptions options);
  ~Committer();  // stop()
  Committer(const Committer&) = delete;
  Committer& operator=(const Committer&) = delete;

  // Thread-safe. `done` runs on the committer (or builder) thread exactly once. After stop()
  // pushes fail with kUnavailable.
  void push(PushRequest request, PushCallback done);
  // Re-commits the state after generation `generation` (0: the one before current) as a new
  // generation. kNotFound when it left the bounded history.
  void rollback(uint64_t generation, uint64_t expected_generation, std::string request_id,
                PushCallback done);
  // Runs `fn` on the committer thread between commits. After stop(), runs it with a null
  // engine.
  void post(std::function<void(CommitEngine*)> fn);

  // Creates the outer maps a reloaded configuration adds. Blocks until the committer has done
  // it (between commits, with the builder paused). Never call it from the committer thread.
  [[nodiscard]] Status add_maps(std::vector<OuterMapConfig> maps);
  // Undoes add_maps() for `maps` (CommitEngine::forget_added_maps). Blocks like add_maps();
  // kUnavailable when the committer stopped first (the maps then stay).
  [[nodiscard]] Status forget_added_maps(std::vector<std::string> maps);
  // Empties the maps' slots in one generation (labelled `label`), drains them, then unpins
  // and forgets the maps. Blocks like add_maps().
  [[nodiscard]] Status remove_maps(std::vector<std::string> maps, std::string label);
  // How many generations ListGenerations and Rollback keep; applies at once.
  void set_history(uint32_t history);

  [[nodiscard]] std::shared_ptr<const CommitterView> view() const;
  // Pushes accepted and waiting for the builder, and built and waiting for the committer.
  struct QueueDepth {
    size_t accepted = 0;
    size_t built = 0;
  };
  [[nodiscard]] QueueDepth queue_depth() const;

  // Reads of live kernel state from any thread, beside the committer: never queued behind a
  // commit, and a commit never waits for one beyond a snapshot's copy (core/reads.h).
  // kUnavailable once stopped.
  [[nodiscard]] Result<StateSnapshot> state_snapshot() const;
  [[nodiscard]] Result<CounterReading> read_counters(const std::string& only) const;
  [[nodiscard]] Result<DrainRecord> read_slot(const std::string& map, const Bytes& slot) const;
  void add_listener(std::shared_ptr<EventListener> listener);
  void remove_listener(const EventListener* listener);

  // Refuses new work, finishes every push already accepted, drains, joins the threads.
  void stop();

 private:
  struct Impl;
  explicit Committer(std::unique_ptr<Impl> impl);
  void start();
  // Runs `fn` on the committer thread between commits and returns its result (kUnavailable
  // once stopped). Never from the committer thread.
  Status run_and_wait(const std::function<Status(CommitEngine&)>& fn);
  std::unique_ptr<Impl> impl_;
};

}  // namespace policyd::core
