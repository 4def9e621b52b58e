// PolicyService: the policyd.v1.Policy gRPC service (callback API). Handlers never block on the
// kernel: pushes and rollbacks go to the committer and finish from its callback; reads of live
// kernel state (GetState, GetCounters, DumpSlot) run on the service's reader threads, beside
// the committer (Committer::read_counters and the like), so reads never delay writes; history
// reads use the committer's view; reloads run on the service's own thread.
// Includes grpcpp: only the app and tests include this header.
#pragma once

#include <functional>
#include <memory>

#include "api/auth.h"
#include "api/observer.h"
#include "api/reload.h"
#include "api/watch_quota.h"
#include "config/config.h"
#include "core/committer.h"
#include "policyd/v1/policyd.grpc.pb.h"
#include "util/job_queue.h"
#include "util/log_throttle.h"

namespace policyd::api {

// A watcher further behind than this many events is dropped with RESOURCE_EXHAUSTED.
inline constexpr size_t kMaxWatchLag = 10000;
// Threads that read live kernel state for GetState, GetCounters and DumpSlot, and how many
// such reads may wait for one; the next is refused with RESOURCE_EXHAUSTED.
inline constexpr size_t kReadThreads = 2;
inline constexpr size_t kMaxWaitingReads = 256;

class PolicyService final : public v1::Policy::CallbackService {
 public:
  // The current configuration (a reload may swap it); never returns null.
  using ConfigSource = std::function<std::shared_ptr<const config::DaemonConfig>()>;

  // `committer` must outlive the service, and the service must outlive the grpc::Server that
  // serves it (destroy the server, or Shutdown() + Wait() it, first). Registers an event
  // listener with the committer; the destructor removes it. `observer` (optional) hears about
  // failed pushes and rollbacks; `watch_quota` (optional) bounds WatchEvents streams per caller
  // (Authorizer::owner).
  PolicyService(core::Committer& committer, ConfigSource config,
                std::shared_ptr<const Authorizer> authorizer, ReloadHook reload,
                std::shared_ptr<ApiObserver> observer = nullptr,
                std::shared_ptr<WatchQuota> watch_quota = nullptr);
  ~PolicyService() override;
  PolicyService(const PolicyService&) = delete;
  PolicyService& operator=(const PolicyService&) = delete;

  // Sends a Reloaded event to every watcher. ReloadConfig calls it itself after a successful
  // reload; the app calls it after a SIGHUP reload. Thread-safe, never blocks.
  void publish_reloaded(const ReloadSummary& summary);

  // WatchEvents streams being fed right now (a metrics gauge; tests wait on it).
  [[nodiscard]] size_t watchers() const;

  grpc::ServerUnaryReactor* PushGeneration(grpc::CallbackServerContext* ctx,
                                           const v1::PushGenerationRequest* request,
                                           v1::PushGenerationResponse* response) override;
  grpc::ServerReadReactor<v1::PushGenerationRequest>* PushGenerationStream(
      grpc::CallbackServerContext* ctx, v1::PushGenerationResponse* response) override;
  grpc::ServerUnaryReactor* GetState(grpc::CallbackServerContext* ctx,
                                     const v1::GetStateRequest* request,
                                     v1::GetStateResponse* response) override;
  grpc::ServerUnaryReactor* ListGenerations(grpc::CallbackServerContext* ctx,
                                            const v1::ListGenerationsRequest* request,
                                            v1::ListGenerationsResponse* response) override;
  grpc::ServerUnaryReactor* Rollback(grpc::CallbackServerContext* ctx,
                                     const v1::RollbackRequest* request,
                                     v1::RollbackResponse* response) override;
  grpc::ServerUnaryReactor* GetCounters(grpc::CallbackServerContext* ctx,
                                        const v1::GetCountersRequest* request,
                                        v1::GetCountersResponse* response) override;
  grpc::ServerUnaryReactor* DumpSlot(grpc::CallbackServerContext* ctx,
                                     const v1::DumpSlotRequest* request,
                                     v1::DumpSlotResponse* response) override;
  grpc::ServerUnaryReactor* ReloadConfig(grpc::CallbackServerContext* ctx,
                                         const v1::ReloadConfigRequest* request,
                                         v1::ReloadConfigResponse* response) override;
  grpc::ServerWriteReactor<v1::Event>* WatchEvents(grpc::CallbackServerContext* ctx,
                                                   const v1::WatchEventsRequest* request) override;

 private:
  class EventHub;
  class Watcher;
  class PushStream;

  // OK when the caller has `need`; else PERMISSION_DENIED naming the RPC.
  grpc::Status authorize(const grpc::CallbackServerContext& ctx, Access need,
                         const char* rpc) const;
  // Runs `job` on a reader thread, or finishes `reactor` with RESOURCE_EXHAUSTED when
  // kMaxWaitingReads are waiting.
  void read(std::function<void()> job, grpc::ServerUnaryReactor* reactor);

  core::Committer& committer_;
  ConfigSource config_;
  std::shared_ptr<const Authorizer> authorizer_;
  ReloadHook reload_;
  std::shared_ptr<ApiObserver> observer_;    // may be null
  std::shared_ptr<WatchQuota> watch_quota_;  // may be null: unbounded
  std::shared_ptr<EventHub> hub_;
  std::unique_ptr<util::JobQueue> reloads_;      // one thread
  std::unique_ptr<util::JobQueue> readers_;      // kReadThreads
  std::unique_ptr<util::LogThrottle> refusals_;  // of calls, by RPC and the caller's access
};

}  // namespace policyd::api
