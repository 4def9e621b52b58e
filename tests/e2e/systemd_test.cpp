// systemd integration, against the real daemon: sd_notify messages on a NOTIFY_SOCKET the test
// binds (READY=1 only once the API listens, RELOADING=1/READY=1 around SIGHUP and API reloads,
// STOPPING=1 at SIGTERM, watchdog pings in between and never after STOPPING=1), watchdog pings
// that stop while the committer is stuck and resume when it runs again, and log lines without
// timestamps exactly when stderr is the journal stream (JOURNAL_STREAM).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "daemon_fixture.h"

namespace policyd::e2e {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr auto kWatchdog = milliseconds(400);  // WATCHDOG_USEC: a ping every 200 ms

// One datagram from the daemon: its lines ("READY=1", "STATUS=...").
struct Notification {
  Clock::time_point at;
  std::vector<std::string> lines;

  [[nodiscard]] bool has(const std::string& line) const {
    return std::find(lines.begin(), lines.end(), line) != lines.end();
  }
  // The value of `key`, or "" when absent.
  [[nodiscard]] std::string value(const std::string& key) const {
    for (const std::string& l : lines) {
      if (l.rfind(key + "=", 0) == 0) return l.substr(key.size() + 1);
    }
    return "";
  }
};

// The service manager's end: a unix datagram socket, read on its own thread.
class NotifySocket {
 public:
  explicit NotifySocket(std::string path) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      error_ = std::string("bind ") + path_ + ": " + std::strerror(errno);
      return;
    }
    timeval tv{0, 100'000};  // lets the reader notice stop
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    reader_ = std::thread([this] { read_loop(); });
  }
  ~NotifySocket() {
    stop_ = true;
    if (reader_.joinable()) reader_.join();
    if (fd_ >= 0) ::close(fd_);
    ::unlink(path_.c_str());
  }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  [[nodiscard]] const std::string& error() const { return error_; }
  [[nodiscard]] const std::string& path() const { return path_; }

  // Runs on the reader thread for every datagram, before waiters see it.
  void on_message(std::function<void(const Notification&)> fn) {
    std::lock_guard lock(mu_);
    hook_ = std::move(fn);
  }

  bool wait_for(const std::function<bool(const std::vector<Notification>&)>& pred,
                milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return pred(messages_); });
  }
  [[nodiscard]] std::vector<Notification> messages() {
    std::lock_guard lock(mu_);
    return messages_;
  }

 private:
  void read_loop() {
    char buf[4096];
    while (!stop_) {
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) continue;  // timeout or EINTR
      Notification note{Clock::now(), {}};
      std::istringstream in(std::string(buf, static_cast<size_t>(n)));
      for (std::string line; std::getline(in, line);) {
        if (!line.empty()) note.lines.push_back(line);
      }
      std::lock_guard lock(mu_);
      if (hook_) hook_(note);
      messages_.push_back(std::move(note));
      cv_.notify_all();
    }
  }

  std::string path_;
  int fd_ = -1;
  std::string error_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Notification> messages_;
  std::function<void(const Notification&)> hook_;
  std::thread reader_;
};

size_t count_with(const std::vector<Notification>& ms, const std::string& line) {
  return static_cast<size_t>(
      std::count_if(ms.begin(), ms.end(), [&](const Notification& m) { return m.has(line); }));
}

// The state messages in order ("READY=1", "RELOADING=1", "STOPPING=1"), watchdog pings left out.
std::vector<std::string> states(const std::vector<Notification>& ms) {
  std::vector<std::string> out;
  for (const Notification& m : ms) {
    for (const char* s : {"RELOADING=1", "READY=1", "STOPPING=1"}) {
      if (m.has(s)) out.emplace_back(s);
    }
  }
  return out;
}

