// PolicyService: RPC handlers, the push stream, the event watchers and the reload thread.
//
// Reactor rules followed here (gRPC 1.51 callback API): every reactor is finished exactly once,
// possibly from a committer thread; a reactor is touched only until its OnDone; no reactor call
// is made while holding one of our mutexes.
#include "api/service.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "api/convert.h"
#include "api/status.h"
#include "util/clock.h"

namespace policyd::api {
namespace {

grpc::Status not_found(std::string context) {
  return to_grpc_status(Error{ErrorCode::kNotFound, 0, std::move(context)});
}

// A write (push or rollback) ends with `status`: a failure is reported to the observer, if any.
grpc::Status observed(const std::shared_ptr<ApiObserver>& observer, grpc::Status status) {
  if (observer && !status.ok()) observer->on_push_failed(status.error_code());
  return status;
}

const config::MapSchema* find_schema(const config::DaemonConfig& config, const std::string& map) {
  auto it = config.schemas.find(map);
  return it == config.schemas.end() ? nullptr : &it->second;
}

const core::OuterMapConfig* find_map(const config::DaemonConfig& config, const std::string& map) {
  for (const core::OuterMapConfig& m : config.engine.maps) {
    if (m.name == map) return &m;
  }
  return nullptr;
}

// On a reader thread. The generation, its label and the slots come from one engine snapshot
// (the data plane at one instant), the counts of barriers and generations from the view. Maps
// in configuration order, then any the engine still holds that the configuration no longer
// lists (kept by a reload).
Result<v1::GetStateResponse> read_state(const core::Committer& committer,
                                        const config::DaemonConfig& config) {
  POLICYD_ASSIGN_OR_RETURN(core::StateSnapshot state, committer.state_snapshot());
  const std::vector<core::MapSnapshot>& maps = state.maps;
  v1::GetStateResponse out;
  to_state_header(*committer.view(), &out);
  out.set_generation(state.generation);
  out.set_label(state.label);
  std::vector<const core::MapSnapshot*> order;
  for (const core::OuterMapConfig& m : config.engine.maps) {
    for (const core::MapSnapshot& s : maps) {
      if (s.config.name == m.name) order.push_back(&s);
    }
  }
  for (const core::MapSnapshot& s : maps) {
    if (!find_map(config, s.config.name)) order.push_back(&s);
  }
  for (const core::MapSnapshot* m : order) {
    to_map_state(m->config, find_schema(config, m->config.name), m->pin, m->live, out.add_maps());
  }
  return out;
}

grpc::Status too_many_reads(size_t limit) {
  return to_grpc_status(
      Error{ErrorCode::kResourceExhausted, 0,
            std::to_string(limit) + " reads of live state are waiting already; retry later"});
}

}  // namespace

// ---- events --------------------------------------------------------------------------------

// What the hub feeds one watcher: a bounded queue written one event at a time. Shared by the
// hub and the watcher's reactor, so it outlives whichever of them goes first.
//
// Decisions are taken under `mu`; the reactor calls they lead to are made after unlocking
// (gRPC could, in corner cases, run a reaction on the calling thread). That is safe because
// while `writing` is set only the write's completion may touch the reactor, and once `finished`
// is set only the one Finish call does; OnDone (which frees the reactor) comes after both.
struct WatchFeed {
  // What to do to the reactor once the lock is released.
  struct Action {
    const v1::Event* write = nullptr;
    std::optional<grpc::Status> finish;
  };

  std::mutex mu;
  grpc::ServerWriteReactor<v1::Event>* reactor = nullptr;  // valid until the reactor's OnDone
  std::deque<v1::Event> queue;                             // front: being written
  bool writing = false;
  bool finished = false;                 // Finish called or decided: no more writes
  std::optional<grpc::Status> deferred;  // Finish waiting for the write in flight

  static void act(grpc::ServerWriteReactor<v1::Event>* r, Action a) {
    if (a.write) r->StartWrite(a.write);
    if (a.finish) r->Finish(std::move(*a.finish));
  }

