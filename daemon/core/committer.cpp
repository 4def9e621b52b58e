// Committer: accept -> build (builder thread) -> group commit (committer thread) -> ack ->
// drain -> events. The engine is touched only by the committer thread (and by build(), which is
// thread-safe by the engine's contract). Everything on the commit path costs what a batch
// changes: the state, history, occupancy and the record are updated by deltas.
#include "core/committer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <future>

#include "core/committer_impl.h"
#include "util/clock.h"

namespace policyd::core {
namespace {

Error unavailable() { return Error{ErrorCode::kUnavailable, 0, "policyd is shutting down"}; }

// Slots in use per hash_of_maps outer map as a batch is assembled. A generation that would
// need more slots than the map holds is refused before any kernel call, on its own, instead of
// failing the kernel write of the whole batch half way. Costs the slots the batch changes.
class HashOccupancy {
 public:
  HashOccupancy(const CommitEngine& engine, const SlotState& state,
                const std::map<std::string, size_t>& used)
      : engine_(engine), state_(state), used_(used) {}

  Status apply(const Generation& gen) {
    std::map<SlotKey, bool> present;
    std::map<std::string, size_t> used;
    for (const SlotChange& c : gen.changes) {
      auto cfg = engine_.maps().find(c.map);
      if (cfg == engine_.maps().end() || cfg->second.kind != OuterKind::kHash) continue;
      SlotKey key{c.map, c.slot};
      const bool was = is_present(key);
      size_t& n = used.try_emplace(c.map, count(c.map)).first->second;
      if (was && c.remove) --n;
      if (!was && !c.remove) ++n;
      present[std::move(key)] = !c.remove;
      if (n > cfg->second.slots) {
        return Error{ErrorCode::kResourceExhausted, 0,
                     "map \"" + c.map + "\" holds at most " + std::to_string(cfg->second.slots) +
                         " slots; this generation would need " + std::to_string(n)};
      }
    }
    for (auto& [key, is] : present) batch_[key] = is;
    for (auto& [map, n] : used) batch_used_[map] = n;
    return {};
  }

 private:
  bool is_present(const SlotKey& key) const {
    auto it = batch_.find(key);
    return it != batch_.end() ? it->second : state_.count(key) > 0;
  }
  size_t count(const std::string& map) const {
    if (auto it = batch_used_.find(map); it != batch_used_.end()) return it->second;
    auto it = used_.find(map);
    return it == used_.end() ? 0 : it->second;
  }

  const CommitEngine& engine_;
  const SlotState& state_;
  const std::map<std::string, size_t>& used_;
  std::map<SlotKey, bool> batch_;             // slots the batch so far changed
  std::map<std::string, size_t> batch_used_;  // per map, after the batch so far
};

}  // namespace

// ---- RecordWriter -----------------------------------------------------------------------------

RecordWriter::RecordWriter() {
  thread_ = std::thread([this] {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return job_ || stopping_; });
      if (!job_) return;
      auto job = std::move(job_);
      job_ = nullptr;
      lock.unlock();
      Status st = job();
      lock.lock();
      result_ = std::move(st);
      cv_.notify_all();
    }
  });
}

RecordWriter::~RecordWriter() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void RecordWriter::start(std::function<Status()> job) {
  {
    std::lock_guard lock(mu_);
    result_.reset();
    job_ = std::move(job);
  }
  cv_.notify_all();
}

Status RecordWriter::wait() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return result_.has_value(); });
  Status st = std::move(*result_);
  result_.reset();
  return st;
}

// ---- request ids and the pipeline -----------------------------------------------------------

void Committer::Impl::enqueue(ItemPtr item) {
  {
    std::unique_lock lock(mu);
    if (stopping) {
      lock.unlock();
      item->done(unavailable());
      return;
    }
  }
  if (!ledger.claim(item->request.request_id, item->done)) return;
  {
    std::unique_lock lock(mu);
    if (stopping) {  // stop() came between the check above and now: the builder may be gone
      lock.unlock();
      finish(item, unavailable());
      return;
    }
    accepted.push_back(std::move(item));
  }
  cv.notify_all();
}