bool connect_succeeds(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

uint64_t monotonic_usec() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

class SystemdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    POLICYD_REQUIRE_BPF();
    auto bpffs = test::PrivateBpffs::create();
    ASSERT_TRUE(bpffs.ok()) << bpffs.error().message();
    bpffs_.emplace(std::move(bpffs).value());
    std::string tmpl = (fs::temp_directory_path() / "policyd-e2e-sd-XXXXXX").string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    ASSERT_NE(::mkdtemp(buf.data()), nullptr) << "mkdtemp: " << std::strerror(errno);
    work_dir_ = buf.data();
  }

  void TearDown() override {
    if (daemon_ && daemon_->running()) {
      EXPECT_EQ(daemon_->stop(), 0);
    }
    if (daemon_ && HasFailure()) {
      std::fprintf(stderr, "===== policyd log (%s) =====\n%s===== end of policyd log =====\n",
                   daemon_->log_path().c_str(), daemon_->log().c_str());
    }
    daemon_.reset();
    if (!work_dir_.empty()) {
      std::error_code ec;
      fs::remove_all(work_dir_, ec);
    }
    bpffs_.reset();
  }

  DaemonProcess& make_daemon(std::vector<std::string> env) {
    DaemonOptions o;
    o.env = std::move(env);
    daemon_ = std::make_unique<DaemonProcess>(work_dir_, bpffs_->join("pd"), o);
    return *daemon_;
  }

  // Waits for the daemon to exit after a signal; its exit code (-1 if it did not exit).
  int wait_exit() {
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    while (daemon_->running() && Clock::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(10));
    }
    return daemon_->running() ? -1 : daemon_->exit_code().value_or(-1);
  }

  std::optional<test::PrivateBpffs> bpffs_;
  std::string work_dir_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(SystemdTest, NotifiesReadyReloadingStoppingAndPingsTheWatchdog) {
  NotifySocket notify(work_dir_ + "/notify.sock");
  ASSERT_EQ(notify.error(), "");
  DaemonProcess& d =
      make_daemon({"NOTIFY_SOCKET=" + notify.path(),
                   "WATCHDOG_USEC=" + std::to_string(kWatchdog.count() * 1000), "WATCHDOG_PID"});
  // READY=1 must not come before the API socket accepts connections.
  std::atomic<int> ready_seen{0};
  std::atomic<bool> listening_at_ready{false};
  notify.on_message([&](const Notification& m) {
    if (m.has("READY=1") && ready_seen.fetch_add(1) == 0) {
      listening_at_ready = connect_succeeds(d.socket_path());
    }
  });
  Status st = d.start();
  ASSERT_TRUE(st.ok()) << st.error().message();

  ASSERT_TRUE(notify.wait_for([](const auto& ms) { return count_with(ms, "READY=1") == 1; },
                              std::chrono::seconds(10)))
      << "no READY=1";
  EXPECT_TRUE(listening_at_ready) << "READY=1 came before the API socket accepted connections";
  const std::vector<Notification> first = notify.messages();
  EXPECT_EQ(first.front().value("STATUS"), "serving generation 0") << "the first message";
  ASSERT_TRUE(first.front().has("READY=1")) << "the first message is not READY=1";

  // Watchdog pings, from the event loop, every WATCHDOG_USEC/2.
  ASSERT_TRUE(notify.wait_for([](const auto& ms) { return count_with(ms, "WATCHDOG=1") >= 3; },
                              std::chrono::seconds(10)))
      << "fewer than 3 watchdog pings in 10 s with WATCHDOG_USEC=" << kWatchdog.count() * 1000;

  // A commit updates STATUS=.
  auto stub = d.new_stub();
  {
    grpc::ClientContext ctx;
    set_deadline(ctx);
    v1::PushGenerationResponse resp;
    grpc::Status s = stub->PushGeneration(&ctx, acl_push(0, {{"10.0.0.0/8", 1}}), &resp);
    ASSERT_TRUE(s.ok()) << describe(s);
    const std::string want = "serving generation " + std::to_string(resp.generation());
    EXPECT_TRUE(notify.wait_for(
        [&](const auto& ms) {
          return std::any_of(ms.begin(), ms.end(),
                             [&](const Notification& m) { return m.value("STATUS") == want; });
        },
        std::chrono::seconds(5)))
        << "no STATUS=" << want << " after the push";
  }

  // SIGHUP: RELOADING=1 (with the start time), then READY=1.
  const uint64_t before_hup = monotonic_usec();
  d.signal(SIGHUP);
  ASSERT_TRUE(notify.wait_for([](const auto& ms) { return count_with(ms, "READY=1") == 2; },
                              std::chrono::seconds(10)))
      << "no READY=1 after SIGHUP";
  // The API's ReloadConfig goes through the same notifications.
  CmdResult reload = run_policyctl(d.socket_path(), {"reload"});
  EXPECT_EQ(reload.exit_code, 0) << reload.out << reload.err;
  ASSERT_TRUE(notify.wait_for([](const auto& ms) { return count_with(ms, "READY=1") == 3; },
                              std::chrono::seconds(10)))
      << "no READY=1 after ReloadConfig";
  std::vector<Notification> ms = notify.messages();
  for (const Notification& m : ms) {
    if (!m.has("RELOADING=1")) continue;
    const std::string usec = m.value("MONOTONIC_USEC");
    ASSERT_FALSE(usec.empty()) << "RELOADING=1 without MONOTONIC_USEC=";
    const uint64_t at = std::stoull(usec);
    EXPECT_GE(at, before_hup);
    EXPECT_LE(at, monotonic_usec());
  }

  // Pings go on after the reloads.
  const size_t pings = count_with(ms, "WATCHDOG=1");
  ASSERT_TRUE(
      notify.wait_for([&](const auto& all) { return count_with(all, "WATCHDOG=1") >= pings + 2; },
                      std::chrono::seconds(10)))
      << "watchdog pings stopped after the reloads";

  // SIGTERM: STOPPING=1, exit 0, and no ping after STOPPING=1.
  stub.reset();
  d.signal(SIGTERM);
  EXPECT_EQ(wait_exit(), 0);
  ms = notify.messages();
  EXPECT_EQ(states(ms), (std::vector<std::string>{"READY=1", "RELOADING=1", "READY=1",
                                                  "RELOADING=1", "READY=1", "STOPPING=1"}));
  bool ready = false, stopped = false;
  for (const Notification& m : ms) {
    if (m.has("READY=1")) ready = true;
    if (m.has("STOPPING=1")) stopped = true;
    if (m.has("WATCHDOG=1")) {
      EXPECT_TRUE(ready) << "a watchdog ping before READY=1";
      EXPECT_FALSE(stopped) << "a watchdog ping after STOPPING=1";
    }
  }
  const std::string log = d.log();
  EXPECT_NE(log.find("systemd watchdog: 400 ms"), std::string::npos)
      << "the daemon did not log the watchdog interval";
}

