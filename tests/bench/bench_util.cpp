// Shared bench helpers.
#include "bench_util.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>

#include <fcntl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <filesystem>

#include "kernel/map.h"
#include "support/bpffs.h"

namespace policyd::bench {

void print_run_header(const char* tool, int argc, char** argv) {
  std::string cmd;
  for (int i = 0; i < argc; ++i) cmd += (i ? " " : "") + std::string(argv[i]);
  utsname uts{};
  ::uname(&uts);
  std::printf("%s\ncommand: %s\n", tool, cmd.c_str());
  std::printf("kernel:  %s %s (%s), online cpus %ld\n", uts.sysname, uts.release, uts.machine,
              ::sysconf(_SC_NPROCESSORS_ONLN));
}

Summary summarize(std::vector<double> v) {
  Summary s;
  s.n = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  s.median = v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  auto nearest_rank = [&](double q) {
    const auto rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
    return v[std::max<size_t>(rank, 1) - 1];
  };
  s.p90 = nearest_rank(0.9);
  s.p99 = nearest_rank(0.99);
  return s;
}

BenchDirs::BenchDirs(const char* tool, const std::string& name) {
  Result<test::PrivateBpffs> fs = test::PrivateBpffs::create();
  if (!fs.ok()) {
    if (fs.error().sys_errno == EPERM && !test::privileged_required()) {
      std::printf("SKIP: cannot mount a private bpffs (%s)\n", fs.error().message().c_str());
      std::exit(kExitSkip);
    }
    std::fprintf(stderr, "%s: private bpffs: %s\n", tool, fs.error().message().c_str());
    std::exit(1);
  }
  bpffs_.emplace(std::move(fs).value());
  std::string tmpl =
      (std::filesystem::temp_directory_path() / ("policyd-" + name + "-XXXXXX")).string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    std::fprintf(stderr, "%s: mkdtemp: %s\n", tool, std::strerror(errno));
    std::exit(1);
  }
  work_ = tmpl;
}

BenchDirs::~BenchDirs() {
  std::error_code ec;
  std::filesystem::remove_all(work_, ec);
}

const char* verdict(bool ok) { return ok ? "PASS" : "MISS"; }

void progress(const std::string& msg) {
  std::fprintf(stderr, "  .. %s\n", msg.c_str());
  std::fflush(stderr);
}

std::string load_average(bool warn) {
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  if (f == nullptr) return "unknown";
  double a = 0, b = 0, c = 0;
  const int got = std::fscanf(f, "%lf %lf %lf", &a, &b, &c);
  std::fclose(f);
  if (got != 3) return "unknown";
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%.2f %.2f %.2f%s", a, b, c,
                warn && a > 1.0 ? "  (machine not idle: figures are skewed)" : "");
  return buf;
}

void require_bpf(const char* tool) {
  kernel::MapSpec spec{BPF_MAP_TYPE_ARRAY, "pd_bench_probe", 4, 4, 1, 0, -1};
  Result<kernel::UniqueFd> fd = kernel::create_map(spec);
  if (fd.ok()) return;
  if (fd.error().sys_errno == EPERM && !test::privileged_required()) {
    std::printf("SKIP: the bpf syscall is not permitted here (%s); run as root\n",
                fd.error().message().c_str());
    std::exit(kExitSkip);
  }
  std::fprintf(stderr, "%s: bpf syscall: %s\n", tool, fd.error().message().c_str());
  std::exit(1);
}

namespace {

constexpr const char* kRcuExpedited = "/sys/kernel/rcu_expedited";
std::atomic<char> g_rcu_previous{0};  // 0: nothing to restore

// Async-signal-safe: open, write and close only.
void restore_rcu_expedited() {
  const char previous = g_rcu_previous.exchange(0);
  if (previous == 0) return;
  const int fd = ::open(kRcuExpedited, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  const char text[2] = {previous, '\n'};
  (void)!::write(fd, text, sizeof(text));
  ::close(fd);
}

void restore_and_reraise(int sig) {
  restore_rcu_expedited();
  // SA_RESETHAND put the default action back: the process ends as the signal meant.
  ::raise(sig);
}

}  // namespace

char read_rcu_expedited() {
  const int fd = ::open(kRcuExpedited, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return '?';
  char c = '?';
  if (::read(fd, &c, 1) != 1) c = '?';
  ::close(fd);
  return c;
}

Result<char> set_rcu_expedited() {
  const char previous = read_rcu_expedited();
  if (previous != '0' && previous != '1') {
    return sys_error(errno, std::string("read ") + kRcuExpedited);
  }
  // Handlers first: a signal between the write and their installation would leave it set.
  g_rcu_previous.store(previous);
  std::atexit(restore_rcu_expedited);
  struct sigaction sa {};
  sa.sa_handler = restore_and_reraise;
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGABRT, SIGSEGV, SIGBUS}) {
    ::sigaction(sig, &sa, nullptr);
  }
  const int fd = ::open(kRcuExpedited, O_WRONLY | O_CLOEXEC);
  if (fd < 0 || ::write(fd, "1\n", 2) != 2) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    g_rcu_previous.store(0);
    return sys_error(err, std::string("write 1 to ") + kRcuExpedited);
  }
  ::close(fd);
  return previous;
}

}  // namespace policyd::bench
