// MetricsServer: serves PolicydMetrics as the Prometheus text format over HTTP, GET /metrics,
// through prometheus-cpp's exposer (civetweb). Scrapes run on the server's own two threads;
// destroying the server stops it and waits for scrapes in progress.
#pragma once

#include <memory>
#include <string>

#include "metrics/policyd_metrics.h"
#include "util/result.h"

namespace prometheus {
class Exposer;
}

namespace policyd::metrics {

class MetricsServer {
 public:
  // Listens on `listen` ("127.0.0.1:9464"; port 0 picks a free port) and serves `metrics`, which
  // the server keeps alive. The configuration checks that `listen` is a loopback address.
  [[nodiscard]] static Result<std::unique_ptr<MetricsServer>> start(
      const std::string& listen, std::shared_ptr<PolicydMetrics> metrics);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The address actually bound, "host:port" (the port chosen when `listen` asked for port 0).
  [[nodiscard]] const std::string& address() const { return address_; }

 private:
  MetricsServer() = default;

  std::shared_ptr<PolicydMetrics> metrics_;  // what the exposer's weak reference points to
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string address_;
};

}  // namespace policyd::metrics