// Stops (ptrace group-stop) every thread of `pid` but the main one, which runs the event loop.
class ThreadFreezer {
 public:
  explicit ThreadFreezer(pid_t pid) {
    for (const auto& entry : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
      const pid_t tid = std::stoi(entry.path().filename().string());
      if (tid == pid) continue;
      if (::ptrace(PTRACE_SEIZE, tid, nullptr, nullptr) != 0) {
        error_ = "PTRACE_SEIZE " + std::to_string(tid) + ": " + std::strerror(errno);
        continue;
      }
      tids_.push_back(tid);
      int status = 0;
      if (::ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0 ||
          ::waitpid(tid, &status, __WALL) != tid) {
        error_ = "stopping thread " + std::to_string(tid) + ": " + std::strerror(errno);
      }
    }
  }
  ~ThreadFreezer() { thaw(); }
  ThreadFreezer(const ThreadFreezer&) = delete;
  ThreadFreezer& operator=(const ThreadFreezer&) = delete;

  void thaw() {
    for (pid_t tid : tids_) ::ptrace(PTRACE_DETACH, tid, nullptr, nullptr);
    tids_.clear();
  }
  [[nodiscard]] const std::string& error() const { return error_; }
  [[nodiscard]] size_t threads() const { return tids_.size(); }

 private:
  std::vector<pid_t> tids_;
  std::string error_;
};

