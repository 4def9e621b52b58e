// MetricsServer: prometheus::Exposer behind a Result (it reports bind failures by throwing).
#include "metrics/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <prometheus/exposer.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kernel/unique_fd.h"

namespace policyd::metrics {
namespace {

// Scrapes are rare and cheap; two threads keep one slow client from stalling the next scrape.
constexpr size_t kServerThreads = 2;

}  // namespace

Result<std::unique_ptr<MetricsServer>> MetricsServer::start(
    const std::string& listen, std::shared_ptr<PolicydMetrics> metrics) {
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->metrics_ = std::move(metrics);
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(listen, kServerThreads);
    server->exposer_->RegisterCollectable(server->metrics_->collectable());
    const std::vector<int> ports = server->exposer_->GetListeningPorts();
    if (ports.empty()) throw std::runtime_error("no listening port");
    server->address_ = listen.substr(0, listen.rfind(':')) + ":" + std::to_string(ports.front());
  } catch (const std::exception& e) {
    // civetweb does not say why a bind failed; a port in use is the usual reason.
    return Error{ErrorCode::kUnavailable, 0,
                 "metrics.listen " + listen + ": cannot serve metrics (" + e.what() + ")"};
  }
  return server;
}

MetricsServer::~MetricsServer() {
  if (!exposer_) return;
  // civetweb's accept loop polls its listening socket with a 2 s timeout and checks the stop
  // flag only when poll returns: connecting wakes it, so stopping takes milliseconds, not up to
  // two seconds of every daemon shutdown. The pokes stop once the exposer is gone.
  std::atomic<bool> stopped{false};
  std::thread poke([this, &stopped] {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    const size_t colon = address_.rfind(':');
    addr.sin_port = htons(static_cast<uint16_t>(std::stoul(address_.substr(colon + 1))));
    if (::inet_pton(AF_INET, address_.substr(0, colon).c_str(), &addr.sin_addr) != 1) return;
    while (!stopped.load()) {
      kernel::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (fd.valid()) {
        (void)::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  exposer_.reset();
  stopped = true;
  poke.join();
}

}  // namespace policyd::metrics
