// policyd_soak: does the daemon stay flat under hours of load? Starts the real policyd (like the
// e2e fixture: private bpffs, temp socket) and runs, for --minutes N:
// - 4 pushers at full rate, each replacing acl slot 0 (the counted one) and a slot of its own;
// - one reader looping GetCounters and GetState;
// - the counter program (tests/kernel/bpf: count_arr_lpm on the pinned acl) run continuously
//   through BPF_PROG_TEST_RUN, bumping the hit counter of 10.1.2.3 in slot 0.
// Every --sample-seconds (60) it samples the daemon's RSS, its open fds, the live BPF map ids
// and the bytes in state_dir, and prints a row. At the end, with the load stopped, it checks:
// - drained + live hits (GetCounters) equal the hits the program counted, exactly (G5);
// - RSS of every later sample is within +-5 % of the second sample's ("minute 2");
// - fds, map ids and state bytes of every later sample stay within a small margin of it.
// Exit 0 when every check held, 1 when one failed (or setup failed), 77 when bpf is not
// permitted. With fewer than three samples only the count check applies (said so).
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "daemon_fixture.h"
#include "kernel/map.h"
#include "support/bpffs.h"
#include "support/prog_run.h"
#include "test_progs.h"
#include "test_progs_ptr.h"

namespace policyd::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kPushers = 4;
constexpr uint32_t kCountedSlot = 0;
// Margins of "stayed flat" against the reference sample: a few fds and map ids come and go
// with the drains and the inner-map pool's refill; SQLite's WAL grows until a checkpoint.
constexpr double kRssMargin = 0.05;
constexpr long kFdMargin = 16;
constexpr long kMapIdMargin = 64;
constexpr double kStateMargin = 0.5;
constexpr long kStateSlackBytes = 8L << 20;

struct Options {
  double minutes = 1;
  int sample_seconds = 60;
};

struct Sample {
  double minute = 0;
  long rss_kb = 0;
  long fds = 0;
  long map_ids = 0;
  long state_bytes = 0;
  uint64_t acked = 0;
  uint64_t reads = 0;
  uint64_t runs = 0;
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "policyd_soak: %s\n", what.c_str());
  std::exit(1);
}

// Every BPF map id alive on the machine (the bench's own program maps included: they are
// constant).
long live_map_ids() {
  long n = 0;
  uint32_t id = 0;
  while (bpf_map_get_next_id(id, &id) == 0) ++n;
  return n;
}

long dir_bytes(const std::string& dir) {
  std::error_code ec;
  long n = 0;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) n += static_cast<long>(it->file_size(ec));
  }
  return n;
}

v1::PushGenerationRequest acl_push(uint64_t n, uint32_t own_slot) {
  v1::PushGenerationRequest req;
  req.set_label("soak-" + std::to_string(n));
  for (uint32_t slot : {kCountedSlot, own_slot}) {
    e2e::add_change(
        req, "acl", e2e::index_slot(slot),
        {e2e::typed_entry({{"prefix", "10.1.2.0/24"}}, {{"action", std::to_string(n % 1000)}})});
  }
  return req;
}

using test::SkelPtr;

// count_arr_lpm on the daemon's pinned acl, looking up 10.1.2.3 in kCountedSlot.
SkelPtr load_counter_program(const std::string& acl_pin) {
  auto acl = kernel::open_pinned(acl_pin);
  if (!acl.ok()) die(acl.error().message());
  std::string error;
  SkelPtr skel = test::load_counting_acl(acl->get(), kCountedSlot, error);
  if (!skel) die(error);
  return skel;
}

// The load: pushers, a reader and the program, until stop().
class Load {
 public:
  Load(const e2e::DaemonProcess& daemon, int prog) {
    for (int p = 0; p < kPushers; ++p) {
      threads_.emplace_back([this, p, stub = daemon.new_stub()] { push_loop(*stub, p); });
    }
    threads_.emplace_back([this, stub = daemon.new_stub()] { read_loop(*stub); });
    threads_.emplace_back([this, prog] {
      while (!stop_) {
        if (test::run_xdp(prog, 20).ok()) runs_ += 20;
      }
    });
  }
  ~Load() { stop(); }
  Load(const Load&) = delete;
  Load& operator=(const Load&) = delete;

  void stop() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  [[nodiscard]] uint64_t acked() const { return acked_; }
  [[nodiscard]] uint64_t reads() const { return reads_; }
  [[nodiscard]] uint64_t runs() const { return runs_; }
  [[nodiscard]] uint64_t failures() const { return failures_; }

