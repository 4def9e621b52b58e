// Committer::Impl, private to committer.cpp (the pipeline and the commit) and
// committer_recovery.cpp (start-up recovery, G8). Not included anywhere else.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/committer.h"
#include "core/history.h"
#include "core/request_ledger.h"
#include "core/state_store.h"

namespace policyd::core {

// Runs one record write at a time on its own thread, so that the durable write of a batch
// overlaps the kernel's swap and barrier.
class RecordWriter {
 public:
  RecordWriter();
  ~RecordWriter();
  RecordWriter(const RecordWriter&) = delete;
  RecordWriter& operator=(const RecordWriter&) = delete;
  void start(std::function<Status()> job);
  [[nodiscard]] Status wait();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::function<Status()> job_;
  std::optional<Status> result_;
  bool stopping_ = false;
  std::thread thread_;
};

struct Committer::Impl {
  // One accepted push (or rollback) travelling through the pipeline.
  struct Item {
    PushRequest request;
    PushCallback done;
    bool rollback = false;
    uint64_t rollback_to = 0;  // 0: the generation before the current one
    BuiltGeneration built;
    std::vector<SlotContents> contents;       // per change: what the slot holds after (null: empty)
    std::vector<EncodedContentsPtr> encoded;  // with a store: the contents rows it brings
  };
  using ItemPtr = std::shared_ptr<Item>;

  std::unique_ptr<CommitEngine> engine;
  std::unique_ptr<StateStore> store;  // null: no durable state
  CommitterOptions options;
  RequestLedger ledger;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::shared_mutex maps_mu;  // shared: the builder's build(); exclusive: add_maps()
  bool stopping = false;
  bool builder_done = false;
  bool committer_done = false;
  std::deque<ItemPtr> accepted;  // waiting for the builder
  std::deque<ItemPtr> built;     // waiting for the committer
  std::deque<std::function<void(CommitEngine*)>> posts;
  std::vector<std::shared_ptr<EventListener>> listeners;
  std::shared_ptr<const CommitterView> view;

  // Committer-thread state.
  SlotState state;
  History history;
  std::map<SlotKey, uint32_t> live_ids;      // inner map id per live slot
  std::map<std::string, size_t> slots_used;  // populated slots per outer map
  std::set<CounterKey> dirty_totals;         // drained totals not yet in the record
  std::vector<RecordUpdate> unwritten;       // updates whose write failed: retried
  bool drained_ids_listed = false;           // the record names drained maps already unpinned
  // Request ids of pushes whose generation is live but not acknowledged, and what each still
  // waits for: its record (a failed write) and a barrier (a failed one). Settled, a retry
  // gets the generation (RequestLedger::settle).
  struct Unsettled {
    bool record = false;
    bool barrier = false;
  };
  std::map<std::string, Unsettled> unsettled;
  // Idle time before flush_idle(): options.idle_flush_delay, doubled while flushes fail (up to
  // 5 s, or the option when it is longer).
  std::chrono::milliseconds flush_delay;
  RecordWriter writer;

  std::thread builder_thread;
  std::thread committer_thread;

  Impl(std::unique_ptr<CommitEngine> e, std::unique_ptr<StateStore> st, CommitterOptions o)
      : engine(std::move(e)),
        store(std::move(st)),
        options(o),
        ledger(o.remembered_requests),
        history(o.history),
        flush_delay(o.idle_flush_delay) {}

  // committer.cpp: pipeline, commit, rollback, events.
  [[nodiscard]] bool stopped() const;  // stop() has begun: new work is refused
  void enqueue(ItemPtr item);
  void finish(const ItemPtr& item, Result<PushResult> result);
  // Ends an item whose generation is live but not acknowledged, with `e`.
  void finish_unsettled(const ItemPtr& item, const PushResult& live, const Error& e,
                        Unsettled waits_for);
  static PushResult result_of(const Item& item, const CommitReport& report, size_t i, size_t n);
  // A record write or a barrier succeeded: the unsettled pushes that waited only for it settle.
  void settle(bool record_written, bool barrier_waited);
  void builder_loop();
  void committer_loop();
  Status prepare_contents(Item& item);
  void commit_batch(std::vector<ItemPtr> items);
  void retry_alone(const ItemPtr& item);
  void run_rollback(const ItemPtr& item);
  GenerationRecordPtr record(const Item& item, uint64_t id);
  void revert(const std::vector<GenerationRecordPtr>& records);
  void count_slots(const std::vector<SlotDelta>& deltas, int sign);
  [[nodiscard]] std::string removed_map(const Generation& gen) const;
  double drain_and_publish();
  void for_each_listener(const std::function<void(EventListener&)>& fn);
  void publish_view();

  // The durable record (G8).
  RecordUpdate batch_update(const std::vector<ItemPtr>& items,
                            const std::vector<GenerationRecordPtr>& records, uint64_t keep_from,
                            const std::map<SlotKey, uint32_t>& ids);
  RecordUpdate undo_update(const std::vector<GenerationRecordPtr>& records);
  void add_drain_state(RecordUpdate& update) const;
  Status write_with_unwritten(const RecordUpdate& update);
  void written();   // recorded(), then the drain pins the write accounts for go
  void recorded();  // the bookkeeping of a successful write
  [[nodiscard]] Status catch_up_record();
  [[nodiscard]] bool flush_pending() const;    // either of:
  [[nodiscard]] bool record_pending() const;   // the record lacks something
  [[nodiscard]] bool barrier_pending() const;  // an unsettled push waits for a barrier
  void flush_idle();

  // committer_recovery.cpp: start-up (G8).
  Status recover();
  Status adopt_without_record();
  Status load_history(const StoredState& stored);
  Result<Generation> repair_changes(const std::vector<StoredSlot>& recorded);
  void read_live_ids();
  Status load_adopted_state();
};

}  // namespace policyd::core
