// policyd_scale_bench: what one small change costs as the state grows (DESIGN.md, Scale: "a
// commit costs in proportion to the slots it changes"). For each populated-slot count it starts
// the real policyd (like the e2e fixture: private bpffs, temp socket, state_dir on the temp dir)
// under systemd's default soft RLIMIT_NOFILE of 1,024, fills an array_of_maps of 1-entry hash
// inner maps in chunks, then measures
//   - one-slot push->ack through gRPC (median, p90),
//   - the daemon's RSS (/proc/<pid>/status VmRSS) after the fill and after the pushes,
//   - bytes written per commit (/proc/<pid>/io write_bytes and wchar deltas over the pushes),
//   - restart to READY with the maps pinned (SIGTERM, start, until GetState answers), checking
//     that every slot still holds the same inner-map id (the data plane was not touched).
// Prints ratios against the 16-slot case and the Scale targets. Not a test: it asserts nothing
// about speed and exits 0 whenever it ran (77: bpf not permitted, 1: setup or a check failed).
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "bench_util.h"
#include "daemon_fixture.h"
#include "support/bpffs.h"
#include "util/result.h"

namespace policyd::bench {
namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = ::policyd::v1;
namespace fs = std::filesystem;

constexpr uint32_t kHistory = 16;
constexpr uint32_t kChunk = 4096;          // slots per populating push (~150 kB message)
constexpr uint64_t kDaemonFds = 256;       // fds the daemon needs besides inner maps, roughly
constexpr uint64_t kSoftLimit = 1024;      // systemd's default soft RLIMIT_NOFILE
constexpr double kPushTarget = 1.5;        // one-slot push at 16,384 / at 16, at most
constexpr double kRssTargetMb = 64;        // RSS at 16,384 slots, at most
constexpr double kRestartTargetMs = 3000;  // restart to READY at 16,384 slots, at most
constexpr uint32_t kTargetSlots = 16384;

struct Options {
  bool quick = false;
  int samples = 31;  // one-slot pushes per slot count (odd: a true median)
  std::vector<uint32_t> counts = {16, 1024, 16384, 65536};
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "policyd_scale_bench: %s\n", what.c_str());
  std::exit(1);
}

std::string maps_yaml(uint32_t slots) {
  return "maps:\n  - name: scale\n    type: array_of_maps\n    slots: " + std::to_string(slots) +
         R"(
    drain: none
    inner:
      type: hash
      max_entries: 1
      key:   [{name: k, type: u32}]
      value: [{name: v, type: u32}]
)";
}

// Replaces slots [first, first + count) with one entry each: slot -> value (distinct contents
// per slot, so each is its own contents file in state_dir).
v1::PushGenerationRequest fill(uint32_t first, uint32_t count, uint32_t value) {
  v1::PushGenerationRequest req;
  req.set_label("scale-" + std::to_string(value));
  for (uint32_t i = first; i < first + count; ++i) {
    e2e::add_change(req, "scale", e2e::index_slot(i),
                    {e2e::raw_entry(e2e::u32le(i), e2e::u32le(value))});
  }
  return req;
}

void push_or_die(v1::Policy::Stub& stub, const v1::PushGenerationRequest& req) {
  grpc::ClientContext ctx;
  e2e::set_deadline(ctx, std::chrono::minutes(5));
  v1::PushGenerationResponse resp;
  grpc::Status s = stub.PushGeneration(&ctx, req, &resp);
  if (!s.ok()) die("PushGeneration: " + e2e::describe(s));
}

// A "Key:   value" line's number from a /proc file (VmRSS in kB, write_bytes, wchar).
uint64_t proc_field(pid_t pid, const std::string& file, const std::string& key) {
  std::optional<uint64_t> v = e2e::proc_field(pid, file, key);
  if (!v) die("no " + key + " in /proc/" + std::to_string(pid) + "/" + file);
  return *v;
}

double rss_mb(pid_t pid) { return static_cast<double>(proc_field(pid, "status", "VmRSS")) / 1024; }