TEST_F(SystemdTest, WatchdogPingsStopWhileTheCommitterIsStuck) {
  NotifySocket notify(work_dir_ + "/notify.sock");
  ASSERT_EQ(notify.error(), "");
  DaemonProcess& d =
      make_daemon({"NOTIFY_SOCKET=" + notify.path(),
                   "WATCHDOG_USEC=" + std::to_string(kWatchdog.count() * 1000), "WATCHDOG_PID"});
  Status st = d.start();
  ASSERT_TRUE(st.ok()) << st.error().message();
  ASSERT_TRUE(notify.wait_for([](const auto& ms) { return count_with(ms, "WATCHDOG=1") >= 2; },
                              std::chrono::seconds(10)))
      << "no watchdog pings to begin with";

  // Freeze the committer (with every other thread but the event loop's). A probe it answered
  // just before may still earn one ping; after that, none while it stays frozen.
  {
    ThreadFreezer freeze(d.pid());
    ASSERT_EQ(freeze.error(), "");
    ASSERT_GT(freeze.threads(), 0u);
    std::this_thread::sleep_for(kWatchdog);
    const size_t before = count_with(notify.messages(), "WATCHDOG=1");
    std::this_thread::sleep_for(4 * kWatchdog);
    EXPECT_EQ(count_with(notify.messages(), "WATCHDOG=1"), before)
        << "watchdog pings went on while the committer was stopped";
    EXPECT_TRUE(contains_all(d.log(), {"watchdog", "withholding"}))
        << "the event loop did not report the stuck committer";
    freeze.thaw();
    const size_t frozen = count_with(notify.messages(), "WATCHDOG=1");
    EXPECT_TRUE(
        notify.wait_for([&](const auto& ms) { return count_with(ms, "WATCHDOG=1") >= frozen + 2; },
                        std::chrono::seconds(10)))
        << "watchdog pings did not resume once the committer ran again";
  }
  EXPECT_TRUE(contains_all(d.log(), {"pings resumed"}));
  EXPECT_EQ(d.stop(), 0);
}

// Lines the daemon logged after byte `from` of its log.
std::vector<std::string> log_lines(const std::string& log, size_t from) {
  std::vector<std::string> out;
  std::istringstream in(log.substr(std::min(from, log.size())));
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

TEST_F(SystemdTest, LogLinesCarryTimestampsUnlessStderrIsTheJournal) {
  const std::regex stamped(
      R"(^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] \[info\] policyd listening)");
  const std::regex bare(R"(^\[info\] policyd listening)");
  const std::regex any_stamp(R"(^\[\d{4}-\d\d-\d\d )");
  DaemonProcess& d = make_daemon({});
  // The log file exists before the first start, so its device and inode are known.
  { std::ofstream(d.log_path(), std::ios::app); }
  struct stat log_st {};
  ASSERT_EQ(::stat(d.log_path().c_str(), &log_st), 0);
  const std::string journal = std::to_string(static_cast<uintmax_t>(log_st.st_dev)) + ":" +
                              std::to_string(static_cast<uintmax_t>(log_st.st_ino));

  struct Case {
    std::string name;
    std::vector<std::string> env;
    bool timestamps;
  };
  const std::vector<Case> cases = {
      {"no JOURNAL_STREAM", {"JOURNAL_STREAM"}, true},
      {"JOURNAL_STREAM is stderr", {"JOURNAL_STREAM=" + journal}, false},
      // Inherited from a parent whose stderr went to the journal; ours goes elsewhere.
      {"JOURNAL_STREAM names another file", {"JOURNAL_STREAM=1:1"}, true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    DaemonOptions o = d.options();
    o.env = c.env;
    ASSERT_TRUE(d.rewrite_config(o).ok());
    const size_t from = d.log().size();
    Status st = d.start();
    ASSERT_TRUE(st.ok()) << st.error().message();
    ASSERT_EQ(d.stop(), 0);
    const std::vector<std::string> lines = log_lines(d.log(), from);
    const auto matches = [&](const std::regex& re) {
      return std::count_if(lines.begin(), lines.end(),
                           [&](const std::string& l) { return std::regex_search(l, re); });
    };
    if (c.timestamps) {
      EXPECT_EQ(matches(stamped), 1) << "no timestamped \"policyd listening\" line";
      EXPECT_EQ(matches(bare), 0);
    } else {
      EXPECT_EQ(matches(bare), 1) << "no bare \"[info] policyd listening\" line";
      EXPECT_EQ(matches(any_stamp), 0) << "a timestamped line although stderr is the journal";
    }
  }
}

}  // namespace
}  // namespace policyd::e2e
