// PolicydMetrics: the metrics policyd exposes to Prometheus. Committer events feed the commit
// phase histograms and the drained counter totals, the API's observer hook counts failed pushes,
// the app counts reloads; what the committer's view already holds (generation, barriers, live
// inner maps, drained entries) is read at scrape time.
// Threading: events arrive on the committer thread, push failures on gRPC and committer threads,
// reloads on the event loop and the service's reload thread, scrapes on the HTTP server's
// threads; every member is thread-safe and none blocks on the kernel.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "api/observer.h"
#include "core/committer.h"

namespace prometheus {
class Collectable;
}

namespace policyd::metrics {

// Upper bounds (seconds) of the commit phase histograms' buckets: one grace period is 8-16 ms on
// the development VM, builds and drains of large maps take up to seconds.
inline constexpr double kPhaseBuckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                           0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                           1,      2.5,     5,      10};
// Upper bounds of the generations-per-barrier histogram's buckets (group commit).
inline constexpr double kBatchBuckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};

class PolicydMetrics final : public core::EventListener, public api::ApiObserver {
 public:
  // The committer's current view; called at scrape time. May return null (the gauges that come
  // from it are then left out of the scrape).
  using ViewSource = std::function<std::shared_ptr<const core::CommitterView>()>;

  explicit PolicydMetrics(ViewSource view);
  ~PolicydMetrics() override;
  PolicydMetrics(const PolicydMetrics&) = delete;
  PolicydMetrics& operator=(const PolicydMetrics&) = delete;

  // core::EventListener
  void on_committed(const core::CommittedEvent& e) override;
  void on_drained(const core::DrainedEvent& e) override;
  void on_drain_finished(const core::DrainFinishedEvent& e) override;

  // api::ApiObserver
  void on_push_failed(grpc::StatusCode code) override;

  // A unix connection was closed at accept: "no_access" (in no allow-list), "limit"
  // (api.max_connections or api.max_connections_per_uid) or "fd_limit" (out of fds).
  void on_connection_refused(const char* reason);

  // A configuration reload (SIGHUP or ReloadConfig) finished, successfully or not.
  void on_reload(bool ok);

  // Every metric family, for an HTTP exposer to serve. Lives as long as this object.
  [[nodiscard]] std::shared_ptr<prometheus::Collectable> collectable() const;

  // The text exposition format (version 0.0.4) of every metric, as a scrape returns it.
  [[nodiscard]] std::string render() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;  // shared with the collectable handed to the exposer
};

}  // namespace policyd::metrics