  void offer(const v1::Event& event) {
    Action a;
    grpc::ServerWriteReactor<v1::Event>* r = nullptr;
    {
      std::lock_guard lock(mu);
      if (finished) return;
      r = reactor;
      if (queue.size() >= kMaxWatchLag) {
        a = finish_locked(to_grpc_status(
            Error{ErrorCode::kResourceExhausted, 0,
                  "watcher fell more than " + std::to_string(kMaxWatchLag) + " events behind"}));
      } else {
        queue.push_back(event);  // a deque keeps the front's address on push_back
        if (!writing) {
          writing = true;
          a.write = &queue.front();
        }
      }
    }
    act(r, std::move(a));
  }

  void write_done(bool ok) {
    Action a;
    grpc::ServerWriteReactor<v1::Event>* r = nullptr;
    {
      std::lock_guard lock(mu);
      r = reactor;
      queue.pop_front();
      writing = false;
      if (deferred) {
        a.finish = std::move(deferred);
        deferred.reset();
      } else if (finished) {
        return;
      } else if (!ok) {  // the stream is broken (cancelled, or the peer went away)
        a = finish_locked(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      } else if (!queue.empty()) {
        writing = true;
        a.write = &queue.front();
      }
    }
    act(r, std::move(a));
  }

  void cancel() {
    Action a;
    grpc::ServerWriteReactor<v1::Event>* r = nullptr;
    {
      std::lock_guard lock(mu);
      if (finished) return;
      r = reactor;
      a = finish_locked(grpc::Status::CANCELLED);
    }
    act(r, std::move(a));
  }

  Action finish_locked(grpc::Status status) {
    finished = true;
    if (writing) {
      // Finish once the write in flight is done; what was queued behind it is dropped.
      queue.erase(queue.begin() + 1, queue.end());
      deferred = std::move(status);
      return {};
    }
    queue.clear();
    return Action{nullptr, std::move(status)};
  }
};

// The service's one committer listener: converts each event once and fans it out.
class PolicyService::EventHub final : public core::EventListener {
 public:
  explicit EventHub(ConfigSource config) : config_(std::move(config)) {}

  void on_committed(const core::CommittedEvent& e) override {
    if (!enter()) return;
    publish(to_event(e, util::unix_ms_now()));
    leave();
  }

  void on_drained(const core::DrainedEvent& e) override {
    if (!enter()) return;
    core::OuterKind kind = core::OuterKind::kHash;  // hex, for a map no longer configured
    if (auto cfg = config_()) {
      if (const core::OuterMapConfig* m = find_map(*cfg, e.record.map)) kind = m->kind;
    }
    publish(to_event(e, kind, util::unix_ms_now()));
    leave();
  }

  void publish(const v1::Event& event) {
    std::vector<std::shared_ptr<WatchFeed>> feeds;
    {
      std::lock_guard lock(mu_);
      feeds = feeds_;
    }
    for (auto& f : feeds) f->offer(event);
  }

  void add(std::shared_ptr<WatchFeed> feed) {
    std::lock_guard lock(mu_);
    feeds_.push_back(std::move(feed));
  }

  // Watchers still being fed (a finished one may wait a while for its last write).
  size_t active() {
    std::lock_guard lock(mu_);
    size_t n = 0;
    for (auto& f : feeds_) {
      std::lock_guard feed_lock(f->mu);
      n += f->finished ? 0 : 1;
    }
    return n;
  }

  void remove(const WatchFeed* feed) {
    std::lock_guard lock(mu_);
    std::erase_if(feeds_, [&](const auto& f) { return f.get() == feed; });
  }

  // After close() returns no listener call is running or will run (the committer may still
  // hold the hub for a moment after remove_listener).
  void close() {
    std::unique_lock lock(mu_);
    closed_ = true;
    idle_.wait(lock, [&] { return active_ == 0; });
  }

 private:
  bool enter() {
    std::lock_guard lock(mu_);
    if (closed_) return false;
    ++active_;
    return true;
  }
  void leave() {
    std::lock_guard lock(mu_);
    if (--active_ == 0) idle_.notify_all();
  }

