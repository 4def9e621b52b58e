// Committer: accept -> build (builder thread) -> group commit (committer thread) -> ack ->
// drain -> events. The engine is touched only by the committer thread (and by build(), which is
// thread-safe by the engine's contract).
#include "core/committer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <thread>

#include "util/clock.h"

namespace policyd::core {
namespace {

Error unavailable() { return Error{ErrorCode::kUnavailable, 0, "policyd is shutting down"}; }

// Slots in use per hash_of_maps outer map as a batch is assembled. A generation that would
// need more slots than the map holds is refused before any kernel call, on its own, instead of
// failing the kernel write of the whole batch half way.
class HashOccupancy {
 public:
  explicit HashOccupancy(const Engine& engine) : engine_(engine) {}

  Status apply(const Generation& gen) {
    std::map<std::string, std::set<Bytes>> next;
    for (const SlotChange& c : gen.changes) {
      auto cfg = engine_.maps().find(c.map);
      if (cfg == engine_.maps().end() || cfg->second.kind != OuterKind::kHash) continue;
      auto it = next.find(c.map);
      if (it == next.end()) it = next.emplace(c.map, used_slots(c.map)).first;
      std::set<Bytes>& used = it->second;
      if (c.remove)
        used.erase(c.slot);
      else
        used.insert(c.slot);
      if (used.size() > cfg->second.slots) {
        return Error{ErrorCode::kResourceExhausted, 0,
                     "map \"" + c.map + "\" holds at most " + std::to_string(cfg->second.slots) +
                         " slots; this generation would need " + std::to_string(used.size())};
      }
    }
    for (auto& [map, used] : next) used_[map] = std::move(used);
    return {};
  }

 private:
  std::set<Bytes> used_slots(const std::string& map) {
    auto it = used_.find(map);
    if (it != used_.end()) return it->second;
    std::set<Bytes> used;
    Result<std::vector<SlotInfo>> slots = engine_.slots(map);
    if (slots.ok()) {
      for (const SlotInfo& s : *slots) used.insert(s.slot);
    }
    return used;
  }

  const Engine& engine_;
  std::map<std::string, std::set<Bytes>> used_;
};

}  // namespace

struct Committer::Impl {
  // One accepted push (or rollback) travelling through the pipeline.
  struct Item {
    PushRequest request;
    PushCallback done;
    bool rollback = false;
    uint64_t rollback_to = 0;  // 0: the generation before the current one
    BuiltGeneration built;
    std::vector<Digest> digests;  // per change: its contents file (with a store)
    std::vector<Digest> held;     // contents files this item put: released when it finishes
  };
  using ItemPtr = std::shared_ptr<Item>;

  // What is known about a request id: its result, or who waits for it.
  struct RequestState {
    bool done = false;
    PushResult result;
    std::vector<PushCallback> waiters;
  };

  std::unique_ptr<Engine> engine;
  std::unique_ptr<StateStore> store;  // null: no durable state
  CommitterOptions options;

  std::mutex mu;
  std::condition_variable cv;
  std::shared_mutex maps_mu;  // shared: the builder's build(); exclusive: add_maps()
  bool stopping = false;
  bool builder_done = false;
  bool committer_done = false;
  std::deque<ItemPtr> accepted;  // waiting for the builder
  std::deque<ItemPtr> built;     // waiting for the committer
  std::deque<std::function<void(Engine*)>> posts;
  std::map<std::string, RequestState> requests;
  std::deque<std::string> request_order;  // done ids, oldest first, for forgetting
  std::vector<std::shared_ptr<EventListener>> listeners;
  std::shared_ptr<const CommitterView> view;

  // Committer-thread state.
  StateSnapshot state;
  std::deque<GenerationRecord> history;                        // newest first
  std::map<std::pair<std::string, Bytes>, uint32_t> live_ids;  // inner map id per live slot
  bool record_stale = false;  // the last durable write failed: write again at the next chance

  std::thread builder_thread;
  std::thread committer_thread;