// Delivers the result to the caller and to retries that waited on the same request id.
void Committer::Impl::finish(const ItemPtr& item, Result<PushResult> result) {
  std::vector<PushCallback> waiters = ledger.finish(item->request.request_id, result);
  item->encoded.clear();
  item->done(result);
  for (PushCallback& w : waiters) {
    Result<PushResult> copy = result;
    if (copy.ok()) copy.value().replayed = true;
    w(std::move(copy));
  }
}

void Committer::Impl::finish_unsettled(const ItemPtr& item, const PushResult& live, const Error& e,
                                       Unsettled waits_for) {
  const std::string& id = item->request.request_id;
  std::vector<PushCallback> waiters = ledger.finish_unsettled(id, live, e);
  if (!id.empty()) {
    Unsettled& u = unsettled[id];
    u.record = u.record || waits_for.record;
    u.barrier = u.barrier || waits_for.barrier;
  }
  item->encoded.clear();
  item->done(e);
  for (PushCallback& w : waiters) w(e);
}

void Committer::Impl::settle(bool record_written, bool barrier_waited) {
  for (auto it = unsettled.begin(); it != unsettled.end();) {
    if (record_written) it->second.record = false;
    if (barrier_waited) it->second.barrier = false;
    if (it->second.record || it->second.barrier) {
      ++it;
      continue;
    }
    ledger.settle(it->first);
    it = unsettled.erase(it);
  }
}

void Committer::Impl::builder_loop() {
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
      if (Status st = prepare_contents(*item); !st.ok()) {
        finish(item, st.error());
        continue;
      }
    }
    {
      std::lock_guard lock(mu);
      built.push_back(std::move(item));
    }
    cv.notify_all();
  }
}

