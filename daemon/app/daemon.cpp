// Daemon wiring: engine -> committer -> gRPC service/server -> unix listener -> signals.
#include "app/daemon.h"

#include <utility>  // before Boost.Asio with g++ 12 in C++20

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server_posix.h>
#include <spdlog/spdlog.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>

#include "api/service.h"
#include "app/peers.h"
#include "app/systemd.h"
#include "app/unix_listener.h"
#include "core/committer.h"
#include "core/engine.h"
#include "core/fd_budget.h"
#include "core/layout_check.h"
#include "core/state_store.h"
#include "metrics/http_server.h"

namespace policyd::app {
namespace {

// After the committer has answered every accepted push, what remains are streams and idle
// connections: they get this long to close on their own.
constexpr auto kShutdownGrace = std::chrono::milliseconds(300);

Result<std::string> read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return sys_error(errno, "read " + path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A layout's fields as text ("src:ipv4@0 hits:u64@4 counter"), to show what changed.
std::string layout_text(const schema::Layout& layout) {
  std::string text;
  for (const schema::Field& f : layout.fields) {
    if (!text.empty()) text += " ";
    text += f.name + ":" + f.type_name() + "@" + std::to_string(f.offset);
    if (f.counter) text += " counter";
  }
  return "{" + text + "}";
}

// Every difference between two configurations of the same map that matters to the kernel or
// the schema: the engine's layout check, then what only the config holds.
std::vector<core::LayoutDifference> map_changes(const core::OuterMapConfig& a,
                                                const config::MapSchema& sa,
                                                const core::OuterMapConfig& b,
                                                const config::MapSchema& sb) {
  std::vector<core::LayoutDifference> diffs =
      core::layout_differences(core::expected_layout(a), core::expected_layout(b));
  core::add_difference(diffs, "group", a.group.empty() ? "none" : a.group,
                       b.group.empty() ? "none" : b.group);
  core::add_difference(diffs, "drain", core::to_string(a.drain), core::to_string(b.drain));
  core::add_difference(diffs, "inner.key", layout_text(sa.key), layout_text(sb.key));
  core::add_difference(diffs, "inner.value", layout_text(sa.value), layout_text(sb.value));
  core::add_difference(diffs, "slot_key", sa.slot_key ? layout_text(*sa.slot_key) : "none",
                       sb.slot_key ? layout_text(*sb.slot_key) : "none");
  return diffs;
}

}  // namespace

void configure_logging(const std::string& level) {
  spdlog::set_level(spdlog::level::from_str(level));
  // Under systemd, journald stamps every line itself.
  if (stderr_is_journal()) spdlog::set_pattern("[%l] %v");
}

struct Daemon::Impl {
  std::string config_path;
  mutable std::mutex config_mu;
  std::mutex reload_mu;  // one reload at a time (SIGHUP and ReloadConfig may race)
  std::shared_ptr<const config::DaemonConfig> config;

  boost::asio::io_context io;
  boost::asio::signal_set signals{io};
  std::unique_ptr<core::Committer> committer;
  std::shared_ptr<PeerAuthorizer> authorizer;
  std::unique_ptr<api::PolicyService> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<UnixListener> listener;
  std::shared_ptr<metrics::PolicydMetrics> metrics;  // null: metrics.listen not set
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  bool stopping = false;
  Systemd systemd;  // sd_notify and the watchdog; last, so its timer goes before io

  RefusalLog refusals;  // the event loop's

  // On the event loop: a caller in no allow-list is closed at once (it could not make any call),
  // as is one over a connection limit; the others are handed to gRPC.
  void accept(kernel::UniqueFd conn, PeerIdentity peer) {
    if (authorizer->access_of(peer) == api::Access::kNone) {
      refuse(peer, "no_access", "in neither api.allow.read nor api.allow.write");
      return;  // conn closes here
    }
    spdlog::debug("connection from pid {} uid {} gid {}", peer.pid, peer.uid, peer.gid);
    if (Status st = authorizer->register_connection(conn.get(), peer); !st.ok()) {
      refuse(peer, "limit", st.error().message());
      return;
    }
    grpc::AddInsecureChannelFromFd(server.get(), conn.release());  // gRPC owns it now
  }

  // Counts a refused connection and logs it at most once per second per uid.
  void refuse(const PeerIdentity& peer, const char* reason, const std::string& why) {
    if (metrics) metrics->on_connection_refused(reason);
    if (uint64_t n = refusals.refused(peer.uid, std::chrono::steady_clock::now()); n > 0) {
      spdlog::warn(
          "closed {} connection(s) from uid {} gid {} (pid {}): {} (logged at most once per second "
          "per uid)",
          n, peer.uid, peer.gid, peer.pid, why);
    }
  }

