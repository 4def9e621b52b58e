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
#include <set>
#include <shared_mutex>
#include <thread>

namespace policyd::core {
namespace {

int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

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
      if (c.remove) used.erase(c.slot);
      else used.insert(c.slot);
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
  };
  using ItemPtr = std::shared_ptr<Item>;

  // What is known about a request id: its result, or who waits for it.
  struct RequestState {
    bool done = false;
    PushResult result;
    std::vector<PushCallback> waiters;
  };

  std::unique_ptr<Engine> engine;
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
  std::deque<GenerationRecord> history;  // newest first

  std::thread builder_thread;
  std::thread committer_thread;

  Impl(std::unique_ptr<Engine> e, CommitterOptions o) : engine(std::move(e)), options(o) {}

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
          return;
        }
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

  // ---- commit --------------------------------------------------------------------------------

  void commit_batch(std::vector<ItemPtr> items) {
    // G9: expected_generation is checked against the generation current after every push
    // accepted before this one.
    uint64_t current = engine->current_generation();
    std::vector<ItemPtr> ok;
    std::vector<BuiltGeneration> batch;
    HashOccupancy occupancy(*engine);
    for (ItemPtr& item : items) {
      const uint64_t expected = item->request.expected_generation;
      if (expected != 0 && expected != current) {
        finish(item, failed_precondition("expected generation " + std::to_string(expected) +
                                         ", but the current generation is " +
                                         std::to_string(current)));
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
    Result<CommitReport> report = engine->commit(std::move(batch));
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
      return;
    }

    CommittedEvent event;
    event.slots_written = report->slots_written;
    event.build_ms = build_ms;
    event.swap_ms = report->write_ms;
    event.barrier_ms = report->barrier_ms;
    for (size_t i = 0; i < ok.size(); ++i) {
      const uint64_t id = report->first_generation + i;
      record(*ok[i], id);
      event.generations.push_back(id);
      event.labels.push_back(ok[i]->request.generation.label);
    }
    // Readers (ListGenerations, GetState) must see a generation once its push is acked.
    publish_view();
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
    for (size_t i = 0; i < ok.size(); ++i) {
      const Generation& gen = ok[i]->request.generation;
      spdlog::info(
          "committed generation {} label \"{}\": {} slot change(s); build {:.2f} ms, swap {:.2f} "
          "ms, barrier {:.2f} ms, drain {:.2f} ms; {} generation(s) under this barrier",
          report->first_generation + i, gen.label, gen.changes.size(), build_ms,
          report->write_ms, report->barrier_ms, drain_ms, ok.size());
    }
    publish_view();
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
    for (const auto& [key, contents] : want) {
      auto cur = state.find(key);
      if (cur != state.end() && cur->second == contents) continue;
      gen.changes.push_back(SlotChange{key.first, key.second, false, *contents});
    }
    for (const auto& [key, contents] : state) {
      if (!want.count(key)) gen.changes.push_back(SlotChange{key.first, key.second, true, {}});
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
    item->rollback_to = target;  // reported back as PushResult::restored
    commit_batch({item});
  }

  // Applies a committed generation to the state and records it in the history.
  void record(const Item& item, uint64_t id) {
    const Generation& gen = item.request.generation;
    GenerationRecord rec;
    rec.id = id;
    rec.label = gen.label;
    rec.committed_unix_ms = unix_ms_now();
    rec.changes = static_cast<uint32_t>(gen.changes.size());
    rec.request_id = item.request.request_id;
    for (const SlotChange& c : gen.changes) {
      rec.entries += c.entries.size();
      auto key = std::make_pair(c.map, c.slot);
      if (c.remove) state.erase(key);
      else state[key] = std::make_shared<const std::vector<Entry>>(c.entries);
    }
    rec.state = std::make_shared<const StateSnapshot>(state);
    history.push_front(std::move(rec));
    while (history.size() > options.history) history.pop_back();
  }

  // Drains every replaced inner map and publishes a Drained event per map; returns the time.
  double drain_and_publish() {
    auto t0 = std::chrono::steady_clock::now();
    Result<std::vector<DrainRecord>> records = engine->drain();
    const double ms = ms_since(t0);
    if (!records.ok()) {
      spdlog::error("drain: {} (kept pending, retried after the next commit)",
                    records.error().message());
      return ms;
    }
    for (DrainRecord& r : *records) {
      DrainedEvent e{std::move(r)};
      for_each_listener([&](EventListener& l) { l.on_drained(e); });
    }
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

  // Reads what adopted slots hold, so that rollback diffs start from the truth.
  void load_adopted_state() {
    for (const auto& [name, cfg] : engine->maps()) {
      Result<std::vector<SlotInfo>> slots = engine->slots(name);
      if (!slots.ok()) continue;
      for (const SlotInfo& s : *slots) {
        Result<DrainRecord> dump = engine->dump_slot(name, s.slot);
        if (!dump.ok()) {
          spdlog::warn("read adopted map \"{}\": {}", name, dump.error().message());
          continue;
        }
        std::vector<Entry> entries;
        for (DrainedEntry& e : dump->entries) {
          entries.push_back(Entry{std::move(e.key), std::move(e.values.front())});
        }
        state[{name, s.slot}] = std::make_shared<const std::vector<Entry>>(std::move(entries));
      }
    }
  }
};

Committer::Committer(std::unique_ptr<Engine> engine, CommitterOptions options)
    : impl_(std::make_unique<Impl>(std::move(engine), options)) {
  impl_->load_adopted_state();
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

void Committer::rollback(uint64_t generation, uint64_t expected_generation,
                         std::string request_id, PushCallback done) {
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

Status Committer::add_maps(std::vector<OuterMapConfig> maps) {
  std::promise<Status> done;
  std::future<Status> result = done.get_future();
  post([&](Engine* engine) {
    if (!engine) {
      done.set_value(unavailable());
      return;
    }
    std::unique_lock maps_lock(impl_->maps_mu);
    Status st = engine->add_maps(maps);
    maps_lock.unlock();
    impl_->publish_view();
    done.set_value(std::move(st));
  });
  return result.get();
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