void Committer::Impl::committer_loop() {
  for (;;) {
    std::deque<std::function<void(CommitEngine*)>> todo;
    std::vector<ItemPtr> batch;
    {
      const bool flush_due = flush_pending();
      std::unique_lock lock(mu);
      auto work = [&] {
        return !posts.empty() || !built.empty() || (builder_done && accepted.empty());
      };
      // Drained totals ride on the next commit's record; once the committer has been idle for
      // flush_delay, they get a write of their own.
      if (flush_due && !cv.wait_for(lock, flush_delay, work)) {
        lock.unlock();
        flush_idle();
        continue;
      }
      cv.wait(lock, work);
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

// What each slot holds after the item (builder thread, maps_mu held): the entries move from
// the request into shared contents; with a store they are encoded for the record here, so
// that the committer only writes them.
Status Committer::Impl::prepare_contents(Item& item) {
  item.contents.clear();
  item.encoded.clear();
  for (SlotChange& c : item.request.generation.changes) {
    if (c.remove) {
      item.contents.emplace_back();
      continue;
    }
    SlotData data;
    if (store) {
      const InnerTemplate& t = engine->maps().at(c.map).inner;
      auto e = std::make_shared<const EncodedContents>(
          encode_contents(c.entries, t.key_size, t.value_size));
      data.digest = e->digest;
      item.encoded.push_back(std::move(e));
    }
    data.entries = std::move(c.entries);
    item.contents.push_back(std::make_shared<const SlotData>(std::move(data)));
  }
  return {};
}

// ---- commit -----------------------------------------------------------------------------------

void Committer::Impl::commit_batch(std::vector<ItemPtr> items) {
  // The data plane never runs more than one batch ahead of its record: while an earlier write
  // is still unwritten and cannot be written now, pushes are refused before any kernel call.
  if (Status caught_up = catch_up_record(); !caught_up.ok()) {
    for (ItemPtr& item : items) finish(item, caught_up.error());
    return;
  }
  // G9: expected_generation is checked against the generation current after every push
  // accepted before this one.
  uint64_t current = engine->current_generation();
  std::vector<ItemPtr> ok;
  std::vector<BuiltGeneration> batch;
  HashOccupancy occupancy(*engine, state, slots_used);
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
  const std::deque<GenerationRecordPtr> saved_history = history.records();
  const uint64_t keep_from = history.oldest_id();
  const uint64_t first_id = engine->current_generation() + 1;
  std::vector<GenerationRecordPtr> records;
  for (size_t i = 0; i < ok.size(); ++i) records.push_back(record(*ok[i], first_id + i));
  std::map<SlotKey, uint32_t> next_ids;  // the slots the batch touched: their new inner ids
  for (const BuiltGeneration& b : batch) {
    for (const BuiltChange& c : b.changes) next_ids[{c.map, c.slot}] = c.inner ? c.inner->id : 0;
  }
  RecordUpdate update;
  double record_ms = 0;  // the durable write, which overlaps the swap
  if (store) {
    update = batch_update(ok, records, keep_from, next_ids);
    writer.start([this, &update, &record_ms] {
      const auto t0 = std::chrono::steady_clock::now();
      Status st = write_with_unwritten(update);
      record_ms = util::ms_since(t0);
      return st;
    });
  }
  Result<CommitReport> report = engine->commit(std::move(batch));
  Status durable = store ? writer.wait() : Status{};
  // The pins of maps drained before this batch, whose totals its record carried, go after the
  // batch's acks (the unlinks are not on their path) and before its own drain pins the maps it
  // replaced, which the record does not account for.
  const bool pins_recorded = store && report.ok() && durable.ok();
  if (report.ok()) {
    for (const auto& [key, id] : next_ids) {
      if (id)
        live_ids[key] = id;
      else
        live_ids.erase(key);
    }
    if (store && durable.ok()) {
      recorded();
    } else if (store) {
      unwritten.push_back(std::move(update));  // retried with the next write
    }
  } else {
    revert(records);
    history = History(history.limit());
    for (auto it = saved_history.rbegin(); it != saved_history.rend(); ++it) history.push(*it);
    // The record of the failed batch may be durable: put back the one the kernel holds.
    if (store && durable.ok()) {
      written();
      RecordUpdate undo = undo_update(records);
      Status back = store->write(undo);
      if (!back.ok()) {
        // Retried before anything else is recorded: the record must not keep the refused batch.
        spdlog::error("{}", back.error().wrap("undo the record of a refused batch").message());
        unwritten.push_back(std::move(undo));
      }
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
  if (report->barrier_failed) {
    // G4: no grace period is known to have passed since the atomic-group flip: no ack, and what
    // the batch replaced is not drained until a later commit has waited (the engine holds it).
    Error e = *report->barrier_failed;
    e.code = ErrorCode::kInternal;  // whatever the errno: the generation is live, not refused
    e.context = "generation " + std::to_string(report->last_generation) +
                " is live but not acknowledged: " + e.context +
                "; the maps it replaced are drained after the next successful commit (or the "
                "barrier policyd waits when idle), and then a retry with its request id gets it";
    spdlog::error("{}", e.message());
    for (size_t i = 0; i < ok.size(); ++i) {
      finish_unsettled(ok[i], result_of(*ok[i], *report, i, ok.size()), e, {!durable.ok(), true});
    }
    if (pins_recorded) engine->release_drained();
    for_each_listener([&](EventListener& l) { l.on_committed(event); });
    drain_and_publish();
    return;
  }
  // A commit that waited (it wrote a slot): pushes a failed barrier left unacknowledged are past
  // a grace period. One that wrote nothing waited for nothing.
  if (report->rounds > 0) settle(false, true);
  if (!durable.ok()) {
    // The data plane holds the batch but the record does not: no ack (G8). A restart before
    // the next successful write brings back the generation recorded before.
    const Error e = durable.error().wrap(
        "generation " + std::to_string(report->last_generation) +
        " is live but could not be recorded in " + store->dir() +
        "; it is not acknowledged, and a restart before the next successful record would "
        "restore generation " +
        std::to_string(report->first_generation - 1));
    spdlog::error("{}", e.message());
    for (size_t i = 0; i < ok.size(); ++i) {
      finish_unsettled(ok[i], result_of(*ok[i], *report, i, ok.size()), e, {true, false});
    }
    for_each_listener([&](EventListener& l) { l.on_committed(event); });
    drain_and_publish();
    return;
  }
  // G4: commit() returned after the barrier, so acking now is safe.
  for (size_t i = 0; i < ok.size(); ++i) finish(ok[i], result_of(*ok[i], *report, i, ok.size()));
  if (pins_recorded) engine->release_drained();
  for_each_listener([&](EventListener& l) { l.on_committed(event); });
  const double drain_ms = drain_and_publish();
  for (size_t i = 0; i < ok.size(); ++i) {
    spdlog::info(
        "committed generation {} label \"{}\": {} slot change(s); build {:.2f} ms, swap {:.2f} "
        "ms, barrier {:.2f} ms, record {:.2f} ms (during the swap), drain {:.2f} ms; {} "
        "generation(s) under this barrier",
        report->first_generation + i, records[i]->label, records[i]->changes, build_ms,
        report->write_ms, report->barrier_ms, record_ms, drain_ms, ok.size());
  }
  publish_view();
}

// What the i-th of a committed batch of n gets back.
PushResult Committer::Impl::result_of(const Item& item, const CommitReport& report, size_t i,
                                      size_t n) {
  PushResult r;
  r.generation = report.first_generation + i;
  r.batch_size = static_cast<uint32_t>(n);
  if (item.rollback) r.restored = item.rollback_to;
  return r;
}

// The first map a generation names that the engine no longer has, or "".
std::string Committer::Impl::removed_map(const Generation& gen) const {
  for (const SlotChange& c : gen.changes) {
    if (!engine->maps().count(c.map)) return c.map;
  }
  return "";
}

// Rebuilds one generation of a failed batch and commits it on its own (expected_generation
// is checked again against the generation current now).
void Committer::Impl::retry_alone(const ItemPtr& item) {
  Generation gen;
  gen.label = item->request.generation.label;
  for (size_t i = 0; i < item->request.generation.changes.size(); ++i) {
    const SlotChange& c = item->request.generation.changes[i];
    const SlotContents& contents = item->contents[i];
    gen.changes.push_back(
        SlotChange{c.map, c.slot, c.remove, contents ? contents->entries : std::vector<Entry>{}});
  }
  Result<BuiltGeneration> b = engine->build(gen);
  if (!b.ok()) {
    finish(item, std::move(b).error());
    return;
  }
  item->built = std::move(b).value();
  commit_batch({item});
}

void Committer::Impl::run_rollback(const ItemPtr& item) {
  uint64_t target = item->rollback_to;
  if (target == 0) {
    target = history.previous_id();
    if (target == 0) {
      finish(item, Error{ErrorCode::kNotFound, 0, "no earlier generation in the history"});
      return;
    }
  }
  Result<RollbackPlan> plan = history.rollback_to(target, state);
  if (!plan.ok()) {
    finish(item, plan.error());
    return;
  }
  if (plan->changes.empty()) {
    finish(item, failed_precondition("the data plane already holds the state of generation " +
                                     std::to_string(target)));
    return;
  }
  // The changes that turn the current state into the recorded one; their contents are in the
  // record already (the history names them).
  Generation gen;
  gen.label = "rollback to " + std::to_string(target);
  item->contents.clear();
  for (auto& [key, contents] : plan->changes) {
    gen.changes.push_back(SlotChange{key.first, key.second, !contents,
                                     contents ? contents->entries : std::vector<Entry>{}});
    item->contents.push_back(contents);
  }
  Result<BuiltGeneration> b = engine->build(gen);
  if (!b.ok()) {
    finish(item, std::move(b).error());
    return;
  }
  for (SlotChange& c : gen.changes) c.entries.clear();  // the contents hold them
  item->request.generation = std::move(gen);
  item->built = std::move(b).value();
  item->rollback_to = target;  // reported back as PushResult::restored
  commit_batch({item});
}

// Applies a committed generation to the state and returns its history record (pushed into
// the history).
GenerationRecordPtr Committer::Impl::record(const Item& item, uint64_t id) {
  const Generation& gen = item.request.generation;
  auto rec = std::make_shared<GenerationRecord>();
  rec->id = id;
  rec->label = gen.label;
  rec->committed_unix_ms = util::unix_ms_now();
  rec->changes = static_cast<uint32_t>(gen.changes.size());
  rec->request_id = item.request.request_id;
  std::vector<std::pair<SlotKey, SlotContents>> changes;
  changes.reserve(gen.changes.size());
  for (size_t i = 0; i < gen.changes.size(); ++i) {
    const SlotContents& contents = item.contents[i];
    if (contents) rec->entries += contents->entries.size();
    changes.emplace_back(SlotKey{gen.changes[i].map, gen.changes[i].slot}, contents);
  }
  rec->changed = apply_changes(state, std::move(changes));
  count_slots(rec->changed, +1);
  history.push(rec);
  return rec;
}

// Takes the batch's generations back out of the state (newest first).
void Committer::Impl::revert(const std::vector<GenerationRecordPtr>& records) {
  for (auto rec = records.rbegin(); rec != records.rend(); ++rec) {
    count_slots((*rec)->changed, -1);
    for (auto d = (*rec)->changed.rbegin(); d != (*rec)->changed.rend(); ++d) {
      if (d->before)
        state[d->key] = d->before;
      else
        state.erase(d->key);
    }
  }
}

// Keeps slots_used in step with deltas applied (+1) or reverted (-1).
void Committer::Impl::count_slots(const std::vector<SlotDelta>& deltas, int sign) {
  for (const SlotDelta& d : deltas) {
    const int change = (d.after ? 1 : 0) - (d.before ? 1 : 0);
    if (change != 0) slots_used[d.key.first] += static_cast<size_t>(sign * change);
  }
}

// ---- durable record (G8) ----------------------------------------------------------------------

// What a batch changes in the record: its contents, its generations as the slots they
// changed, the slots it touched with their new inner ids, history beyond `keep_from`.
RecordUpdate Committer::Impl::batch_update(const std::vector<ItemPtr>& items,
                                           const std::vector<GenerationRecordPtr>& records,
                                           uint64_t keep_from,
                                           const std::map<SlotKey, uint32_t>& ids) {
  RecordUpdate up;
  for (const ItemPtr& item : items) {
    up.contents.insert(up.contents.end(), item->encoded.begin(), item->encoded.end());
  }
  for (const GenerationRecordPtr& rec : records) {
    StoredGeneration g;
    static_cast<GenerationMeta&>(g) = *rec;
    for (const SlotDelta& d : rec->changed) {
      g.slots.push_back({d.key.first, d.key.second, d.after ? d.after->digest : Digest{},
                         d.before ? d.before->digest : Digest{}});
    }
    up.generations.push_back(std::move(g));
  }
  for (const auto& [key, id] : ids) {
    auto it = state.find(key);
    up.slots.push_back(
        {key.first, key.second, it == state.end() ? Digest{} : it->second->digest, id});
  }
  up.generation = records.back()->id;
  // History beyond its bound before this batch goes; a kernel failure of the batch then
  // leaves the record's history as it was.
  up.keep_from = keep_from;
  add_drain_state(up);
  return up;
}

// The record of the state the kernel still holds after it refused a batch whose record was
// written: the batch's generations go, the slots it touched get their contents back.
RecordUpdate Committer::Impl::undo_update(const std::vector<GenerationRecordPtr>& records) {
  RecordUpdate up;
  up.drop_from = records.front()->id;
  up.generation = records.front()->id - 1;
  std::set<SlotKey> touched;
  for (const GenerationRecordPtr& rec : records) {
    for (const SlotDelta& d : rec->changed) touched.insert(d.key);
  }
  for (const SlotKey& key : touched) {
    auto it = state.find(key);
    auto id = live_ids.find(key);
    up.slots.push_back({key.first, key.second, it == state.end() ? Digest{} : it->second->digest,
                        id == live_ids.end() ? 0 : id->second});
  }
  add_drain_state(up);
  return up;
}

// The drained totals that moved since the last record, and the drained maps still pinned.
void Committer::Impl::add_drain_state(RecordUpdate& up) const {
  const auto& totals = engine->drained_totals();
  for (const CounterKey& key : dirty_totals) {
    auto it = totals.find(key);
    if (it != totals.end()) up.totals.push_back({key.map, key.slot, key.field, it->second});
  }
  up.drained_inner_ids = engine->unreleased_drains();
}

// Writes `update` after the updates whose write failed, in one transaction.
Status Committer::Impl::write_with_unwritten(const RecordUpdate& update) {
  std::vector<const RecordUpdate*> all;
  for (const RecordUpdate& u : unwritten) all.push_back(&u);
  all.push_back(&update);
  Status st = store->write(all);
  if (!st.ok()) return st.error().wrap("record generation state in " + store->dir());
  return {};
}

// After a successful write: what it carried is durable, the pins of drained maps it accounts
// for may go (written() unpins them; a commit calls recorded() and unpins them after its acks).
// The record still lists their ids until the next write (an idle flush, if no commit comes
// first, so that the record does not keep naming maps that are gone).
void Committer::Impl::written() {
  recorded();
  engine->release_drained();
}

void Committer::Impl::recorded() {
  drained_ids_listed = !engine->unreleased_drains().empty();
  unwritten.clear();
  dirty_totals.clear();
  settle(true, false);  // the generations whose record had failed are recorded now
}

// Writes the updates a failed write left (nothing to do in the normal case).
Status Committer::Impl::catch_up_record() {
  if (!store || unwritten.empty()) return {};
  RecordUpdate up;
  add_drain_state(up);
  Status st = write_with_unwritten(up);
  if (!st.ok()) {
    return Error{ErrorCode::kUnavailable, 0,
                 "the record in " + store->dir() + " cannot be written (" + st.error().message() +
                     "); the push changed nothing. Retry once state_dir is writable again"};
  }
  written();
  return {};
}

bool Committer::Impl::flush_pending() const { return record_pending() || barrier_pending(); }

bool Committer::Impl::record_pending() const {
  return store && (drained_ids_listed || !dirty_totals.empty() || !unwritten.empty() ||
                   !engine->unreleased_drains().empty());
}

bool Committer::Impl::barrier_pending() const {
  return std::any_of(unsettled.begin(), unsettled.end(),
                     [](const auto& u) { return u.second.barrier; });
}

// What a commit would have carried, when no commit is waiting to: an explicit barrier for
// pushes a failed barrier left unacknowledged (their retries wait for it, and so does the drain
// of what they replaced), and what the record lacks (drained totals and pins, a write that
// failed). A failing barrier or write is retried with a doubling delay (up to 5 s), so a broken
// disk logs a few lines, not a flood.
void Committer::Impl::flush_idle() {
  if (!flush_pending()) return;
  {
    std::lock_guard lock(mu);
    if (!built.empty() || !accepted.empty()) return;
  }
  bool failed = false;
  if (barrier_pending()) {
    Status waited = engine->barrier();
    if (waited.ok()) {
      settle(false, true);
      drain_and_publish();  // what the failed barrier held back
    } else {
      spdlog::error("{}", waited.error().wrap("settle unacknowledged generations").message());
      failed = true;
    }
  }
  if (record_pending()) {
    RecordUpdate up;
    add_drain_state(up);
    Status st = write_with_unwritten(up);
    if (st.ok()) {
      written();
    } else {
      spdlog::error("{}", st.error().message());
      failed = true;
    }
  }
  const auto longest = std::max(options.idle_flush_delay, std::chrono::milliseconds(5000));
  flush_delay = failed ? std::min(flush_delay * 2, longest) : options.idle_flush_delay;
}

// ---- events and the view ------------------------------------------------------------------

// Drains every replaced inner map and publishes a Drained event per map; returns the time.
double Committer::Impl::drain_and_publish() {
  auto t0 = std::chrono::steady_clock::now();
  Result<std::vector<DrainRecord>> records = engine->drain();
  const double ms = util::ms_since(t0);
  if (!records.ok()) {
    spdlog::error("drain: {} (kept pending, retried after the next commit)",
                  records.error().message());
    return ms;
  }
  for (DrainRecord& r : *records) {
    for (const auto& [field, sum] : r.counters) dirty_totals.insert({r.map, r.slot, field});
    DrainedEvent e{std::move(r)};
    for_each_listener([&](EventListener& l) { l.on_drained(e); });
  }
  const DrainFinishedEvent finished{ms, records->size()};
  for_each_listener([&](EventListener& l) { l.on_drain_finished(finished); });
  return ms;
}

void Committer::Impl::for_each_listener(const std::function<void(EventListener&)>& fn) {
  std::vector<std::shared_ptr<EventListener>> copy;
  {
    std::lock_guard lock(mu);
    copy = listeners;
  }
  for (auto& l : copy) fn(*l);
}

void Committer::Impl::publish_view() {
  auto v = std::make_shared<CommitterView>();
  v->generation = engine->current_generation();
  v->label = history.empty() ? "" : history.newest().label;
  v->history.assign(history.records().begin(), history.records().end());
  v->stats = engine->stats();
  v->strategy = engine->strategy();
  v->kernel = engine->kernel_release();
  for (const auto& [name, cfg] : engine->maps()) v->maps.push_back(name);
  std::lock_guard lock(mu);
  view = std::move(v);
}

// ---- Committer ----------------------------------------------------------------------------

Committer::Committer(std::unique_ptr<CommitEngine> engine, CommitterOptions options)
    : impl_(std::make_unique<Impl>(std::move(engine), nullptr, options)) {
  // Without a record, what the adopted slots hold only seeds rollback diffs: a slot that
  // cannot be read is logged and left out.
  if (Status st = impl_->load_adopted_state(); !st.ok()) spdlog::warn("{}", st.error().message());
  start();
}

Committer::Committer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<Committer>> Committer::open(std::unique_ptr<CommitEngine> engine,
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

void Committer::post(std::function<void(CommitEngine*)> fn) {
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

Status Committer::run_and_wait(const std::function<Status(CommitEngine&)>& fn) {
  std::promise<Status> done;
  std::future<Status> result = done.get_future();
  post([&](CommitEngine* engine) { done.set_value(engine ? fn(*engine) : Status(unavailable())); });
  return result.get();
}

Status Committer::add_maps(std::vector<OuterMapConfig> maps) {
  return run_and_wait([&](CommitEngine& engine) {
    std::unique_lock maps_lock(impl_->maps_mu);
    Status st = engine.add_maps(maps);
    maps_lock.unlock();
    impl_->publish_view();
    return st;
  });
}

Status Committer::forget_added_maps(std::vector<std::string> maps) {
  return run_and_wait([&](CommitEngine& engine) {
    std::unique_lock maps_lock(impl_->maps_mu);
    engine.forget_added_maps(maps);
    maps_lock.unlock();
    impl_->publish_view();
    return Status{};
  });
}

Status Committer::remove_maps(std::vector<std::string> maps, std::string label) {
  return run_and_wait([&](CommitEngine& engine) -> Status {
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
      item->contents.assign(item->request.generation.changes.size(), nullptr);
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
  post([this, history](CommitEngine* engine) {
    if (!engine) return;
    impl_->options.history = history;
    impl_->history.set_limit(history);
    impl_->publish_view();
  });
}

std::shared_ptr<const CommitterView> Committer::view() const {
  std::lock_guard lock(impl_->mu);
  return impl_->view;
}

Committer::QueueDepth Committer::queue_depth() const {
  std::lock_guard lock(impl_->mu);
  return {impl_->accepted.size(), impl_->built.size()};
}

bool Committer::Impl::stopped() const {
  std::lock_guard lock(mu);
  return stopping;
}

Result<StateSnapshot> Committer::state_snapshot() const {
  if (impl_->stopped()) return unavailable();
  return impl_->engine->state_snapshot();
}

Result<CounterReading> Committer::read_counters(const std::string& only) const {
  if (impl_->stopped()) return unavailable();
  return impl_->engine->read_counters(only);
}

Result<DrainRecord> Committer::read_slot(const std::string& map, const Bytes& slot) const {
  if (impl_->stopped()) return unavailable();
  return impl_->engine->read_slot(map, slot);
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
  std::deque<std::function<void(CommitEngine*)>> late;
  {
    std::lock_guard lock(impl_->mu);
    late.swap(impl_->posts);
  }
  for (auto& fn : late) fn(nullptr);
}

}  // namespace policyd::core