  std::shared_ptr<const config::DaemonConfig> current_config() const {
    std::lock_guard lock(config_mu);
    return config;
  }

  // Re-reads the file, validates all of it, refuses incompatible changes to existing maps
  // (naming map and field; the old config keeps running), creates new maps, keeps maps the
  // file no longer lists, and applies log level, allow-lists and limits live.
  Result<api::ReloadSummary> reload() {
    std::lock_guard reload_lock(reload_mu);
    POLICYD_ASSIGN_OR_RETURN(std::string text, read_file(config_path));
    POLICYD_ASSIGN_OR_RETURN(config::DaemonConfig next, config::parse_config(text, config_path));
    auto old = current_config();
    if (next.engine.pin_dir != old->engine.pin_dir || next.api.socket != old->api.socket) {
      return failed_precondition("reload refused: pin_dir and api.socket need a restart");
    }
    api::ReloadSummary summary;
    std::map<std::string, const core::OuterMapConfig*> old_maps;
    for (const auto& m : old->engine.maps) old_maps[m.name] = &m;
    const std::vector<std::string> served = committer->view()->maps;
    std::vector<core::OuterMapConfig> added;
    for (const auto& m : next.engine.maps) {
      auto it = old_maps.find(m.name);
      if (it == old_maps.end()) {
        if (std::find(served.begin(), served.end(), m.name) != served.end()) {
          return failed_precondition("reload refused: map \"" + m.name +
                                     "\" exists in the engine but not in the running config");
        }
        added.push_back(m);
        continue;
      }
      const std::vector<core::LayoutDifference> changes =
          map_changes(*it->second, old->schemas.at(m.name), m, next.schemas.at(m.name));
      if (!changes.empty()) {
        return failed_precondition("reload refused: map \"" + m.name +
                                   "\" changed (running -> file): " + core::describe(changes) +
                                   "; an existing map keeps its layout (use a new name)");
      }
      old_maps.erase(it);
    }
    std::vector<std::string> removed;
    if (next.remove_unlisted_maps) {
      for (const auto& [name, m] : old_maps) removed.push_back(name);
    } else {
      // Maps missing from the file stay in the engine: keep serving them.
      for (const auto& [name, m] : old_maps) {
        summary.kept.push_back(name);
        next.engine.maps.push_back(*m);
        next.schemas.emplace(name, old->schemas.at(name));
      }
    }
    if (!added.empty()) POLICYD_TRY(committer->add_maps(added));
    for (const auto& m : added) summary.added.push_back(m.name);
    if (!removed.empty()) {
      POLICYD_TRY(committer->remove_maps(removed, "reload: remove unlisted maps"));
      summary.removed = removed;
    }
    committer->set_history(next.history);
    configure_logging(next.log_level);
    authorizer->set_api_config(next.api);
    {
      std::lock_guard lock(config_mu);
      config = std::make_shared<const config::DaemonConfig>(std::move(next));
    }
    spdlog::info("reloaded {}: {} map(s) added, {} removed, {} kept though no longer listed",
                 config_path, summary.added.size(), summary.removed.size(), summary.kept.size());
    return summary;
  }

  // reload() between RELOADING=1 and READY=1, counted in the metrics; a refused reload ends in
  // READY=1 too (the old configuration keeps running).
  Result<api::ReloadSummary> notified_reload() {
    systemd.reloading();
    Result<api::ReloadSummary> r = reload();
    if (metrics) metrics->on_reload(r.ok());
    systemd.reloaded(r.ok() ? "serving generation " + std::to_string(committer->view()->generation)
                            : "reload refused: " + r.error().message());
    return r;
  }

  void on_signal(const boost::system::error_code& ec, int sig) {
    if (ec) return;
    if (sig == SIGHUP) {
      Result<api::ReloadSummary> r = notified_reload();
      if (r.ok())
        service->publish_reloaded(*r);
      else
        spdlog::error("SIGHUP: {}", r.error().message());
      wait_signals();
      return;
    }
    spdlog::info("{}: stopping (finishing commits in flight)",
                 sig == SIGTERM ? "SIGTERM" : "SIGINT");
    shutdown();
  }

  void wait_signals() {
    signals.async_wait(
        [this](const boost::system::error_code& ec, int sig) { on_signal(ec, sig); });
  }

