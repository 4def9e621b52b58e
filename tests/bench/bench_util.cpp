// Shared bench helpers.
#include "bench_util.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>

#include <sys/utsname.h>
#include <unistd.h>

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
  const auto rank = static_cast<size_t>(std::ceil(0.9 * static_cast<double>(v.size())));
  s.p90 = v[std::max<size_t>(rank, 1) - 1];
  return s;
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

}  // namespace policyd::bench