struct Row {
  uint32_t slots = 0;
  std::string skipped;  // why, when not measured
  double fill_s = 0;
  std::string soft_after_start;
  Summary push;
  double rss_filled_mb = 0;
  double rss_after_mb = 0;
  double write_bytes_per_commit = 0;
  double wchar_per_commit = 0;
  uint64_t db_bytes = 0;  // state.db and its log at the end
  double restart_ms = 0;
  bool data_plane_kept = false;
};

e2e::KernelSnapshot snapshot_or_die(const std::string& pin_dir) {
  Result<e2e::KernelSnapshot> snap = e2e::kernel_snapshot(pin_dir, {"scale"});
  if (!snap.ok()) die("read the pinned outer map: " + snap.error().message());
  return std::move(snap).value();
}

Row measure(const Options& opt, uint32_t slots, uint64_t hard) {
  Row row;
  row.slots = slots;
  const uint64_t needed = slots + kDaemonFds;
  if (needed > hard) {
    char why[160];
    std::snprintf(why, sizeof why,
                  "needs ~%.1fk fds (one per inner map), hard RLIMIT_NOFILE is %llu",
                  static_cast<double>(needed) / 1000, static_cast<unsigned long long>(hard));
    row.skipped = why;
    return row;
  }
  Result<test::PrivateBpffs> bpffs = test::PrivateBpffs::create();
  if (!bpffs.ok()) die("private bpffs: " + bpffs.error().message());
  char tmpl[] = "/tmp/policyd-scale-bench-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) die(std::string("mkdtemp: ") + std::strerror(errno));
  const std::string work = tmpl;

  e2e::DaemonOptions dopt;
  dopt.maps_yaml = maps_yaml(slots);
  dopt.log_level = "warn";  // info logs a line per commit: keep the log out of the wchar figure
  dopt.history = kHistory;
  dopt.max_message_bytes = 16 << 20;
  dopt.max_entries_per_push = 1 << 20;
  dopt.nofile = {{kSoftLimit, hard}};
  {
    e2e::DaemonProcess daemon(work, bpffs->join("pd"), dopt);
    progress(std::to_string(slots) + " slots: starting policyd");
    if (Status st = daemon.start(); !st.ok()) die("start policyd: " + st.error().message());
    row.soft_after_start = e2e::open_files_limit(daemon.pid()).first;
    auto stub = daemon.new_stub();

    progress(std::to_string(slots) + " slots: filling in chunks of " + std::to_string(kChunk));
    const auto t_fill = Clock::now();
    for (uint32_t first = 0; first < slots; first += kChunk) {
      push_or_die(*stub, fill(first, std::min(kChunk, slots - first), 1));
    }
    row.fill_s = ms_since(t_fill) / 1000;
    row.rss_filled_mb = rss_mb(daemon.pid());

    progress(std::to_string(slots) + " slots: " + std::to_string(opt.samples) + " one-slot pushes");
    const uint64_t wb0 = proc_field(daemon.pid(), "io", "write_bytes");
    const uint64_t wc0 = proc_field(daemon.pid(), "io", "wchar");
    std::vector<double> ms;
    for (int i = 0; i < opt.samples; ++i) {
      const uint32_t slot = static_cast<uint32_t>(i * 7919) % slots;
      v1::PushGenerationRequest req = fill(slot, 1, 100 + i);  // built outside the clock
      const auto t0 = Clock::now();
      push_or_die(*stub, req);
      ms.push_back(ms_since(t0));
    }
    const uint64_t wb1 = proc_field(daemon.pid(), "io", "write_bytes");
    const uint64_t wc1 = proc_field(daemon.pid(), "io", "wchar");
    row.push = summarize(ms);
    row.write_bytes_per_commit = static_cast<double>(wb1 - wb0) / opt.samples;
    row.wchar_per_commit = static_cast<double>(wc1 - wc0) / opt.samples;
    row.rss_after_mb = rss_mb(daemon.pid());
    std::error_code ec;
    row.db_bytes = fs::file_size(daemon.state_dir() + "/state.db", ec);
    const uintmax_t wal = fs::file_size(daemon.state_dir() + "/state.db-wal", ec);
    if (!ec) row.db_bytes += wal;

    progress(std::to_string(slots) + " slots: restart with the maps pinned");
    const e2e::KernelSnapshot before = snapshot_or_die(daemon.pin_dir());
    stub.reset();
    if (int code = daemon.stop(std::chrono::minutes(2)); code != 0) {
      die("policyd exited with " + std::to_string(code) + " on SIGTERM");
    }
    const auto t_restart = Clock::now();
    if (Status st = daemon.start(std::chrono::minutes(5)); !st.ok()) {
      die("restart policyd: " + st.error().message());
    }
    row.restart_ms = ms_since(t_restart);
    const e2e::KernelSnapshot after = snapshot_or_die(daemon.pin_dir());
    row.data_plane_kept = before == after && before.at("scale").size() == slots;
    if (int code = daemon.stop(std::chrono::minutes(2)); code != 0) {
      die("policyd exited with " + std::to_string(code) + " on SIGTERM");
    }
  }
  fs::remove_all(work);
  return row;
}