  ConfigSource config_;
  std::mutex mu_;
  std::condition_variable idle_;
  std::vector<std::shared_ptr<WatchFeed>> feeds_;
  int active_ = 0;
  bool closed_ = false;
};

class PolicyService::Watcher final : public grpc::ServerWriteReactor<v1::Event> {
 public:
  // `quota` is what the stream holds of its caller's WatchQuota (released when it ends); null
  // when it holds none.
  Watcher(std::shared_ptr<EventHub> hub, const grpc::Status& denied,
          std::shared_ptr<WatchQuota> quota, std::string owner)
      : hub_(std::move(hub)),
        feed_(std::make_shared<WatchFeed>()),
        quota_(std::move(quota)),
        owner_(std::move(owner)) {
    feed_->reactor = this;
    if (!denied.ok()) {
      feed_->finished = true;
      Finish(denied);
      return;
    }
    // Headers go out at once, so a client can wait for them to know the watch is in place
    // before it acts (ClientReader::WaitForInitialMetadata).
    StartSendInitialMetadata();
    hub_->add(feed_);
  }

  void OnWriteDone(bool ok) override { feed_->write_done(ok); }

  void OnCancel() override { feed_->cancel(); }

  void OnDone() override {
    if (quota_) quota_->release(owner_);
    hub_->remove(feed_.get());
    {
      std::lock_guard lock(feed_->mu);
      feed_->reactor = nullptr;
    }
    delete this;
  }

 private:
  std::shared_ptr<EventHub> hub_;
  std::shared_ptr<WatchFeed> feed_;
  std::shared_ptr<WatchQuota> quota_;
  std::string owner_;
};

// ---- push stream ---------------------------------------------------------------------------

class PolicyService::PushStream final : public grpc::ServerReadReactor<v1::PushGenerationRequest> {
 public:
  PushStream(core::Committer& committer, std::shared_ptr<const config::DaemonConfig> config,
             grpc::CallbackServerContext* ctx, v1::PushGenerationResponse* response,
             const grpc::Status& denied, std::shared_ptr<ApiObserver> observer)
      : committer_(committer),
        config_(std::move(config)),
        assembler_(*config_),
        ctx_(ctx),
        response_(response),
        observer_(std::move(observer)) {
    if (!denied.ok()) {
      Finish(observed(observer_, denied));
      return;
    }
    StartRead(&message_);
  }

  void OnReadDone(bool ok) override {
    if (ok) {
      Status st = assembler_.add(message_);
      if (!st.ok()) {
        Finish(observed(observer_, to_grpc_status(st.error())));
        return;
      }
      message_.Clear();
      StartRead(&message_);
      return;
    }
    // No more messages: the client half-closed, or went away. Only the former commits.
    if (ctx_->IsCancelled()) {
      Finish(observed(observer_, grpc::Status(grpc::StatusCode::CANCELLED,
                                              "push stream cancelled; nothing committed")));
      return;
    }
    if (assembler_.messages() == 0) {
      Finish(observed(observer_,
                      to_grpc_status(invalid_argument("the push stream carried no message"))));
      return;
    }
    committer_.push(assembler_.take(), [this](Result<core::PushResult> r) {
      if (!r.ok()) {
        Finish(observed(observer_, to_grpc_status(r.error())));
        return;
      }
      to_proto(*r, response_);
      Finish(grpc::Status::OK);
    });
  }

  void OnDone() override { delete this; }

