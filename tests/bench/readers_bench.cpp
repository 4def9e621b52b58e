// policyd_readers_bench: do reads delay writes? Starts the real policyd (like the e2e fixture:
// private bpffs, temp socket), fills one slot of map "big" with a 65,536-entry inner map
// (hash u32 -> u64 counter), then measures a writer's one-slot push->ack on map "w" with no
// readers and with N concurrent GetCounters loops on "big" (64 by default), in alternating
// phases so that drift in the machine's load hits both alike.
// Target (hostile and faulty clients): the push->ack p99 with readers <= 2x its p99 without.
// Prints medians, p90, p99, the ratio with PASS/MISS, and the readers' rate. Not a test: it
// asserts nothing about speed and exits 0 whenever it ran (77: bpf not permitted, 1: setup
// failed).
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "daemon_fixture.h"
#include "support/bpffs.h"

namespace policyd::bench {
namespace {

using Clock = std::chrono::steady_clock;
using e2e::Bytes;

constexpr uint32_t kBigEntries = 65536;
constexpr uint32_t kWriterSlots = 16;
constexpr size_t kReaderChannels = 16;  // api.max_connections_per_uid is 64
constexpr double kTarget = 2.0;

struct Options {
  bool quick = false;
  int samples = 200;  // pushes per condition
  int phases = 4;     // alternations of (no readers, readers)
  int readers = 64;
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "policyd_readers_bench: %s\n", what.c_str());
  std::exit(1);
}

std::string maps_yaml() {
  return R"(maps:
  - name: big
    type: array_of_maps
    slots: 4
    inner:
      type: hash
      max_entries: 65536
      key:   [{name: k, type: u32}]
      value: [{name: hits, type: u64, counter: true}]
  - name: w
    type: array_of_maps
    slots: 16
    inner:
      type: hash
      max_entries: 4
      key:   [{name: k, type: u32}]
      value: [{name: v, type: u64}]
)";
}

Bytes u64le(uint64_t v) {
  Bytes b(8);
  std::memcpy(b.data(), &v, 8);
  return b;
}

void push_or_die(v1::Policy::Stub& stub, const v1::PushGenerationRequest& req) {
  grpc::ClientContext ctx;
  e2e::set_deadline(ctx, std::chrono::seconds(60));
  v1::PushGenerationResponse resp;
  grpc::Status s = stub.PushGeneration(&ctx, req, &resp);
  if (!s.ok()) die("PushGeneration: " + e2e::describe(s));
}

void fill_big(v1::Policy::Stub& stub) {
  v1::PushGenerationRequest req;
  req.set_label("big");
  std::vector<v1::Entry> entries;
  entries.reserve(kBigEntries);
  for (uint32_t k = 0; k < kBigEntries; ++k) {
    entries.push_back(e2e::raw_entry(e2e::u32le(k), u64le(0)));
  }
  e2e::add_change(req, "big", e2e::index_slot(0), entries);
  push_or_die(stub, req);
}

// The writer's one-slot pushes, `n` of them; push->ack of each in ms.
std::vector<double> write(v1::Policy::Stub& stub, int n, uint64_t& tag) {
  std::vector<double> ms;
  for (int i = 0; i < n; ++i, ++tag) {
    v1::PushGenerationRequest req;
    req.set_label("w-" + std::to_string(tag));
    const std::vector<v1::Entry> entries = {e2e::raw_entry(e2e::u32le(0), u64le(tag))};
    e2e::add_change(req, "w", e2e::index_slot(static_cast<uint32_t>(tag % kWriterSlots)), entries);
    const auto t0 = Clock::now();
    push_or_die(stub, req);
    ms.push_back(ms_since(t0));
  }
  return ms;
}

// N threads looping GetCounters on "big" while `on` is set.
class Readers {
 public:
  Readers(const e2e::DaemonProcess& daemon, int n) {
    for (size_t c = 0; c < kReaderChannels; ++c) stubs_.push_back(daemon.new_stub());
    for (int t = 0; t < n; ++t) {
      threads_.emplace_back([this, t] { loop(*stubs_[static_cast<size_t>(t) % stubs_.size()]); });
    }
  }
  ~Readers() {
    stop_ = true;
    for (auto& t : threads_) t.join();
  }
  Readers(const Readers&) = delete;
  Readers& operator=(const Readers&) = delete;

  void set(bool on) { on_ = on; }
  [[nodiscard]] uint64_t reads() const { return reads_; }
  [[nodiscard]] uint64_t errors() const { return errors_; }
  [[nodiscard]] std::string last_error() {
    std::lock_guard lock(mu_);
    return last_error_;
  }
  [[nodiscard]] Summary latency() {
    std::lock_guard lock(mu_);
    return summarize(ms_);
  }

 private:
  void loop(v1::Policy::Stub& stub) {
    v1::GetCountersRequest req;
    req.set_map("big");
    while (!stop_) {
      if (!on_) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      grpc::ClientContext ctx;
      e2e::set_deadline(ctx, std::chrono::seconds(60));
      v1::GetCountersResponse resp;
      const auto t0 = Clock::now();
      grpc::Status s = stub.GetCounters(&ctx, req, &resp);
      const double ms = ms_since(t0);
      std::lock_guard lock(mu_);
      if (s.ok()) {
        ++reads_;
        ms_.push_back(ms);
      } else {
        ++errors_;
        last_error_ = e2e::describe(s);
      }
    }
  }

  std::vector<std::unique_ptr<v1::Policy::Stub>> stubs_;
  std::vector<std::thread> threads_;
  std::atomic<bool> on_{false}, stop_{false};
  std::mutex mu_;
  std::vector<double> ms_;
  std::atomic<uint64_t> reads_{0}, errors_{0};
  std::string last_error_;
};

