// systemd integration: sd_notify readiness/reload/stop messages, STATUS= lines with the current
// generation, and the watchdog driver. Everything here is a no-op when policyd does not run
// under a service manager (no NOTIFY_SOCKET, no WATCHDOG_USEC), so the daemon calls it
// unconditionally.
//
// Threading: ready()/reloading()/reloaded()/stopping() may be called from any thread (each is
// one datagram). start_watchdog()/stop_watchdog() belong to the event-loop thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace policyd::core {
class Committer;
}  // namespace policyd::core

namespace policyd::app {

class Systemd {
 public:
  // Reads NOTIFY_SOCKET and the watchdog settings (WATCHDOG_USEC, WATCHDOG_PID) once.
  Systemd();
  ~Systemd();
  Systemd(const Systemd&) = delete;
  Systemd& operator=(const Systemd&) = delete;

  // READY=1 with a STATUS= line naming the generation the data plane holds.
  void ready(uint64_t generation) const;
  // RELOADING=1 with MONOTONIC_USEC= (the time the reload started).
  void reloading() const;
  // READY=1 after a reload; `status` says how it went (a refused reload still ends here: the old
  // configuration keeps running).
  void reloaded(const std::string& status) const;
  // STOPPING=1.
  void stopping() const;

  // Watchdog, when the service manager asked for one: every WATCHDOG_USEC/2 a timer on `io`
  // sends WATCHDOG=1, but only if the liveness probe it posted to `committer` last time has run,
  // then posts a new probe. A stuck event loop or a committer stuck in the kernel therefore
  // stops the pings. Also keeps STATUS= current after every commit. `committer` must outlive the
  // watchdog (stop_watchdog() or this object's destruction).
  void start_watchdog(boost::asio::io_context& io, core::Committer& committer);
  void stop_watchdog();

  // The ping interval, zero when the watchdog is off (tests and logs).
  [[nodiscard]] std::chrono::microseconds watchdog_interval() const { return interval_; }

 private:
  struct Watchdog;
  bool notify_ = false;  // NOTIFY_SOCKET is set
  std::chrono::microseconds interval_{0};
  std::unique_ptr<Watchdog> watchdog_;
};

// True when stderr is the journal stream systemd connected (JOURNAL_STREAM names stderr's device
// and inode), so journald adds timestamps and log lines should not carry their own.
[[nodiscard]] bool stderr_is_journal();

}  // namespace policyd::app