  Impl(std::unique_ptr<Engine> e, std::unique_ptr<StateStore> st, CommitterOptions o)
      : engine(std::move(e)), store(std::move(st)), options(o) {}

  // ---- request ids -------------------------------------------------------------------------

  // Registers `item`'s request id; false when the id is known (the callback was attached to it).
  bool claim_request_id(const ItemPtr& item) {
    const std::string& id = item->request.request_id;
    if (id.empty()) return true;
    std::unique_lock lock(mu);
    auto it = requests.find(id);
    if (it == requests.end()) {
      requests.emplace(id, RequestState{});
      return true;
    }
    if (!it->second.done) {
      it->second.waiters.push_back(std::move(item->done));
      return false;
    }
    PushResult replay = it->second.result;
    lock.unlock();
    replay.replayed = true;
    item->done(replay);
    return false;
  }

  // Delivers the result to the caller and to retries that waited on the same request id.
  void finish(const ItemPtr& item, Result<PushResult> result) {
    if (store && !item->held.empty()) store->release(std::exchange(item->held, {}));
    std::vector<PushCallback> waiters;
    if (const std::string& id = item->request.request_id; !id.empty()) {
      std::lock_guard lock(mu);
      auto it = requests.find(id);
      if (it != requests.end()) {
        waiters = std::move(it->second.waiters);
        if (result.ok()) {
          it->second.done = true;
          it->second.result = result.value();
          request_order.push_back(id);
          while (request_order.size() > options.remembered_requests) {
            requests.erase(request_order.front());
            request_order.pop_front();
          }
        } else {
          requests.erase(it);  // a failed push may be retried with the same id
        }
      }
    }
    item->done(result);
    for (PushCallback& w : waiters) {
      Result<PushResult> copy = result;
      if (copy.ok()) copy.value().replayed = true;
      w(std::move(copy));
    }
  }

  // ---- pipeline ------------------------------------------------------------------------------

  void enqueue(ItemPtr item) {
    {
      std::unique_lock lock(mu);
      if (stopping) {
        lock.unlock();
        item->done(unavailable());
        return;
      }
    }
    if (!claim_request_id(item)) return;
    {
      std::lock_guard lock(mu);
      accepted.push_back(std::move(item));
    }
    cv.notify_all();
  }