  void shutdown() {
    if (stopping) return;
    stopping = true;
    systemd.stopping();
    systemd.stop_watchdog();
    if (listener) listener->close();
    metrics_server.reset();  // stops scrapes (waits for one in progress)
    // Every push already accepted is committed and acked (new ones get UNAVAILABLE); then the
    // server cancels what is left (WatchEvents streams, idle connections) after a short grace.
    committer->stop();
    if (server) server->Shutdown(std::chrono::system_clock::now() + kShutdownGrace);
    io.stop();
  }
};

Daemon::Daemon(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Daemon::~Daemon() {
  if (impl_) {
    impl_->shutdown();
    if (impl_->server) impl_->server->Wait();
  }
}

Result<std::unique_ptr<Daemon>> Daemon::start(config::DaemonConfig cfg) {
  auto impl = std::make_unique<Impl>();
  impl->config_path = cfg.path;
  configure_logging(cfg.log_level);
  impl->config = std::make_shared<const config::DaemonConfig>(cfg);
  // One fd per live inner map: thousands of slots need more than systemd's soft 1,024.
  Result<core::FdLimit> fd_limit = core::raise_fd_limit();
  if (!fd_limit.ok()) spdlog::warn("{}", fd_limit.error().message());

  // G8: the record in state_dir decides what the data plane holds before anything is served.
  POLICYD_ASSIGN_OR_RETURN(std::unique_ptr<core::StateStore> store,
                           core::StateStore::open(cfg.state_dir));
  core::EngineConfig engine_config = cfg.engine;
  engine_config.drain_pins = true;
  // Inner maps are created ahead of the pushes that fill them (core/inner_pool.h).
  engine_config.inner_pool = core::kMaxPooledPerMap;
  POLICYD_ASSIGN_OR_RETURN(std::unique_ptr<core::Engine> engine,
                           core::Engine::open(std::move(engine_config)));
  core::CommitterOptions options;
  options.history = cfg.history;
  POLICYD_ASSIGN_OR_RETURN(impl->committer,
                           core::Committer::open(std::move(engine), std::move(store), options));

  impl->authorizer = std::make_shared<PeerAuthorizer>(cfg.api);
  Impl* self = impl.get();
  if (!cfg.metrics_listen.empty()) {
    impl->metrics =
        std::make_shared<metrics::PolicydMetrics>([self] { return self->committer->view(); });
    impl->committer->add_listener(impl->metrics);
  }
  impl->service = std::make_unique<api::PolicyService>(
      *impl->committer, [self] { return self->current_config(); }, impl->authorizer,
      [self]() -> Result<api::ReloadSummary> {
        // ReloadConfig runs on a gRPC thread; reloads are serialised by the config mutex
        // inside and touch only thread-safe pieces.
        return self->notified_reload();
      },
      impl->metrics);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.RegisterService(impl->service.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(cfg.limits.max_message_bytes));
  if (cfg.api.tls) {
    auto read_pem = [](const std::string& path) { return read_file(path); };
    POLICYD_ASSIGN_OR_RETURN(std::string cert, read_pem(cfg.api.tls->cert));
    POLICYD_ASSIGN_OR_RETURN(std::string key, read_pem(cfg.api.tls->key));
    POLICYD_ASSIGN_OR_RETURN(std::string ca, read_pem(cfg.api.tls->client_ca));
    grpc::SslServerCredentialsOptions ssl(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_root_certs = ca;
    ssl.pem_key_cert_pairs.push_back({key, cert});
    builder.AddListeningPort(cfg.api.tls->listen, grpc::SslServerCredentials(ssl));
  }
  impl->server = builder.BuildAndStart();
  if (!impl->server) return Error{ErrorCode::kInternal, 0, "gRPC server failed to start"};
  if (impl->metrics) {
    POLICYD_ASSIGN_OR_RETURN(impl->metrics_server,
                             metrics::MetricsServer::start(cfg.metrics_listen, impl->metrics));
    spdlog::info("metrics listening on {}", impl->metrics_server->address());
  }

  POLICYD_ASSIGN_OR_RETURN(impl->listener, UnixListener::open(impl->io, cfg.api));
  impl->listener->start(
      [self](kernel::UniqueFd conn, PeerIdentity peer) { self->accept(std::move(conn), peer); },
      [self] {
        if (self->metrics) self->metrics->on_connection_refused("fd_limit");
      });

  impl->signals.add(SIGTERM);
  impl->signals.add(SIGINT);
  impl->signals.add(SIGHUP);
  impl->wait_signals();
  spdlog::info("policyd listening on {}{}; generation {}", cfg.api.socket,
               cfg.api.tls ? " and " + cfg.api.tls->listen + " (mutual TLS)" : "",
               impl->committer->view()->generation);
  return std::unique_ptr<Daemon>(new Daemon(std::move(impl)));
}

int Daemon::run() {
  // Maps adopted or restored, the API listening: ready for the service manager.
  impl_->systemd.ready(impl_->committer->view()->generation);
  impl_->systemd.start_watchdog(impl_->io, *impl_->committer);
  impl_->io.run();
  if (impl_->server) impl_->server->Wait();
  spdlog::info("stopped; pinned maps keep generation {}", impl_->committer->view()->generation);
  return 0;
}

}  // namespace policyd::app