Options parse_options(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto num = [&](const char* prefix) {
      return static_cast<int>(std::strtol(a.c_str() + std::strlen(prefix), nullptr, 10));
    };
    if (a == "--quick") {
      opt.quick = true;
      opt.samples = 20;
      opt.phases = 2;
      opt.readers = 8;
    } else if (a.rfind("--samples=", 0) == 0) {
      opt.samples = num("--samples=");
    } else if (a.rfind("--phases=", 0) == 0) {
      opt.phases = num("--phases=");
    } else if (a.rfind("--readers=", 0) == 0) {
      opt.readers = num("--readers=");
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: policyd_readers_bench [--quick] [--samples=N] [--phases=N] [--readers=N]\n"
          "  --quick        smoke run: 20 pushes per condition, 2 phases, 8 readers\n"
          "  --samples=N    writer pushes per condition (default 200)\n"
          "  --phases=N     alternations of no readers / readers (default 4)\n"
          "  --readers=N    concurrent GetCounters loops (default 64)\n"
          "Starts the real policyd on a private bpffs and a temp socket. Needs root.\n");
      std::exit(0);
    } else {
      std::fprintf(stderr, "policyd_readers_bench: unknown option %s (try --help)\n", a.c_str());
      std::exit(2);
    }
  }
  if (opt.samples < opt.phases || opt.phases < 1 || opt.readers < 1) {
    std::fprintf(stderr, "policyd_readers_bench: counts must be positive, samples >= phases\n");
    std::exit(2);
  }
  return opt;
}

int run(int argc, char** argv) {
  const Options opt = parse_options(argc, argv);
  print_run_header("policyd_readers_bench", argc, argv);
  std::printf("load:    %s at start\n", load_average(true).c_str());
  std::fflush(stdout);
  require_bpf("policyd_readers_bench");
  BenchDirs dirs("policyd_readers_bench", "readers-bench");
  const std::string& work = dirs.work();

  e2e::DaemonOptions dopt;
  dopt.maps_yaml = maps_yaml();
  dopt.log_level = "info";
  dopt.history = 16;
  dopt.max_message_bytes = 16 << 20;
  dopt.max_entries_per_push = 1 << 20;
  int exit_code = 0;
  {
    e2e::DaemonProcess daemon(work, dirs.bpffs().join("pd"), dopt);
    progress("starting policyd");
    if (Status st = daemon.start(); !st.ok()) die("start policyd: " + st.error().message());
    auto stub = daemon.new_stub();
    progress("filling big slot 0 with " + std::to_string(kBigEntries) + " entries");
    fill_big(*stub);
    uint64_t tag = 1;
    (void)write(*stub, 5, tag);  // warm up
    Readers readers(daemon, opt.readers);

    std::vector<double> quiet, busy;
    const int per_phase = opt.samples / opt.phases;
    uint64_t reads_busy = 0;
    double busy_ms = 0;
    for (int p = 0; p < opt.phases; ++p) {
      progress("phase " + std::to_string(p + 1) + "/" + std::to_string(opt.phases));
      readers.set(false);
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // reads in flight end
      for (double ms : write(*stub, per_phase, tag)) quiet.push_back(ms);
      readers.set(true);
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // every reader is reading
      const uint64_t r0 = readers.reads();
      const auto t0 = Clock::now();
      for (double ms : write(*stub, per_phase, tag)) busy.push_back(ms);
      busy_ms += ms_since(t0);
      reads_busy += readers.reads() - r0;
    }
    readers.set(false);
    const Summary q = summarize(quiet);
    const Summary b = summarize(busy);
    const Summary rl = readers.latency();
    std::printf(
        "\nbig:     1 slot x %u entries (hash u32 -> u64 counter); writer: 1-slot pushes "
        "to w%s\n\n",
        kBigEntries, opt.quick ? "  [--quick: smoke run, figures not meaningful]" : "");
    std::printf("== writer push->ack, one slot ==\n");
    std::printf("%-40s %5s %9s %9s %9s\n", "case", "n", "median", "p90", "p99");
    std::printf("%-40s %5zu %8.2fms %8.2fms %8.2fms\n", "no readers", q.n, q.median, q.p90, q.p99);
    std::printf("%-40s %5zu %8.2fms %8.2fms %8.2fms\n",
                (std::to_string(opt.readers) + " GetCounters loops on big").c_str(), b.n, b.median,
                b.p90, b.p99);
    std::printf(
        "\nreaders: %llu GetCounters answered during the busy phases (%.1f/s), median "
        "%.2f ms, p99 %.2f ms; %llu failed%s%s\n",
        static_cast<unsigned long long>(reads_busy), reads_busy / (busy_ms / 1000.0), rl.median,
        rl.p99, static_cast<unsigned long long>(readers.errors()),
        readers.errors() ? ", last: " : "", readers.last_error().c_str());
    const double ratio = b.p99 / q.p99;
    std::printf("\n== Target ==\n");
    std::printf("%-58s %7.2fx %8s  %s\n", "push->ack p99 with readers vs without", ratio, "<=2.0x",
                verdict(ratio <= kTarget));
    std::printf("%-58s %7.2fx %8s  %s\n", "push->ack median with readers vs without (reference)",
                b.median / q.median, "", "info");
    std::printf("\nload:    %s at end\n", load_average(false).c_str());
    if (readers.errors() != 0) exit_code = 1;
  }
  return exit_code;
}

}  // namespace
}  // namespace policyd::bench

int main(int argc, char** argv) { return policyd::bench::run(argc, argv); }