  void builder_loop() {
    for (;;) {
      ItemPtr item;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return !accepted.empty() || stopping; });
        if (accepted.empty()) {
          builder_done = true;
          cv.notify_all();
          return;
        }
        item = std::move(accepted.front());
        accepted.pop_front();
      }
      if (!item->rollback) {
        std::shared_lock maps_lock(maps_mu);  // add_maps() must not change maps mid-build
        Result<BuiltGeneration> b = engine->build(item->request.generation);
        if (!b.ok()) {
          finish(item, std::move(b).error());
          continue;
        }
        item->built = std::move(b).value();
        if (store) {
          Status stored = store_contents(*item);
          if (!stored.ok()) {
            finish(item,
                   stored.error().wrap("record the generation's contents in " + store->dir()));
            continue;
          }
        }
      }
      {
        std::lock_guard lock(mu);
        built.push_back(std::move(item));
      }
      cv.notify_all();
    }
  }

  void committer_loop() {
    for (;;) {
      std::deque<std::function<void(Engine*)>> todo;
      std::vector<ItemPtr> batch;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] {
          return !posts.empty() || !built.empty() || (builder_done && accepted.empty());
        });
        todo.swap(posts);
        // Everything built so far commits together, up to a rollback, which goes alone (its
        // contents depend on the state right before it).
        while (!built.empty()) {
          if (built.front()->rollback && !batch.empty()) break;
          batch.push_back(std::move(built.front()));
          built.pop_front();
          if (batch.back()->rollback) break;
        }
        if (todo.empty() && batch.empty()) {  // stopped and nothing left
          committer_done = true;
        }
      }
      if (committer_done) {
        flush_idle();  // drained counters of the last commits become durable
        return;
      }
      for (auto& fn : todo) fn(engine.get());
      if (batch.empty()) continue;
      if (batch.front()->rollback) {
        run_rollback(batch.front());
      } else {
        commit_batch(std::move(batch));
      }
    }
  }

  // Writes the contents of every slot the item installs (builder thread, maps_mu held), so
  // that the record written at commit time only has to name them.
  Status store_contents(Item& item) {
    item.digests.clear();
    for (const SlotChange& c : item.request.generation.changes) {
      if (c.remove) {
        item.digests.emplace_back();
        continue;
      }
      const InnerTemplate& t = engine->maps().at(c.map).inner;
      POLICYD_ASSIGN_OR_RETURN(Digest d, store->put_contents(c.entries, t.key_size, t.value_size));
      item.held.push_back(d);
      item.digests.push_back(std::move(d));
    }
    return store->sync_contents();
  }

  // ---- durable record (G8) -------------------------------------------------------------------

  static StoredGeneration stored_generation(const GenerationRecord& rec) {
    StoredGeneration g;
    static_cast<GenerationMeta&>(g) = rec;
    for (const auto& [key, contents] : *rec.state) {
      g.slots.push_back({key.first, key.second, contents->digest, 0});
    }
    g.content_hash = rec.content_hash;
    return g;
  }

  // The record of what the committer holds now, with `ids` as the live inner map ids.
  StoredState stored_state(const std::map<std::pair<std::string, Bytes>, uint32_t>& ids) const {
    StoredState st;
    st.pin_dir = engine->pins().dir();
    st.generation = history.empty() ? engine->current_generation() : history.front().id;
    for (const GenerationRecord& rec : history) st.history.push_back(stored_generation(rec));
    if (!st.history.empty()) {
      for (StoredSlot& slot : st.history.front().slots) {
        auto it = ids.find({slot.map, slot.slot});
        slot.inner_id = it == ids.end() ? 0 : it->second;
      }
    }
    for (const auto& [key, total] : engine->drained_totals()) {
      st.drained.push_back({key.map, key.slot, key.field, total});
    }
    st.drained_inner_ids = engine->unreleased_drains();
    return st;
  }

  // Writes the record of the current state now; on success the pins of drained maps it
  // accounts for go.
  Status write_record() {
    const StoredState st = stored_state(live_ids);
    Status written = store->write(st);
    if (!written.ok()) {
      record_stale = true;
      return written.error().wrap("record generation state in " + store->dir());
    }
    record_stale = false;
    engine->release_drained();
    store->collect_garbage(st);
    return {};
  }

  // Drained counters become durable with the next commit's record; when no commit is waiting,
  // (or the last write failed) they are written now.
  void flush_idle() {
    if (!store) return;
    if (engine->unreleased_drains().empty() && !record_stale) return;
    {
      std::lock_guard lock(mu);
      if (!built.empty()) return;
    }
    Status st = write_record();
    if (!st.ok()) spdlog::error("{}", st.error().message());
  }

  // ---- commit --------------------------------------------------------------------------------

  void commit_batch(std::vector<ItemPtr> items) {
    // G9: expected_generation is checked against the generation current after every push
    // accepted before this one.
    uint64_t current = engine->current_generation();
    std::vector<ItemPtr> ok;
    std::vector<BuiltGeneration> batch;
    HashOccupancy occupancy(*engine);
    for (ItemPtr& item : items) {
      if (std::string gone = removed_map(item->request.generation); !gone.empty()) {
        // Built before a reload removed the map.
        finish(item,
               failed_precondition("map \"" + gone + "\" was removed by a configuration reload"));
        continue;
      }
      const uint64_t expected = item->request.expected_generation;
      if (expected != 0 && expected != current) {
        finish(item,
               failed_precondition("expected generation " + std::to_string(expected) +
                                   ", but the current generation is " + std::to_string(current)));
        continue;
      }
      if (Status fits = occupancy.apply(item->request.generation); !fits.ok()) {
        finish(item, fits.error());
        continue;
      }
      ++current;
      batch.push_back(std::move(item->built));
      ok.push_back(std::move(item));
    }
    if (ok.empty()) return;

    double build_ms = 0;
    for (const BuiltGeneration& b : batch) build_ms = std::max(build_ms, b.build_ms);

    // The record of the batch is written while the kernel swaps and waits for the barrier: an
    // ack needs both. A crash in between leaves the record of the batch or the one before;
    // the next start brings the data plane to whichever it finds (G8).
    const StateSnapshot saved_state = state;
    const std::deque<GenerationRecord> saved_history = history;
    const uint64_t first_id = engine->current_generation() + 1;
    for (size_t i = 0; i < ok.size(); ++i) record(*ok[i], first_id + i);
    auto next_ids = live_ids;
    for (const BuiltGeneration& b : batch) {
      for (const BuiltChange& c : b.changes) {
        if (c.inner)
          next_ids[{c.map, c.slot}] = c.inner->id;
        else
          next_ids.erase({c.map, c.slot});
      }
    }
    std::future<Status> recorded;
    StoredState next_record;
    if (store) {
      next_record = stored_state(next_ids);
      // The writer reads next_record only; this thread does not touch it until get().
      recorded = std::async(std::launch::async,
                            [this, &next_record] { return store->write(next_record); });
    }
    Result<CommitReport> report = engine->commit(std::move(batch));
    Status durable = store ? recorded.get() : Status{};
    if (report.ok()) {
      live_ids = std::move(next_ids);
      if (durable.ok()) {
        record_stale = false;
        engine->release_drained();
        if (store) store->collect_garbage(next_record);
      }
    } else {
      state = saved_state;
      history = saved_history;
      // The record of the failed batch may be durable: put back the one the kernel holds.
      if (store) {
        Status back = write_record();
        if (!back.ok()) spdlog::error("{}", back.error().message());
      }
    }
    if (!report.ok()) {
      spdlog::error("{}", report.error().message());
      drain_and_publish();  // maps that the undo took back out of the data plane
      if (ok.size() > 1) {
        // One generation the kernel refuses (a full hash outer map, say) must not fail the
        // others that happened to share its barrier: commit them one by one, rebuilt (the maps
        // built for the batch may have been live for a moment and are drained).
        for (ItemPtr& item : ok) retry_alone(item);
        return;
      }
      finish(ok.front(), report.error());
      publish_view();
      flush_idle();
      return;
    }

    CommittedEvent event;
    event.slots_written = report->slots_written;
    event.build_ms = build_ms;
    event.swap_ms = report->write_ms;
    event.barrier_ms = report->barrier_ms;
    for (size_t i = 0; i < ok.size(); ++i) {
      event.generations.push_back(report->first_generation + i);
      event.labels.push_back(ok[i]->request.generation.label);
    }
    // Readers (ListGenerations, GetState) must see a generation once its push is acked.
    publish_view();
    if (!durable.ok()) {
      // The data plane holds the batch but the record does not: no ack (G8). A restart before
      // the next successful write brings back the generation recorded before.
      record_stale = true;
      const Error e = durable.error().wrap(
          "generation " + std::to_string(report->last_generation) +
          " is live but could not be recorded in " + store->dir() +
          "; it is not acknowledged, and a restart before the next successful record would "
          "restore generation " +
          std::to_string(report->first_generation - 1));
      spdlog::error("{}", e.message());
      for (ItemPtr& item : ok) finish(item, e);
      for_each_listener([&](EventListener& l) { l.on_committed(event); });
      drain_and_publish();
      flush_idle();
      return;
    }
    // G4: commit() returned after the barrier, so acking now is safe.
    for (size_t i = 0; i < ok.size(); ++i) {
      PushResult r;
      r.generation = report->first_generation + i;
      r.batch_size = static_cast<uint32_t>(ok.size());
      if (ok[i]->rollback) r.restored = ok[i]->rollback_to;
      finish(ok[i], r);
    }
    for_each_listener([&](EventListener& l) { l.on_committed(event); });
    const double drain_ms = drain_and_publish();
    flush_idle();
    for (size_t i = 0; i < ok.size(); ++i) {
      const Generation& gen = ok[i]->request.generation;
      spdlog::info(
          "committed generation {} label \"{}\": {} slot change(s); build {:.2f} ms, swap {:.2f} "
          "ms, barrier {:.2f} ms, drain {:.2f} ms; {} generation(s) under this barrier",
          report->first_generation + i, gen.label, gen.changes.size(), build_ms, report->write_ms,
          report->barrier_ms, drain_ms, ok.size());
    }
    publish_view();
  }

  // The first map a generation names that the engine no longer has, or "".
  std::string removed_map(const Generation& gen) const {
    for (const SlotChange& c : gen.changes) {
      if (!engine->maps().count(c.map)) return c.map;
    }
    return "";
  }

  // Rebuilds one generation of a failed batch and commits it on its own (expected_generation
  // is checked again against the generation current now).
  void retry_alone(const ItemPtr& item) {
    Result<BuiltGeneration> b = engine->build(item->request.generation);
    if (!b.ok()) {
      finish(item, std::move(b).error());
      return;
    }
    item->built = std::move(b).value();
    commit_batch({item});
  }

  void run_rollback(const ItemPtr& item) {
    uint64_t target = item->rollback_to;
    if (target == 0) {
      if (history.size() < 2) {
        finish(item, Error{ErrorCode::kNotFound, 0, "no earlier generation in the history"});
        return;
      }
      target = history[1].id;
    }
    const GenerationRecord* rec = nullptr;
    for (const GenerationRecord& r : history) {
      if (r.id == target) rec = &r;
    }
    if (!rec) {
      finish(item, Error{ErrorCode::kNotFound, 0,
                         "generation " + std::to_string(target) +
                             " is not in the history (it keeps the last " +
                             std::to_string(options.history) + ")"});
      return;
    }
    // The changes that turn the current state into the recorded one.
    Generation gen;
    gen.label = "rollback to " + std::to_string(target);
    const StateSnapshot& want = *rec->state;
    std::vector<Digest> digests;
    for (const auto& [key, contents] : want) {
      auto cur = state.find(key);
      if (cur != state.end() && cur->second == contents) continue;
      gen.changes.push_back(SlotChange{key.first, key.second, false, contents->entries});
      digests.push_back(contents->digest);
    }
    for (const auto& [key, contents] : state) {
      if (!want.count(key)) {
        gen.changes.push_back(SlotChange{key.first, key.second, true, {}});
        digests.emplace_back();
      }
    }
    if (gen.changes.empty()) {
      finish(item, failed_precondition("the data plane already holds the state of generation " +
                                       std::to_string(target)));
      return;
    }
    Result<BuiltGeneration> b = engine->build(gen);
    if (!b.ok()) {
      finish(item, std::move(b).error());
      return;
    }
    item->request.generation = std::move(gen);
    item->built = std::move(b).value();
    item->digests = std::move(digests);  // the recorded contents files are still there
    item->rollback_to = target;          // reported back as PushResult::restored
    commit_batch({item});
  }

  // Applies a committed generation to the state and records it in the history.
  void record(const Item& item, uint64_t id) {
    const Generation& gen = item.request.generation;
    GenerationRecord rec;
    rec.id = id;
    rec.label = gen.label;
    rec.committed_unix_ms = util::unix_ms_now();
    rec.changes = static_cast<uint32_t>(gen.changes.size());
    rec.request_id = item.request.request_id;
    for (size_t i = 0; i < gen.changes.size(); ++i) {
      const SlotChange& c = gen.changes[i];
      rec.entries += c.entries.size();
      auto key = std::make_pair(c.map, c.slot);
      if (c.remove) {
        state.erase(key);
        continue;
      }
      Digest digest = i < item.digests.size() ? item.digests[i] : Digest{};
      state[key] = std::make_shared<const SlotData>(SlotData{c.entries, std::move(digest)});
    }
    rec.state = std::make_shared<const StateSnapshot>(state);
    if (store) rec.content_hash = generation_hash(stored_generation(rec).slots);
    history.push_front(std::move(rec));
    while (history.size() > options.history) history.pop_back();
  }

  // Drains every replaced inner map and publishes a Drained event per map; returns the time.
  double drain_and_publish() {
    auto t0 = std::chrono::steady_clock::now();
    Result<std::vector<DrainRecord>> records = engine->drain();
    const double ms = util::ms_since(t0);
    if (!records.ok()) {
      spdlog::error("drain: {} (kept pending, retried after the next commit)",
                    records.error().message());
      return ms;
    }
    for (DrainRecord& r : *records) {
      DrainedEvent e{std::move(r)};
      for_each_listener([&](EventListener& l) { l.on_drained(e); });
    }
    const DrainFinishedEvent finished{ms, records->size()};
    for_each_listener([&](EventListener& l) { l.on_drain_finished(finished); });
    return ms;
  }

  void for_each_listener(const std::function<void(EventListener&)>& fn) {
    std::vector<std::shared_ptr<EventListener>> copy;
    {
      std::lock_guard lock(mu);
      copy = listeners;
    }
    for (auto& l : copy) fn(*l);
  }

  void publish_view() {
    auto v = std::make_shared<CommitterView>();
    v->generation = engine->current_generation();
    v->label = history.empty() ? "" : history.front().label;
    v->history.assign(history.begin(), history.end());
    v->stats = engine->stats();
    v->strategy = engine->strategy();
    v->kernel = engine->kernel_facts().release;
    for (const auto& [name, cfg] : engine->maps()) v->maps.push_back(name);
    std::lock_guard lock(mu);
    view = std::move(v);
  }

  // ---- recovery (G8) -------------------------------------------------------------------------

  // Loads the record, finishes drains left pinned, and brings the data plane to the recorded
  // generation: untouched when the adopted maps match it, re-committed (same id) otherwise.
  Status recover() {
    POLICYD_ASSIGN_OR_RETURN(std::optional<StoredState> stored, store->load());
    if (!stored) return adopt_without_record();
    if (!stored->pin_dir.empty() && stored->pin_dir != engine->pins().dir()) {
      return failed_precondition(
          store->manifest_path() + " records the maps of pin_dir " + stored->pin_dir +
          ", but the config's pin_dir is " + engine->pins().dir() +
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
    std::vector<StoredSlot> recorded;
    if (!stored->history.empty()) recorded = stored->history.front().slots;
    POLICYD_ASSIGN_OR_RETURN(Generation repair, repair_changes(recorded));
    if (repair.changes.empty()) {
      engine->set_generation(id);
      spdlog::info(
          "adopted generation {}: the pinned maps match its record ({} slot(s)); the "
          "data plane was not touched",
          id, recorded.size());
    } else {
      const size_t differ = repair.changes.size();
      POLICYD_ASSIGN_OR_RETURN(BuiltGeneration rebuilt, engine->build(repair));
      Result<CommitReport> report = engine->restore(std::move(rebuilt), id);
      if (!report.ok()) return report.error().wrap("restore generation " + std::to_string(id));
      spdlog::warn(
          "restored generation {}: {} slot(s) differed from its record (empty bpffs "
          "after a reboot, or a crash in the middle of a commit)",
          id, differ);
    }
    read_live_ids();
    drain_and_publish();
    return write_record();
  }

  // No record yet (first start, or the state directory was moved away): the pinned maps are
  // taken as they are and recorded.
  Status adopt_without_record() {
    POLICYD_TRY(engine->recover_drain_pins({}));
    POLICYD_TRY(load_adopted_state());
    if (!state.empty()) {
      spdlog::warn("no record in {}: adopted the pinned maps as they are ({} slot(s))",
                   store->dir(), state.size());
    }
    StateSnapshot with_digests;
    for (const auto& [key, contents] : state) {
      const InnerTemplate& t = engine->maps().at(key.first).inner;
      POLICYD_ASSIGN_OR_RETURN(Digest d,
                               store->put_contents(contents->entries, t.key_size, t.value_size));
      with_digests[key] =
          std::make_shared<const SlotData>(SlotData{contents->entries, std::move(d)});
    }
    POLICYD_TRY(store->sync_contents());
    state = std::move(with_digests);
    if (!state.empty()) {
      GenerationRecord rec;
      rec.id = engine->current_generation();
      rec.label = "adopted";
      rec.committed_unix_ms = util::unix_ms_now();
      rec.state = std::make_shared<const StateSnapshot>(state);
      rec.content_hash = generation_hash(stored_generation(rec).slots);
      history.push_front(std::move(rec));
    }
    drain_and_publish();
    return write_record();
  }

  // History (and the current state) from the record; contents files are read once each.
  Status load_history(const StoredState& stored) {
    std::map<Digest, std::shared_ptr<const SlotData>> loaded;
    for (const StoredGeneration& g : stored.history) {
      StateSnapshot snap;
      for (const StoredSlot& slot : g.slots) {
        auto it = loaded.find(slot.contents);
        if (it == loaded.end()) {
          POLICYD_ASSIGN_OR_RETURN(std::vector<Entry> entries, store->get_contents(slot.contents));
          it = loaded
                   .emplace(slot.contents, std::make_shared<const SlotData>(
                                               SlotData{std::move(entries), slot.contents}))
                   .first;
        }
        snap[{slot.map, slot.slot}] = it->second;
      }
      GenerationRecord rec;
      static_cast<GenerationMeta&>(rec) = g;
      rec.content_hash = g.content_hash;
      rec.state = std::make_shared<const StateSnapshot>(std::move(snap));
      history.push_back(std::move(rec));
      // A retried push after the restart is answered from the record (idempotency survives).
      if (!g.request_id.empty() && !requests.count(g.request_id)) {
        RequestState rs;
        rs.done = true;
        rs.result.generation = g.id;
        requests.emplace(g.request_id, std::move(rs));
        request_order.push_front(g.request_id);
      }
    }
    while (history.size() > options.history) history.pop_back();
    if (!history.empty()) state = *history.front().state;
    return {};
  }

  // The changes that bring the adopted maps to the recorded slots: a slot is right when the
  // inner map the record names (by kernel id) is the one installed there.
  Result<Generation> repair_changes(const std::vector<StoredSlot>& recorded) {
    std::map<std::pair<std::string, Bytes>, const StoredSlot*> want;
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

  void read_live_ids() {
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
  Status load_adopted_state() {
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
      }
    }
    return {};
  }
};

Committer::Committer(std::unique_ptr<Engine> engine, CommitterOptions options)
    : impl_(std::make_unique<Impl>(std::move(engine), nullptr, options)) {
  // Without a record, what the adopted slots hold only seeds rollback diffs: a slot that
  // cannot be read is logged and left out.
  if (Status st = impl_->load_adopted_state(); !st.ok()) spdlog::warn("{}", st.error().message());
  start();
}

Committer::Committer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<Committer>> Committer::open(std::unique_ptr<Engine> engine,
                                                   std::unique_ptr<StateStore> store,
                                                   CommitterOptions options) {
  auto impl = std::make_unique<Impl>(std::move(engine), std::move(store), options);
  POLICYD_TRY(impl->recover());
  std::unique_ptr<Committer> c(new Committer(std::move(impl)));
  c->start();
  return c;
}

void Committer::start() {
  impl_->publish_view();
  impl_->builder_thread = std::thread([this] { impl_->builder_loop(); });
  impl_->committer_thread = std::thread([this] { impl_->committer_loop(); });
}

Committer::~Committer() { stop(); }

void Committer::push(PushRequest request, PushCallback done) {
  auto item = std::make_shared<Impl::Item>();
  item->request = std::move(request);
  item->done = std::move(done);
  impl_->enqueue(std::move(item));
}

void Committer::rollback(uint64_t generation, uint64_t expected_generation, std::string request_id,
                         PushCallback done) {
  auto item = std::make_shared<Impl::Item>();
  item->rollback = true;
  item->rollback_to = generation;
  item->request.expected_generation = expected_generation;
  item->request.request_id = std::move(request_id);
  item->done = std::move(done);
  impl_->enqueue(std::move(item));
}

void Committer::post(std::function<void(Engine*)> fn) {
  {
    std::unique_lock lock(impl_->mu);
    if (impl_->committer_done) {
      lock.unlock();
      fn(nullptr);  // the committer is gone: answer "shutting down" right away
      return;
    }
    impl_->posts.push_back(std::move(fn));
  }
  impl_->cv.notify_all();
}

Status Committer::run_and_wait(const std::function<Status(Engine&)>& fn) {
  std::promise<Status> done;
  std::future<Status> result = done.get_future();
  post([&](Engine* engine) { done.set_value(engine ? fn(*engine) : Status(unavailable())); });
  return result.get();
}

Status Committer::add_maps(std::vector<OuterMapConfig> maps) {
  return run_and_wait([&](Engine& engine) {
    std::unique_lock maps_lock(impl_->maps_mu);
    Status st = engine.add_maps(maps);
    maps_lock.unlock();
    impl_->publish_view();
    return st;
  });
}

Status Committer::remove_maps(std::vector<std::string> maps, std::string label) {
  return run_and_wait([&](Engine& engine) -> Status {
    Impl& impl = *impl_;
    // One generation empties the maps (recorded and drained like any other), then they go.
    auto item = std::make_shared<Impl::Item>();
    item->request.generation.label = label;
    for (const auto& [key, contents] : impl.state) {
      if (std::find(maps.begin(), maps.end(), key.first) != maps.end()) {
        item->request.generation.changes.push_back(SlotChange{key.first, key.second, true, {}});
      }
    }
    Status emptied;
    if (!item->request.generation.changes.empty()) {
      item->done = [&](Result<PushResult> r) {
        if (!r.ok()) emptied = r.error();
      };
      item->digests.assign(item->request.generation.changes.size(), Digest{});
      Result<BuiltGeneration> b = engine.build(item->request.generation);
      if (!b.ok()) return b.error();
      item->built = std::move(b).value();
      impl.commit_batch({item});
    }
    if (!emptied.ok()) return emptied.error().wrap("empty the removed maps");
    std::unique_lock maps_lock(impl.maps_mu);
    Status st = engine.remove_maps(maps);
    maps_lock.unlock();
    impl.publish_view();
    return st;
  });
}

void Committer::set_history(uint32_t history) {
  post([this, history](Engine* engine) {
    if (!engine) return;
    impl_->options.history = history;
    while (impl_->history.size() > history) impl_->history.pop_back();
    impl_->publish_view();
  });
}

std::shared_ptr<const CommitterView> Committer::view() const {
  std::lock_guard lock(impl_->mu);
  return impl_->view;
}

void Committer::add_listener(std::shared_ptr<EventListener> listener) {
  std::lock_guard lock(impl_->mu);
  impl_->listeners.push_back(std::move(listener));
}

void Committer::remove_listener(const EventListener* listener) {
  std::lock_guard lock(impl_->mu);
  auto& ls = impl_->listeners;
  ls.erase(std::remove_if(ls.begin(), ls.end(), [&](auto& l) { return l.get() == listener; }),
           ls.end());
}

void Committer::stop() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  if (impl_->builder_thread.joinable()) impl_->builder_thread.join();
  if (impl_->committer_thread.joinable()) impl_->committer_thread.join();
  // Posts that raced with the stop still get an answer.
  std::deque<std::function<void(Engine*)>> late;
  {
    std::lock_guard lock(impl_->mu);
    late.swap(impl_->posts);
  }
  for (auto& fn : late) fn(nullptr);
}

}  // namespace policyd::core
