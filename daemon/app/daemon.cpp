// Daemon wiring: engine -> committer -> gRPC service/server -> unix listener -> signals.
#include "app/daemon.h"

#include <utility>  // before Boost.Asio with g++ 12 in C++20

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/server_posix.h>
#include <spdlog/spdlog.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <tuple>

#include "api/service.h"
#include "app/peers.h"
#include "app/systemd.h"
#include "app/tls_files.h"
#include "app/unix_listener.h"
#include "core/committer.h"
#include "core/engine.h"
#include "core/fd_budget.h"
#include "core/layout_check.h"
#include "core/state_store.h"
#include "metrics/http_server.h"
#include "util/fs.h"
#include "util/log_throttle.h"

namespace policyd::app {
namespace {

// After the committer has answered every accepted push, what remains are streams and idle
// connections: they get this long to close on their own.
constexpr auto kShutdownGrace = std::chrono::milliseconds(300);

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

// How often the server re-reads its copies of the TLS files: a reload's rotation applies within
// this long.
constexpr unsigned kTlsRefreshSeconds = 1;

// Where the server's copies of the TLS files live.
std::string tls_dir(const config::DaemonConfig& cfg) { return cfg.state_dir + "/tls"; }

// Mutual TLS for the TCP listener: only clients with a certificate signed by the client CA.
// The server watches policyd's copies of the files (app/tls_files.h), which start and every
// reload replace once the operator's files have been checked.
Result<std::shared_ptr<grpc::ServerCredentials>> tls_credentials(const config::TlsConfig& tls,
                                                                 const std::string& dir) {
  POLICYD_ASSIGN_OR_RETURN(TlsMaterial material, read_tls_files(tls));
  POLICYD_TRY(install_tls_files(material, dir));
  const TlsPaths paths = tls_paths(dir);
  auto files = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      paths.key, paths.cert, paths.client_ca, kTlsRefreshSeconds);
  grpc::experimental::TlsServerCredentialsOptions options(files);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  return grpc::experimental::TlsServerCredentials(options);
}

// Why `next` cannot be applied without a restart to a daemon running `old` whose gRPC servers
// take messages up to `served_max_message_bytes`; ok when it can.
Status restart_needed(const config::DaemonConfig& old, const config::DaemonConfig& next,
                      uint64_t served_max_message_bytes) {
  auto octal = [](mode_t m) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "%04o", static_cast<unsigned>(m));
    return std::string(buf);
  };
  const config::TlsConfig none;
  const config::TlsConfig& a = old.api.tls ? *old.api.tls : none;
  const config::TlsConfig& b = next.api.tls ? *next.api.tls : none;
  // Keys read once at start (paths, listeners, the socket's owner and mode, the engine's
  // threads and barrier): the running value and the file's.
  const std::vector<std::tuple<const char*, std::string, std::string>> fixed = {
      {"pin_dir", old.engine.pin_dir, next.engine.pin_dir},
      {"state_dir", old.state_dir, next.state_dir},
      {"api.socket", old.api.socket, next.api.socket},
      {"api.socket_mode", octal(old.api.socket_mode), octal(next.api.socket_mode)},
      {"api.socket_group", old.api.socket_group, next.api.socket_group},
      {"api.tls.listen", a.listen, b.listen},
      {"api.tls.cert", a.cert, b.cert},
      {"api.tls.key", a.key, b.key},
      {"api.tls.client_ca", a.client_ca, b.client_ca},
      {"api.idle_timeout_s", std::to_string(old.api.idle_timeout_s),
       std::to_string(next.api.idle_timeout_s)},
      {"metrics.listen", old.metrics_listen, next.metrics_listen},
      {"barrier", core::to_string(old.engine.barrier), core::to_string(next.engine.barrier)},
      {"barrier_threads", std::to_string(old.engine.barrier_threads),
       std::to_string(next.engine.barrier_threads)},
      {"build_threads", std::to_string(old.engine.build_threads),
       std::to_string(next.engine.build_threads)},
  };
  auto refuse = [](const std::string& key, const std::string& was, const std::string& is) {
    return failed_precondition("reload refused: " + key + " changed (running \"" + was +
                               "\", file \"" + is + "\"); it needs a restart");
  };
  for (const auto& [key, was, is] : fixed) {
    if (was != is) return refuse(key, was, is);
  }
  if (next.limits.max_message_bytes > served_max_message_bytes) {
    // The gRPC servers were built with the value at start; a lower one applies live.
    return refuse("limits.max_message_bytes (above its value at start)",
                  std::to_string(served_max_message_bytes),
                  std::to_string(next.limits.max_message_bytes));
  }
  return {};
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
  uint64_t served_max_message_bytes = 0;  // the gRPC servers' limit, set at start

  boost::asio::io_context io;
  boost::asio::signal_set signals{io};
  std::unique_ptr<core::Committer> committer;
  std::shared_ptr<PeerAuthorizer> authorizer;
  std::shared_ptr<api::WatchQuota> watch_quota;  // shared by both fronts
  // One gRPC server per access level (see CappedAuthorizer): unix connections go to the one of
  // the access their credentials had at accept; the TLS port is on the writers' server.
  struct Front {
    std::unique_ptr<api::PolicyService> service;
    std::unique_ptr<grpc::Server> server;
  };
  Front readers;
  Front writers;
  // The service and gRPC server for the connections of `level`.
  Result<Front> start_front(api::Access level, const config::DaemonConfig& cfg);
  std::unique_ptr<UnixListener> listener;
  std::shared_ptr<metrics::PolicydMetrics> metrics;  // null: metrics.listen not set
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  bool stopping = false;
  Systemd systemd;  // sd_notify and the watchdog; last, so its timer goes before io

  util::LogThrottle refusals;  // by uid

  // On the event loop: a caller in no allow-list is closed at once (it could not make any call),
  // as is one over a connection limit; the others are handed to gRPC.
  void accept(kernel::UniqueFd conn, PeerIdentity peer) {
    const api::Access access = authorizer->access_of(peer);
    if (access == api::Access::kNone) {
      refuse(peer, "no_access", "in neither api.allow.read nor api.allow.write");
      return;  // conn closes here
    }
    spdlog::debug("connection from pid {} uid {} gid {}", peer.pid, peer.uid, peer.gid);
    if (Status st = authorizer->register_connection(conn.get(), peer); !st.ok()) {
      refuse(peer, "limit", st.error().message());
      return;
    }
    grpc::Server* server =
        access == api::Access::kWrite ? writers.server.get() : readers.server.get();
    grpc::AddInsecureChannelFromFd(server, conn.release());  // gRPC owns it now
  }

  // Counts a refused connection and logs it at most once per second per uid.
  void refuse(const PeerIdentity& peer, const char* reason, const std::string& why) {
    if (metrics) metrics->on_connection_refused(reason);
    if (uint64_t n = refusals.occurred(std::to_string(peer.uid), std::chrono::steady_clock::now());
        n > 0) {
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
    POLICYD_ASSIGN_OR_RETURN(std::string text, util::read_text_file(config_path));
    POLICYD_ASSIGN_OR_RETURN(config::DaemonConfig next, config::parse_config(text, config_path));
    auto old = current_config();
    POLICYD_TRY(restart_needed(*old, next, served_max_message_bytes));
    std::optional<TlsMaterial> tls;
    if (next.api.tls) {
      POLICYD_ASSIGN_OR_RETURN(tls, read_tls_files(*next.api.tls));
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
    // Everything that can be refused was checked above. Each step below that can still fail
    // undoes the ones before it; the removal, whose emptying commit cannot be taken back, is
    // last.
    if (!added.empty()) POLICYD_TRY(committer->add_maps(added));
    for (const auto& m : added) summary.added.push_back(m.name);
    std::optional<TlsMaterial> previous_tls;
    std::string unreadable_tls;  // why the installed TLS files could not be read back
    // Each undo step that fails is named in the error: the operator must know what stayed.
    auto undo = [&](Error e) {
      std::vector<std::string> left;
      if (previous_tls) {
        Status back = install_tls_files(*previous_tls, tls_dir(next));
        if (!back.ok()) left.push_back("the previous TLS files: " + back.error().message());
      } else if (tls) {
        left.push_back("the previous TLS files (" + unreadable_tls + ")");
      }
      if (!summary.added.empty()) {
        Status forgot = committer->forget_added_maps(summary.added);
        if (!forgot.ok()) left.push_back("the new maps: " + forgot.error().message());
      }
      if (!left.empty()) {
        std::string list;
        for (const std::string& l : left) list += (list.empty() ? "" : "; ") + l;
        e.context += "; undo incomplete, not put back: " + list;
      }
      return e;
    };
    if (tls) {
      Result<TlsMaterial> installed = read_installed_tls_files(tls_dir(next));
      if (installed.ok()) {
        previous_tls = std::move(installed).value();
      } else {
        unreadable_tls = installed.error().message();
      }
      if (Status st = install_tls_files(*tls, tls_dir(next)); !st.ok()) {
        return undo(st.error().wrap("reload refused: install the TLS files"));
      }
    }
    if (!removed.empty()) {
      if (Status st = committer->remove_maps(removed, "reload: remove unlisted maps"); !st.ok()) {
        return undo(st.error().wrap("reload refused: remove unlisted maps"));
      }
      summary.removed = removed;
    }
    committer->set_history(next.history);
    configure_logging(next.log_level);
    authorizer->set_api_config(next.api);
    core::set_connection_fd_reserve(next.api.max_connections);
    watch_quota->set_limit(next.api.max_watchers_per_uid);
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
      if (r.ok()) {
        readers.service->publish_reloaded(*r);
        writers.service->publish_reloaded(*r);
      } else {
        spdlog::error("SIGHUP: {}", r.error().message());
      }
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
    // Both servers get the whole grace at once: a reader's stream cannot use up the writers'.
    const auto deadline = std::chrono::system_clock::now() + kShutdownGrace;
    std::thread readers_down([&] {
      if (readers.server) readers.server->Shutdown(deadline);
    });
    if (writers.server) writers.server->Shutdown(deadline);
    readers_down.join();
    io.stop();
  }

  void wait_servers() {
    for (Front* f : {&readers, &writers}) {
      if (f->server) f->server->Wait();
    }
  }
};

Daemon::Daemon(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Daemon::~Daemon() {
  if (impl_) {
    impl_->shutdown();
    impl_->wait_servers();
  }
}

Result<Daemon::Impl::Front> Daemon::Impl::start_front(api::Access level,
                                                      const config::DaemonConfig& cfg) {
  Impl* self = this;
  Front front;
  front.service = std::make_unique<api::PolicyService>(
      *committer, [self] { return self->current_config(); },
      std::make_shared<CappedAuthorizer>(authorizer, level),
      [self, level]() -> Result<api::ReloadSummary> {
        // ReloadConfig runs on a gRPC thread; reloads are serialised by the config mutex
        // inside and touch only thread-safe pieces. The calling service tells its own watchers;
        // the other front's watchers hear it here.
        Result<api::ReloadSummary> r = self->notified_reload();
        Front& other = level == api::Access::kWrite ? self->readers : self->writers;
        if (r.ok() && other.service) other.service->publish_reloaded(*r);
        return r;
      },
      metrics, watch_quota);
  grpc::ServerBuilder builder;
  builder.RegisterService(front.service.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(cfg.limits.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             static_cast<int>(cfg.api.idle_timeout_s * 1000));
  if (level == api::Access::kWrite && cfg.api.tls) {
    POLICYD_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> creds,
                             tls_credentials(*cfg.api.tls, tls_dir(cfg)));
    builder.AddListeningPort(cfg.api.tls->listen, creds);
  }
  front.server = builder.BuildAndStart();
  if (!front.server) {
    return Error{
        ErrorCode::kInternal, 0,
        std::string("gRPC server for ") + api::to_string(level) + " access failed to start"};
  }
  return front;
}

Result<std::unique_ptr<Daemon>> Daemon::start(config::DaemonConfig cfg) {
  auto impl = std::make_unique<Impl>();
  impl->config_path = cfg.path;
  configure_logging(cfg.log_level);
  impl->config = std::make_shared<const config::DaemonConfig>(cfg);
  impl->served_max_message_bytes = cfg.limits.max_message_bytes;
  // One fd per live inner map: thousands of slots need more than systemd's soft 1,024.
  Result<core::FdLimit> fd_limit = core::raise_fd_limit();
  if (!fd_limit.ok()) spdlog::warn("{}", fd_limit.error().message());
  core::set_connection_fd_reserve(cfg.api.max_connections);  // before adoption counts fds

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
  impl->watch_quota = std::make_shared<api::WatchQuota>(cfg.api.max_watchers_per_uid);
  Impl* self = impl.get();
  if (!cfg.metrics_listen.empty()) {
    impl->metrics =
        std::make_shared<metrics::PolicydMetrics>([self] { return self->committer->view(); });
    impl->committer->add_listener(impl->metrics);
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  POLICYD_ASSIGN_OR_RETURN(impl->readers, impl->start_front(api::Access::kRead, cfg));
  POLICYD_ASSIGN_OR_RETURN(impl->writers, impl->start_front(api::Access::kWrite, cfg));
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
  impl_->wait_servers();
  spdlog::info("stopped; pinned maps keep generation {}", impl_->committer->view()->generation);
  return 0;
}

}  // namespace policyd::app