double ratio(double v, double base) { return base > 0 ? v / base : 0; }

void print_table(const std::vector<Row>& rows) {
  const Row* base = nullptr;
  for (const Row& r : rows) {
    if (r.slots == 16 && r.skipped.empty()) base = &r;
  }
  std::printf("== one-slot push->ack, RSS, bytes per commit, restart (history %u) ==\n", kHistory);
  std::printf("%7s %7s %9s %9s %7s %9s %9s %12s %11s %10s %9s %8s %s\n", "slots", "fill",
              "push med", "push p90", "ratio", "RSS fill", "RSS end", "write_b/cmt", "wchar/cmt",
              "state.db", "restart", "ratio", "data plane");
  for (const Row& r : rows) {
    if (!r.skipped.empty()) {
      std::printf("%7u slots: skipped, %s\n", r.slots, r.skipped.c_str());
      continue;
    }
    std::printf(
        "%7u %6.1fs %7.2fms %7.2fms %6.2fx %7.1fMB %7.1fMB %12.0f %11.0f %10llu %7.0fms %7.2fx "
        "%s\n",
        r.slots, r.fill_s, r.push.median, r.push.p90,
        base ? ratio(r.push.median, base->push.median) : 0, r.rss_filled_mb, r.rss_after_mb,
        r.write_bytes_per_commit, r.wchar_per_commit, static_cast<unsigned long long>(r.db_bytes),
        r.restart_ms, base ? ratio(r.restart_ms, base->restart_ms) : 0,
        r.data_plane_kept ? "same inner-map ids" : "CHANGED");
  }
  if (base) {
    std::printf("\nratios vs 16 slots:  ");
    for (const Row& r : rows) {
      if (!r.skipped.empty()) continue;
      std::printf("[%u: push %.2fx, RSS %.2fx, write_bytes %.2fx, restart %.2fx] ", r.slots,
                  ratio(r.push.median, base->push.median),
                  ratio(r.rss_after_mb, base->rss_after_mb),
                  ratio(r.write_bytes_per_commit, base->write_bytes_per_commit),
                  ratio(r.restart_ms, base->restart_ms));
    }
    std::printf("\n");
  }
  std::printf(
      "\nfill: chunks of %u slots per push, started under soft RLIMIT_NOFILE %llu (the soft limit "
      "after start is in the next line)\n",
      kChunk, static_cast<unsigned long long>(kSoftLimit));
  for (const Row& r : rows) {
    if (r.skipped.empty()) {
      std::printf("  %u slots: soft limit after start %s; fill ok\n", r.slots,
                  r.soft_after_start.c_str());
    }
  }
  std::printf(
      "write_b/cmt: /proc/<pid>/io write_bytes (bytes the daemon dirtied in the page cache, i.e. "
      "state_dir; log level warn) per one-slot commit; wchar/cmt: bytes passed to write(2) and "
      "friends, same window; state.db: size of state_dir/state.db plus its -wal at the end\n");

  const Row* target = nullptr;
  for (const Row& r : rows) {
    if (r.slots == kTargetSlots) target = &r;
  }
  std::printf("\n== Targets (DESIGN.md, Scale) ==\n");
  if (!target || !base) {
    std::printf("not measured in this run (needs the 16 and %u slot rows)\n", kTargetSlots);
    return;
  }
  if (!target->skipped.empty()) {
    std::printf("%u slots skipped: %s\n", kTargetSlots, target->skipped.c_str());
    return;
  }
  const double push_ratio = ratio(target->push.median, base->push.median);
  std::printf("%-52s %10s %8s  %s\n", "target", "measured", "goal", "verdict");
  std::printf("%-52s %9.2fx %8s  %s\n", "one-slot push at 16,384 / at 16 (median)", push_ratio,
              "<=1.5x", verdict(push_ratio <= kPushTarget));
  std::printf("%-52s %8.1fMB %8s  %s\n", "daemon RSS at 16,384 slots (after the pushes)",
              target->rss_after_mb, "<=64MB", verdict(target->rss_after_mb <= kRssTargetMb));
  std::printf("%-52s %8.0fms %8s  %s\n", "restart to READY at 16,384 slots, maps pinned",
              target->restart_ms, "<=3s", verdict(target->restart_ms <= kRestartTargetMs));
  std::printf("%-52s %10s %8s  %s\n", "16,384-slot fill started under soft RLIMIT_NOFILE 1024",
              "ok", "works", verdict(true));
}