 private:
  core::Committer& committer_;
  std::shared_ptr<const config::DaemonConfig> config_;  // the assembler refers to it
  PushAssembler assembler_;
  grpc::CallbackServerContext* ctx_;
  v1::PushGenerationResponse* response_;
  v1::PushGenerationRequest message_;
  std::shared_ptr<ApiObserver> observer_;
};

// ---- reloads -------------------------------------------------------------------------------

// Reload hooks block (file I/O, waits for the committer): they run on the service's reload
// queue, one at a time, never on a gRPC thread. Jobs queued when the service goes away still
// run, so their RPCs finish.

// ---- the service ---------------------------------------------------------------------------

PolicyService::PolicyService(core::Committer& committer, ConfigSource config,
                             std::shared_ptr<const Authorizer> authorizer, ReloadHook reload,
                             std::shared_ptr<ApiObserver> observer,
                             std::shared_ptr<WatchQuota> watch_quota)
    : committer_(committer),
      config_(std::move(config)),
      authorizer_(std::move(authorizer)),
      reload_(std::move(reload)),
      observer_(std::move(observer)),
      watch_quota_(std::move(watch_quota)),
      hub_(std::make_shared<EventHub>(config_)),
      reloads_(std::make_unique<util::JobQueue>(1, 0)),
      readers_(std::make_unique<util::JobQueue>(kReadThreads, kMaxWaitingReads)),
      refusals_(std::make_unique<util::LogThrottle>()) {
  committer_.add_listener(hub_);
}

PolicyService::~PolicyService() {
  readers_.reset();  // finishes queued reads
  reloads_.reset();  // finishes queued reloads, which publish through the hub
  committer_.remove_listener(hub_.get());
  hub_->close();
}

void PolicyService::read(std::function<void()> job, grpc::ServerUnaryReactor* reactor) {
  if (!readers_->try_run(std::move(job))) reactor->Finish(too_many_reads(readers_->max_waiting()));
}

void PolicyService::publish_reloaded(const ReloadSummary& summary) {
  hub_->publish(to_event(summary, util::unix_ms_now()));
}

size_t PolicyService::watchers() const { return hub_->active(); }

grpc::Status PolicyService::authorize(const grpc::CallbackServerContext& ctx, Access need,
                                      const char* rpc) const {
  const Access have = authorizer_ ? authorizer_->access(ctx) : Access::kNone;
  if (permits(have, need)) return grpc::Status::OK;
  const std::string who = authorizer_ ? authorizer_->describe(ctx) : ctx.peer();
  const std::string why = std::string(rpc) + " needs " + to_string(need) + " access; the caller (" +
                          who + ") has " + to_string(have);
  // A caller repeating a call it may not make must not flood the log: one line per second for
  // each RPC and access level, with the count.
  if (uint64_t n = refusals_->occurred(std::string(rpc) + "/" + to_string(have),
                                       std::chrono::steady_clock::now());
      n > 0) {
    spdlog::warn("refused: {} ({} such refusal(s) since the last line; at most one per second)",
                 why, n);
  }
  return to_grpc_status(Error{ErrorCode::kPermissionDenied, 0, why});
}

grpc::ServerUnaryReactor* PolicyService::PushGeneration(grpc::CallbackServerContext* ctx,
                                                        const v1::PushGenerationRequest* request,
                                                        v1::PushGenerationResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status st = authorize(*ctx, Access::kWrite, "PushGeneration"); !st.ok()) {
    reactor->Finish(observed(observer_, st));
    return reactor;
  }
  Result<core::PushRequest> req = to_push_request(*request, *config_());
  if (!req.ok()) {
    reactor->Finish(observed(observer_, to_grpc_status(req.error())));
    return reactor;
  }
  committer_.push(std::move(req).value(),
                  [reactor, response, observer = observer_](Result<core::PushResult> r) {
                    if (!r.ok()) {
                      reactor->Finish(observed(observer, to_grpc_status(r.error())));
                      return;
                    }
                    to_proto(*r, response);
                    reactor->Finish(grpc::Status::OK);
                  });
  return reactor;
}

grpc::ServerReadReactor<v1::PushGenerationRequest>* PolicyService::PushGenerationStream(
    grpc::CallbackServerContext* ctx, v1::PushGenerationResponse* response) {
  return new PushStream(committer_, config_(), ctx, response,
                        authorize(*ctx, Access::kWrite, "PushGenerationStream"), observer_);
}

grpc::ServerUnaryReactor* PolicyService::GetState(grpc::CallbackServerContext* ctx,
                                                  const v1::GetStateRequest* /*request*/,
                                                  v1::GetStateResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status st = authorize(*ctx, Access::kRead, "GetState"); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  read(
      [reactor, response, config = config_(), &committer = committer_] {
        Result<v1::GetStateResponse> state = read_state(committer, *config);
        if (!state.ok()) {
          reactor->Finish(to_grpc_status(state.error()));
          return;
        }
        *response = std::move(state).value();
        reactor->Finish(grpc::Status::OK);
      },
      reactor);
  return reactor;
}

grpc::ServerUnaryReactor* PolicyService::ListGenerations(
    grpc::CallbackServerContext* ctx, const v1::ListGenerationsRequest* /*request*/,
    v1::ListGenerationsResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status st = authorize(*ctx, Access::kRead, "ListGenerations"); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  to_list_generations(*committer_.view(), response);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* PolicyService::Rollback(grpc::CallbackServerContext* ctx,
                                                  const v1::RollbackRequest* request,
                                                  v1::RollbackResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status st = authorize(*ctx, Access::kWrite, "Rollback"); !st.ok()) {
    reactor->Finish(observed(observer_, st));
    return reactor;
  }
  if (Status st = check_length(request->request_id(), "request_id", kMaxRequestIdBytes); !st.ok()) {
    reactor->Finish(observed(observer_, to_grpc_status(st.error())));
    return reactor;
  }
  // "The one before the current" (0) is resolved by the committer at commit time.
  committer_.rollback(request->generation(), request->expected_generation(), request->request_id(),
                      [reactor, response, observer = observer_](Result<core::PushResult> r) {
                        if (!r.ok()) {
                          reactor->Finish(observed(observer, to_grpc_status(r.error())));
                          return;
                        }
                        response->set_generation(r->generation);
                        response->set_restored(r->restored);
                        reactor->Finish(grpc::Status::OK);
                      });
  return reactor;
}

grpc::ServerUnaryReactor* PolicyService::GetCounters(grpc::CallbackServerContext* ctx,
                                                     const v1::GetCountersRequest* request,
                                                     v1::GetCountersResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status st = authorize(*ctx, Access::kRead, "GetCounters"); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  read(
      [reactor, response, only = request->map(), &committer = committer_] {
        Result<core::CounterReading> counters = committer.read_counters(only);
        if (!counters.ok()) {
          reactor->Finish(to_grpc_status(counters.error()));
          return;
        }
        to_counters(counters->table, counters->maps, response);
        reactor->Finish(grpc::Status::OK);
      },
      reactor);
  return reactor;
}

grpc::ServerUnaryReactor* PolicyService::DumpSlot(grpc::CallbackServerContext* ctx,
                                                  const v1::DumpSlotRequest* request,
                                                  v1::DumpSlotResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status st = authorize(*ctx, Access::kRead, "DumpSlot"); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  std::shared_ptr<const config::DaemonConfig> config = config_();
  const core::OuterMapConfig* map = find_map(*config, request->map());
  if (!map) {
    reactor->Finish(not_found("unknown map \"" + request->map() + "\""));
    return reactor;
  }
  const config::MapSchema* schema = find_schema(*config, map->name);
  Result<core::Bytes> slot = to_slot(request->slot(), *map, schema, "slot");
  if (!slot.ok()) {
    reactor->Finish(to_grpc_status(slot.error()));
    return reactor;
  }
  read(
      [reactor, response, config, map, schema, slot = std::move(slot).value(),
       &committer = committer_] {
        Result<core::DrainRecord> dump = committer.read_slot(map->name, slot);
        if (!dump.ok()) {
          reactor->Finish(to_grpc_status(dump.error()));
          return;
        }
        to_dump(*dump, *map, schema, response);
        reactor->Finish(grpc::Status::OK);
      },
      reactor);
  return reactor;
}

grpc::ServerUnaryReactor* PolicyService::ReloadConfig(grpc::CallbackServerContext* ctx,
                                                      const v1::ReloadConfigRequest* /*request*/,
                                                      v1::ReloadConfigResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status st = authorize(*ctx, Access::kWrite, "ReloadConfig"); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  const bool queued = reloads_->try_run([this, reactor, response] {
    Result<ReloadSummary> summary =
        reload_ ? reload_()
                : Result<ReloadSummary>(failed_precondition("this server cannot reload"));
    if (!summary.ok()) {
      reactor->Finish(to_grpc_status(summary.error()));
      return;
    }
    to_proto(*summary, response);
    publish_reloaded(*summary);
    reactor->Finish(grpc::Status::OK);
  });
  if (!queued) {
    reactor->Finish(to_grpc_status(
        Error{ErrorCode::kResourceExhausted, 0, "no thread could be started for the reload"}));
  }
  return reactor;
}

grpc::ServerWriteReactor<v1::Event>* PolicyService::WatchEvents(
    grpc::CallbackServerContext* ctx, const v1::WatchEventsRequest* /*request*/) {
  grpc::Status st = authorize(*ctx, Access::kRead, "WatchEvents");
  if (!st.ok() || !watch_quota_) return new Watcher(hub_, st, nullptr, "");
  std::string owner = authorizer_ ? authorizer_->owner(*ctx) : ctx->peer();
  if (Status held = watch_quota_->acquire(owner); !held.ok()) {
    return new Watcher(hub_, to_grpc_status(held.error()), nullptr, "");
  }
  return new Watcher(hub_, st, watch_quota_, std::move(owner));
}

}  // namespace policyd::api
