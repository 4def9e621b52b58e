// Daemon: wires the layers together and runs the event loop. Owns, in order of start-up: the
// engine (maps adopted or created), the committer, the gRPC server and its unix listener, and
// the signal handlers (SIGTERM/SIGINT stop, SIGHUP reloads). Everything event-driven runs on one
// Asio io_context thread; blocking kernel work stays on the committer's threads.
#pragma once

#include <memory>
#include <string>

#include "config/config.h"
#include "util/result.h"

namespace policyd::app {

class Daemon {
 public:
  // Opens the maps and starts serving. Errors name what failed (config, pin, socket).
  [[nodiscard]] static Result<std::unique_ptr<Daemon>> start(config::DaemonConfig config);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Runs until SIGTERM or SIGINT; returns the process exit code.
  int run();

 private:
  struct Impl;
  explicit Daemon(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Applies the configured log level (and the journald-friendly format under systemd).
void configure_logging(const std::string& level);

}  // namespace policyd::app