Options parse_options(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      opt.quick = true;
      opt.samples = 5;
      opt.counts = {16, 1024};
    } else if (a.rfind("--samples=", 0) == 0) {
      opt.samples = static_cast<int>(std::strtol(a.c_str() + 10, nullptr, 10));
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: policyd_scale_bench [--quick] [--samples=N]\n"
          "  --quick      smoke run: 16 and 1,024 slots, 5 samples\n"
          "  --samples=N  one-slot pushes per slot count (default 31)\n"
          "Slot counts 16, 1,024, 16,384 and 65,536, each with its own policyd (private bpffs,\n"
          "temp socket and state_dir), started under soft RLIMIT_NOFILE 1024. A count the hard\n"
          "limit cannot hold (one fd per inner map) is printed as skipped. Needs root.\n"
          "Exit 0: ran; 77: bpf not permitted (skip); 1: setup or a check failed.\n");
      std::exit(0);
    } else {
      std::fprintf(stderr, "policyd_scale_bench: unknown option %s (try --help)\n", a.c_str());
      std::exit(2);
    }
  }
  if (opt.samples < 1) {
    std::fprintf(stderr, "policyd_scale_bench: --samples must be positive\n");
    std::exit(2);
  }
  return opt;
}

int run(int argc, char** argv) {
  const Options opt = parse_options(argc, argv);
  print_run_header("policyd_scale_bench", argc, argv);
  std::printf("daemon:  %s\n", e2e::policyd_bin().c_str());
  std::printf("load:    %s at start\n", load_average(true).c_str());
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) die(std::string("getrlimit: ") + std::strerror(errno));
  const uint64_t hard = rl.rlim_max == RLIM_INFINITY ? UINT64_MAX : rl.rlim_max;
  std::printf("limits:  hard RLIMIT_NOFILE %llu; each daemon starts at soft %llu\n",
              static_cast<unsigned long long>(hard), static_cast<unsigned long long>(kSoftLimit));
  std::printf(
      "gen:     array_of_maps, 1-entry hash inner maps (u32 -> u32), history %u; %d one-slot "
      "pushes per count%s\n\n",
      kHistory, opt.samples, opt.quick ? "  [--quick: smoke run, figures not meaningful]" : "");
  std::fflush(stdout);
  require_bpf("policyd_scale_bench");
  if (Result<test::PrivateBpffs> probe = test::PrivateBpffs::create(); !probe.ok()) {
    if (probe.error().sys_errno == EPERM && !test::privileged_required()) {
      std::printf("SKIP: cannot mount a private bpffs (%s)\n", probe.error().message().c_str());
      return kExitSkip;
    }
    die("private bpffs: " + probe.error().message());
  }

  std::vector<Row> rows;
  for (uint32_t slots : opt.counts) rows.push_back(measure(opt, slots, hard));
  print_table(rows);
  std::printf("load:    %s at end\n", load_average(false).c_str());
  for (const Row& r : rows) {
    if (r.skipped.empty() && !r.data_plane_kept) {
      std::fprintf(stderr, "policyd_scale_bench: %u slots: the restart changed the data plane\n",
                   r.slots);
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace policyd::bench

int main(int argc, char** argv) { return policyd::bench::run(argc, argv); }