 private:
  void push_loop(v1::Policy::Stub& stub, int p) {
    const uint32_t own = 1 + static_cast<uint32_t>(p);
    while (!stop_) {
      const uint64_t n = ++seq_;
      grpc::ClientContext ctx;
      e2e::set_deadline(ctx, std::chrono::seconds(30));
      v1::PushGenerationResponse resp;
      if (stub.PushGeneration(&ctx, acl_push(n, own), &resp).ok()) {
        ++acked_;
      } else {
        ++failures_;
      }
    }
  }
  void read_loop(v1::Policy::Stub& stub) {
    while (!stop_) {
      grpc::ClientContext c1, c2;
      e2e::set_deadline(c1, std::chrono::seconds(30));
      e2e::set_deadline(c2, std::chrono::seconds(30));
      v1::GetCountersRequest req;
      req.set_map("acl");
      v1::GetCountersResponse counters;
      v1::GetStateResponse state;
      const bool ok = stub.GetCounters(&c1, req, &counters).ok() &&
                      stub.GetState(&c2, v1::GetStateRequest{}, &state).ok();
      if (ok) {
        ++reads_;
      } else {
        ++failures_;
      }
    }
  }

  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> seq_{0}, acked_{0}, reads_{0}, runs_{0}, failures_{0};
};

uint64_t hits_total(v1::Policy::Stub& stub) {
  grpc::ClientContext ctx;
  e2e::set_deadline(ctx, std::chrono::seconds(30));
  v1::GetCountersRequest req;
  req.set_map("acl");
  v1::GetCountersResponse resp;
  grpc::Status s = stub.GetCounters(&ctx, req, &resp);
  if (!s.ok()) die("GetCounters: " + e2e::describe(s));
  uint64_t total = 0;
  for (const v1::CounterValue& c : resp.counters()) {
    if (c.field() == "hits") total += c.drained() + c.live();
  }
  return total;
}

Options parse_options(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--minutes" && i + 1 < argc) {
      opt.minutes = std::strtod(argv[++i], nullptr);
    } else if (a == "--sample-seconds" && i + 1 < argc) {
      opt.sample_seconds = static_cast<int>(std::strtol(argv[++i], nullptr, 10));
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: policyd_soak [--minutes N] [--sample-seconds S]\n"
          "  --minutes N          how long the load runs (default 1)\n"
          "  --sample-seconds S   seconds between samples (default 60)\n"
          "Starts the real policyd on a private bpffs and a temp socket. Needs root.\n");
      std::exit(0);
    } else {
      std::fprintf(stderr, "policyd_soak: unknown option %s (try --help)\n", a.c_str());
      std::exit(2);
    }
  }
  if (!(opt.minutes > 0) || opt.sample_seconds < 1) {
    std::fprintf(stderr, "policyd_soak: --minutes and --sample-seconds must be positive\n");
    std::exit(2);
  }
  return opt;
}

void print_row(const Sample& s) {
  std::printf("%7.1f %9.1f %6ld %8ld %11.1f %10llu %8llu %12llu\n", s.minute, s.rss_kb / 1024.0,
              s.fds, s.map_ids, s.state_bytes / 1024.0, static_cast<unsigned long long>(s.acked),
              static_cast<unsigned long long>(s.reads), static_cast<unsigned long long>(s.runs));
  std::fflush(stdout);
}

// One check line; false when it failed.
bool check(const std::string& what, bool ok, const std::string& detail) {
  std::printf("%-64s %s  %s\n", what.c_str(), verdict(ok), detail.c_str());
  return ok;
}

// The checks against the reference sample (the second: "minute 2" at 60 s samples).
bool check_flat(const std::vector<Sample>& samples) {
  if (samples.size() < 3) {
    std::printf("%-64s %s  %zu sample(s): at least 3 are needed\n",
                "RSS, fds, map ids and state bytes flat", "n/a", samples.size());
    return true;
  }
  const Sample& ref = samples[1];
  long rss_lo = ref.rss_kb, rss_hi = ref.rss_kb, fds = 0, ids = 0, state = 0;
  for (size_t i = 2; i < samples.size(); ++i) {
    rss_lo = std::min(rss_lo, samples[i].rss_kb);
    rss_hi = std::max(rss_hi, samples[i].rss_kb);
    fds = std::max(fds, samples[i].fds);
    ids = std::max(ids, samples[i].map_ids);
    state = std::max(state, samples[i].state_bytes);
  }
  bool ok = true;
  char d[160];
  std::snprintf(d, sizeof(d), "reference %.1f MB, later %.1f..%.1f MB", ref.rss_kb / 1024.0,
                rss_lo / 1024.0, rss_hi / 1024.0);
  ok &=
      check("RSS within +-5 % of the second sample",
            rss_lo >= ref.rss_kb * (1 - kRssMargin) && rss_hi <= ref.rss_kb * (1 + kRssMargin), d);
  std::snprintf(d, sizeof(d), "reference %ld, later at most %ld", ref.fds, fds);
  ok &= check("open fds flat (at most +" + std::to_string(kFdMargin) + ")",
              fds <= ref.fds + kFdMargin, d);
  std::snprintf(d, sizeof(d), "reference %ld, later at most %ld", ref.map_ids, ids);
  ok &= check("live BPF map ids flat (at most +" + std::to_string(kMapIdMargin) + ")",
              ids <= ref.map_ids + kMapIdMargin, d);
  std::snprintf(d, sizeof(d), "reference %.1f KB, later at most %.1f KB", ref.state_bytes / 1024.0,
                state / 1024.0);
  ok &=
      check("state_dir bytes flat (at most +50 % + 8 MB: the WAL between checkpoints)",
            state <= static_cast<long>(ref.state_bytes * (1 + kStateMargin)) + kStateSlackBytes, d);
  return ok;
}

