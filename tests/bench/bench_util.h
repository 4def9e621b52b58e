// What policyd's bench binaries share: sample summaries, progress lines, the machine's load,
// and the bpf-permission rule (exit 77 = skip, unless CI requires privileged runs).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "support/bpffs.h"

#include "util/clock.h"
#include "util/result.h"

namespace policyd::bench {

inline constexpr int kExitSkip = 77;

struct Summary {
  size_t n = 0;
  double mean = 0;
  double median = 0;
  double p90 = 0;  // nearest rank
  double p99 = 0;  // nearest rank: meaningful from about 100 samples
};

[[nodiscard]] Summary summarize(std::vector<double> v);
using util::ms_since;  // the daemon's, so bench and daemon phase timings agree
[[nodiscard]] const char* verdict(bool ok);
// The first lines of a bench's output: its name, the command line, the kernel and CPUs.
void print_run_header(const char* tool, int argc, char** argv);
// A progress line on stderr (the table goes to stdout).
void progress(const std::string& msg);
// /proc/loadavg's first three fields; with `warn`, a note when the machine is not idle (grace
// periods, wake-ups and fills are only comparable on an otherwise idle machine).
[[nodiscard]] std::string load_average(bool warn);
// Exits 77 when the bpf syscall is not permitted (unless POLICYD_REQUIRE_PRIVILEGED=1), 1 on
// another bpf error; `tool` names the binary in messages.
void require_bpf(const char* tool);

// A private bpffs and an empty temp directory ("policyd-<name>-XXXXXX") for a bench that runs
// policyd; the directory is removed with everything in it when this goes. When the bpffs cannot
// be mounted it exits 77 (EPERM, unless privileged runs are required) or 1; mkdtemp failing
// exits 1.
class BenchDirs {
 public:
  BenchDirs(const char* tool, const std::string& name);
  ~BenchDirs();
  BenchDirs(const BenchDirs&) = delete;
  BenchDirs& operator=(const BenchDirs&) = delete;
  [[nodiscard]] test::PrivateBpffs& bpffs() { return *bpffs_; }
  [[nodiscard]] const std::string& work() const { return work_; }

 private:
  std::optional<test::PrivateBpffs> bpffs_;
  std::string work_;
};

// Sets /sys/kernel/rcu_expedited to 1 for the rest of the run: outer-map update waits then
// take about 70 us, as on Linux 6.19. The previous value is written back at every exit policyd's
// benches take: a normal return or std::exit (atexit), and the signals that end a process
// (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGABRT, SIGSEGV, SIGBUS: restored, then re-raised).
// Returns the previous value ('0' or '1'), or an error naming the file. Call once.
[[nodiscard]] Result<char> set_rcu_expedited();
// The current value of /sys/kernel/rcu_expedited, '?' when it cannot be read.
[[nodiscard]] char read_rcu_expedited();

}  // namespace policyd::bench
