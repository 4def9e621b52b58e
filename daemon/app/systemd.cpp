// sd_notify messages and the watchdog driver (see systemd.h).
#include "app/systemd.h"

#include <utility>  // before Boost.Asio with g++ 12 in C++20

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "core/committer.h"

namespace policyd::app {
namespace {

using Clock = std::chrono::steady_clock;

uint64_t monotonic_usec() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

void notify(const std::string& message) {
  const int r = sd_notify(0, message.c_str());
  if (r < 0) spdlog::warn("sd_notify: {}", std::strerror(-r));
}

// Keeps STATUS= current: one datagram per commit, sent on the committer thread. Holds nothing
// of the daemon's, so the committer may outlive the Systemd object that registered it.
class StatusListener final : public core::EventListener {
 public:
  void on_committed(const core::CommittedEvent& e) override {
    if (e.generations.empty()) return;
    notify("STATUS=serving generation " + std::to_string(e.generations.back()));
  }
  void on_drained(const core::DrainedEvent& /*e*/) override {}
};

}  // namespace

struct Systemd::Watchdog {
  Watchdog(boost::asio::io_context& io, core::Committer& c, std::chrono::microseconds period)
      : timer(io), committer(c), interval(period) {}

  // Posts a probe that marks itself answered when the committer thread runs it.
  void post_probe() {
    auto flag = std::make_shared<std::atomic<bool>>(false);
    answered = flag;
    probe_posted = Clock::now();
    committer.post([flag](core::CommitEngine* /*engine*/) { flag->store(true); });
  }

  void arm() {
    timer.expires_after(interval / 2);
    timer.async_wait([this](const boost::system::error_code& ec) {
      if (ec) return;  // cancelled: stop_watchdog() or shutdown
      tick();
      arm();
    });
  }

  void tick() {
    if (answered->load()) {
      if (withheld) {
        spdlog::info("watchdog: the committer answers again; pings resumed");
        withheld = false;
      }
      notify("WATCHDOG=1");
      post_probe();
      return;
    }
    // No ping: if the committer stays stuck, the service manager's watchdog fires.
    if (!withheld) {
      const auto waited =
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - probe_posted);
      spdlog::warn(
          "watchdog: the committer has not run a liveness probe posted {} ms ago (a commit or "
          "drain is stuck?); withholding WATCHDOG=1 pings",
          waited.count());
      withheld = true;
    }
  }

  boost::asio::steady_timer timer;
  core::Committer& committer;
  std::chrono::microseconds interval;
  std::shared_ptr<std::atomic<bool>> answered;
  Clock::time_point probe_posted;
  bool withheld = false;
  std::shared_ptr<StatusListener> status;
};

Systemd::Systemd() {
  const char* socket = std::getenv("NOTIFY_SOCKET");
  notify_ = socket != nullptr && *socket != '\0';
  uint64_t usec = 0;
  // > 0 only when WATCHDOG_USEC is set and WATCHDOG_PID, if set, is this process.
  if (notify_ && sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    interval_ = std::chrono::microseconds(usec);
  }
}

Systemd::~Systemd() { stop_watchdog(); }

void Systemd::ready(uint64_t generation) const {
  if (!notify_) return;
  notify("READY=1\nSTATUS=serving generation " + std::to_string(generation));
}

void Systemd::reloading() const {
  if (!notify_) return;
  notify("RELOADING=1\nSTATUS=reloading the configuration\nMONOTONIC_USEC=" +
         std::to_string(monotonic_usec()));
}

void Systemd::reloaded(const std::string& status) const {
  if (!notify_) return;
  notify("READY=1\nSTATUS=" + status);
}

void Systemd::stopping() const {
  if (!notify_) return;
  notify("STOPPING=1\nSTATUS=stopping: finishing accepted pushes");
}

void Systemd::start_watchdog(boost::asio::io_context& io, core::Committer& committer) {
  if (!notify_ || watchdog_) return;
  watchdog_ = std::make_unique<Watchdog>(io, committer, interval_);
  watchdog_->status = std::make_shared<StatusListener>();
  committer.add_listener(watchdog_->status);
  if (interval_.count() == 0) return;
  spdlog::info("systemd watchdog: {} ms; pinging every {} ms while the committer answers",
               interval_.count() / 1000, interval_.count() / 2000);
  watchdog_->post_probe();
  watchdog_->arm();
}

void Systemd::stop_watchdog() {
  if (!watchdog_) return;
  watchdog_->timer.cancel();
  watchdog_->committer.remove_listener(watchdog_->status.get());
  // A cancelled handler may still run later: it reads only its error code, never `this`.
  watchdog_.reset();
}

bool stderr_is_journal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (!stream) return false;
  uintmax_t dev = 0, ino = 0;
  if (std::sscanf(stream, "%ju:%ju", &dev, &ino) != 2) return false;
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  return static_cast<uintmax_t>(st.st_dev) == dev && static_cast<uintmax_t>(st.st_ino) == ino;
}

}  // namespace policyd::app