int run(int argc, char** argv) {
  const Options opt = parse_options(argc, argv);
  print_run_header("policyd_soak", argc, argv);
  std::printf("load:    %s at start\n", load_average(true).c_str());
  std::fflush(stdout);
  require_bpf("policyd_soak");
  BenchDirs dirs("policyd_soak", "soak");

  e2e::DaemonOptions dopt;
  dopt.log_level = "warn";
  dopt.history = 16;
  bool ok = true;
  {
    e2e::DaemonProcess daemon(dirs.work(), dirs.bpffs().join("pd"), dopt);
    progress("starting policyd");
    if (Status st = daemon.start(); !st.ok()) die("start policyd: " + st.error().message());
    auto stub = daemon.new_stub();
    {
      grpc::ClientContext ctx;
      e2e::set_deadline(ctx, std::chrono::seconds(30));
      v1::PushGenerationResponse resp;
      grpc::Status s = stub->PushGeneration(&ctx, acl_push(0, 1), &resp);
      if (!s.ok()) die("first push: " + e2e::describe(s));
    }
    SkelPtr skel = load_counter_program(dirs.bpffs().join("pd/acl"));
    const int prog = bpf_program__fd(skel->progs.count_arr_lpm);

    std::printf(
        "\n%4d pushers (acl slot 0 and one slot each), 1 reader (GetCounters + GetState),"
        " the counter program; %.1f min, a sample every %d s\n\n",
        kPushers, opt.minutes, opt.sample_seconds);
    std::printf("%7s %9s %6s %8s %11s %10s %8s %12s\n", "minute", "RSS MB", "fds", "map ids",
                "state KB", "pushes", "reads", "prog runs");
    std::vector<Sample> samples;
    const auto t0 = Clock::now();
    const auto end = t0 + std::chrono::milliseconds(static_cast<long>(opt.minutes * 60000));
    Load load(daemon, prog);
    auto next = t0;
    while (next + std::chrono::seconds(opt.sample_seconds) <= end) {
      next += std::chrono::seconds(opt.sample_seconds);
      std::this_thread::sleep_until(next);
      Sample s;
      s.minute = std::chrono::duration<double>(Clock::now() - t0).count() / 60.0;
      s.rss_kb = static_cast<long>(e2e::proc_field(daemon.pid(), "status", "VmRSS").value_or(0));
      s.fds = static_cast<long>(e2e::open_fds(daemon.pid()));
      s.map_ids = live_map_ids();
      s.state_bytes = dir_bytes(daemon.state_dir());
      s.acked = load.acked();
      s.reads = load.reads();
      s.runs = load.runs();
      samples.push_back(s);
      print_row(s);
    }
    std::this_thread::sleep_until(end);
    load.stop();
    // A last push drains what the load's last commit replaced.
    {
      grpc::ClientContext ctx;
      e2e::set_deadline(ctx, std::chrono::seconds(30));
      v1::PushGenerationResponse resp;
      (void)stub->PushGeneration(&ctx, acl_push(0, 1), &resp);
    }
    const uint64_t found = skel->bss->hits_found;
    const uint64_t counted = hits_total(*stub);

    std::printf("\n== Checks ==\n");
    ok &= check("drained + live hits == the program's hits (exact)", counted == found,
                std::to_string(counted) + " counted, " + std::to_string(found) + " by the program");
    ok &= check("no push or read failed", load.failures() == 0,
                std::to_string(load.failures()) + " failed of " +
                    std::to_string(load.acked() + load.reads() + load.failures()));
    ok &= check("the daemon is still running", ::kill(daemon.pid(), 0) == 0, "");
    ok &= check_flat(samples);
    std::printf("\n%llu pushes acked (%.0f/s), %llu reads, %llu program runs\n",
                static_cast<unsigned long long>(load.acked()), load.acked() / (opt.minutes * 60.0),
                static_cast<unsigned long long>(load.reads()),
                static_cast<unsigned long long>(load.runs()));
  }
  std::printf("load:    %s at end\n", load_average(false).c_str());
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace policyd::bench

int main(int argc, char** argv) { return policyd::bench::run(argc, argv); }
