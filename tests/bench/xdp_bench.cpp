// policyd_xdp_bench: packets per second through the example XDP firewall (bpf/xdp_acl.bpf.c) on
// a veth pair while policyd commits generations into its slot continuously, against the same
// traffic with no commits, samples interleaved (idle, commits, idle, ...) in one run. Starts
// the real policyd on the maps of config/examples/xdp-acl.yaml (private bpffs, temp socket),
// attaches the program to the receiving veth and floods UDP from the other namespace; pps is
// the receiving veth's RX counter (every frame that reached XDP) over each sample. Every
// generation drops the sender, so each frame costs the same in both modes. Also reported, to
// tell the data path's cost from CPU contention on a shared machine: frames per CPU-second of
// the flood thread, and the program's own run time per packet (kernel BPF run-time stats).
// Prints medians and the ratio against the 0.95x target. Not a test: exits 0 whenever it ran (77:
// bpf not permitted, 1: setup failed).
#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "daemon_fixture.h"
#include "kernel/unique_fd.h"
#include "netns.h"
#include "support/bpffs.h"
#include "xdp_acl.h"
#include "xdp_acl_loader.h"

#ifndef XDP_ACL_CONFIG
#error "XDP_ACL_CONFIG must name config/examples/xdp-acl.yaml (set by tests/bench/CMakeLists.txt)"
#endif

namespace policyd::bench {
namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = ::policyd::v1;
constexpr uint16_t kPort = 9000;
constexpr double kTarget = 0.95;

struct Options {
  bool quick = false;
  int samples = 9;  // per mode (odd: a true median)
  int sample_ms = 1000;
  bool pin = false;  // flood (and its veth NAPI) on CPU 0, daemon and pusher on CPU 1
};

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "policyd_xdp_bench: %s\n", msg.c_str());
  std::exit(1);
}

// Restricts the calling thread (and the threads and processes it creates later) to `cpu`.
void pin_to_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (::sched_setaffinity(0, sizeof(set), &set) != 0) {
    die("sched_setaffinity(cpu " + std::to_string(cpu) + "): " + std::strerror(errno));
  }
}

// A generation that replaces the sender's slot with "drop the sender" plus `n`-dependent
// filler rules (so every generation is a new trie with different contents).
v1::PushGenerationRequest drop_generation(uint32_t ifindex, const std::string& sender, int n) {
  v1::PushGenerationRequest req;
  std::vector<v1::Entry> entries = {
      e2e::typed_entry({{"prefix", sender + "/32"}}, {{"action", "2"}}),
      e2e::typed_entry({{"prefix", "192.0." + std::to_string(n % 256) + ".0/24"}},
                       {{"action", "1"}})};
  e2e::add_change(req, XDP_ACL_MAP_BY_IFINDEX,
                  e2e::fields_slot({{"ifindex", std::to_string(ifindex)}}), entries);
  return req;
}

grpc::Status push(v1::Policy::Stub& stub, const v1::PushGenerationRequest& req) {
  grpc::ClientContext ctx;
  e2e::set_deadline(ctx);
  v1::PushGenerationResponse resp;
  return stub.PushGeneration(&ctx, req, &resp);
}

// Pushes generations back to back on its own thread while running.
class Committer {
 public:
  Committer(v1::Policy::Stub& stub, uint32_t ifindex, std::string sender)
      : stub_(stub), ifindex_(ifindex), sender_(std::move(sender)) {}
  void start() {
    stop_ = false;
    thread_ = std::thread([this] {
      while (!stop_) {
        grpc::Status s = push(stub_, drop_generation(ifindex_, sender_, n_));
        if (s.ok())
          ++committed_;
        else
          ++failed_;
        ++n_;
      }
    });
  }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  [[nodiscard]] uint64_t committed() const { return committed_; }
  [[nodiscard]] uint64_t failed() const { return failed_; }

 private:
  v1::Policy::Stub& stub_;
  uint32_t ifindex_;
  std::string sender_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> committed_{0};
  std::atomic<uint64_t> failed_{0};
  int n_ = 0;
  std::thread thread_;
};

struct Sample {
  double pps = 0;         // frames that reached XDP on pdb per wall-clock second
  double per_cpu_s = 0;   // the same frames per CPU-second the flood thread got
  double ns_per_run = 0;  // the XDP program's own run time per packet (kernel bpf stats)
};

// The program's cumulative run count and run time (counted while bpf stats are enabled).
std::pair<uint64_t, uint64_t> prog_run_stats(int prog_fd) {
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(prog_fd, &info, &len) != 0) {
    die(std::string("bpf_obj_get_info_by_fd: ") + std::strerror(errno));
  }
  return {info.run_cnt, info.run_time_ns};
}

// One sample of `ms`: pdb's RX counter (every frame that reached XDP) over wall-clock time and
// over the flood thread's CPU time. On a shared machine the second one separates what a frame
// costs from how much CPU the sender was given.
Sample sample(const e2e::VethPair& veth, const e2e::UdpSender& flood, int prog_fd, int ms) {
  auto before = veth.rx_packets_b();
  const auto [runs0, run_ns0] = prog_run_stats(prog_fd);
  const uint64_t cpu0 = flood.cpu_ns();
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  auto after = veth.rx_packets_b();
  const uint64_t cpu1 = flood.cpu_ns();
  const auto [runs1, run_ns1] = prog_run_stats(prog_fd);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!before.ok() || !after.ok()) die("read pdb RX counter");
  // rtnl_link_stats is 32-bit: unsigned wrap-around arithmetic is still right for one sample.
  const auto frames = static_cast<double>(static_cast<uint32_t>(*after - *before));
  const double cpu_s = static_cast<double>(cpu1 - cpu0) / 1e9;
  const uint64_t runs = runs1 - runs0;
  return {frames / secs, cpu_s > 0 ? frames / cpu_s : 0,
          runs > 0 ? static_cast<double>(run_ns1 - run_ns0) / static_cast<double>(runs) : 0};
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      o.quick = true;
      o.samples = 3;
      o.sample_ms = 300;
    } else if (a == "--pin") {
      o.pin = true;
    } else if (a.rfind("--samples=", 0) == 0) {
      o.samples = std::max(1, std::atoi(a.c_str() + 10));
    } else if (a.rfind("--sample-ms=", 0) == 0) {
      o.sample_ms = std::max(50, std::atoi(a.c_str() + 12));
    } else {
      std::fprintf(stderr,
                   "usage: policyd_xdp_bench [--quick] [--pin] [--samples=N] [--sample-ms=MS]\n"
                   "  --quick        smoke run: 3 samples of 300 ms per mode\n"
                   "  --samples=N    samples per mode (default 9)\n"
                   "  --sample-ms=MS length of one sample (default 1000)\n"
                   "  --pin          the flood (and its veth NAPI) on CPU 0, policyd and the\n"
                   "                 pusher on CPU 1 (default: the scheduler places everything)\n");
      std::exit(2);
    }
  }
  return o;
}

int run(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  print_run_header("policyd_xdp_bench", argc, argv);
  std::printf("load:    %s at start\n", load_average(true).c_str());
  std::fflush(stdout);

  require_bpf("policyd_xdp_bench");
  Result<test::PrivateBpffs> bpffs = test::PrivateBpffs::create();
  if (!bpffs.ok()) die("private bpffs: " + bpffs.error().message());
  char tmpl[] = "/tmp/policyd-xdp-bench-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) die(std::string("mkdtemp: ") + std::strerror(errno));
  const std::string work = tmpl;

  const bool pin = opt.pin && ::sysconf(_SC_NPROCESSORS_ONLN) >= 2;
  // Set before the daemon is spawned: policyd and every thread here inherit CPU 1; the flood
  // thread moves itself to CPU 0.
  if (pin) pin_to_cpu(1);
  e2e::DaemonOptions dopt;
  dopt.maps_yaml = e2e::maps_section(XDP_ACL_CONFIG);
  if (dopt.maps_yaml.empty()) die("no maps: section in " XDP_ACL_CONFIG);
  dopt.log_level = "warn";
  int exit_code = 0;
  {
    e2e::DaemonProcess daemon(work, bpffs->join("pd"), dopt);
    progress("starting policyd");
    if (Status st = daemon.start(); !st.ok()) die("start policyd: " + st.error().message());
    auto veth = e2e::VethPair::create("pdxb", static_cast<uint8_t>(200 + ::getpid() % 50));
    if (!veth.ok()) die(veth.error().message());
    const uint32_t ifindex = veth->ifindex_b();

    xdp::LoadOptions lo;
    lo.pin_dir = daemon.pin_dir();
    lo.default_action = XDP_ACL_ACTION_DROP;
    auto acl = xdp::XdpAcl::load(lo);
    if (!acl.ok()) die(acl.error().message());
    // Per-program run time accounting (BPF_ENABLE_STATS), on while the fd is open.
    kernel::UniqueFd stats_on(bpf_enable_stats(BPF_STATS_RUN_TIME));
    if (!stats_on.valid()) die(std::string("bpf_enable_stats: ") + std::strerror(errno));
    Status attached = e2e::run_in_netns(veth->ns_b(), [&] { return acl->attach(ifindex, 0); });
    if (!attached.ok()) die(attached.error().message());

    auto stub = daemon.new_stub();
    if (grpc::Status s = push(*stub, drop_generation(ifindex, veth->addr_a(), 0)); !s.ok()) {
      die("first push: " + e2e::describe(s));
    }
    auto fd = e2e::udp_socket_in(veth->ns_a(), veth->addr_a(), kPort);
    if (!fd.ok()) die(fd.error().message());
    e2e::UdpSender flood(std::move(fd).value(), veth->addr_b(), kPort, 64,
                         std::chrono::microseconds(0), pin ? 0 : -1);
    Committer committer(*stub, ifindex, veth->addr_a());
    flood.start();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // warm up

    std::printf(
        "setup:   UDP flood (one sender thread) -> pdb with xdp_acl_ifindex, every "
        "generation drops the sender; %d samples x %d ms per mode; %s%s\n\n",
        opt.samples, opt.sample_ms,
        pin ? "flood on CPU 0, policyd and pusher on CPU 1" : "no CPU pinning",
        opt.quick ? "  [--quick: smoke run, figures not meaningful]" : "");
    std::vector<double> idle, busy, ratios, idle_cpu, busy_cpu, idle_ns, busy_ns;
    uint64_t commits = 0;
    for (int i = 0; i < opt.samples; ++i) {
      progress("sample " + std::to_string(i + 1) + "/" + std::to_string(opt.samples));
      const Sample a = sample(*veth, flood, acl->prog_fd(), opt.sample_ms);
      const uint64_t c0 = committer.committed();
      committer.start();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // commits under way
      const Sample b = sample(*veth, flood, acl->prog_fd(), opt.sample_ms);
      committer.stop();
      commits += committer.committed() - c0;
      idle.push_back(a.pps);
      busy.push_back(b.pps);
      idle_cpu.push_back(a.per_cpu_s);
      busy_cpu.push_back(b.per_cpu_s);
      idle_ns.push_back(a.ns_per_run);
      busy_ns.push_back(b.ns_per_run);
      ratios.push_back(b.pps / a.pps);
    }
    flood.stop();
    const Summary si = summarize(idle), sb = summarize(busy), sr = summarize(ratios);
    const Summary sic = summarize(idle_cpu), sbc = summarize(busy_cpu);
    const Summary sin = summarize(idle_ns), sbn = summarize(busy_ns);
    const double total_busy_s = opt.samples * (opt.sample_ms + 50) / 1000.0;
    std::printf("%-40s %4s %12s %12s %12s\n", "case", "n", "median pps", "p90 pps", "mean pps");
    std::printf("%-40s %4zu %12.0f %12.0f %12.0f\n", "no commits", si.n, si.median, si.p90,
                si.mean);
    std::printf("%-40s %4zu %12.0f %12.0f %12.0f\n", "generations committed continuously", sb.n,
                sb.median, sb.p90, sb.mean);
    std::printf("%-40s %4zu %12.0f %12.0f %12.0f\n", "no commits, per flood CPU-second", sic.n,
                sic.median, sic.p90, sic.mean);
    std::printf("%-40s %4zu %12.0f %12.0f %12.0f\n", "commits, per flood CPU-second", sbc.n,
                sbc.median, sbc.p90, sbc.mean);
    std::printf("%-40s %4zu %11.1fns %11.1fns %11.1fns\n", "no commits, XDP program run time/pkt",
                sin.n, sin.median, sin.p90, sin.mean);
    std::printf("%-40s %4zu %11.1fns %11.1fns %11.1fns\n", "commits, XDP program run time/pkt",
                sbn.n, sbn.median, sbn.p90, sbn.mean);
    std::printf("  %llu generations committed during the commit samples (%.0f/s), %llu failed\n",
                static_cast<unsigned long long>(commits), commits / total_busy_s,
                static_cast<unsigned long long>(committer.failed()));
    const double ratio = sb.median / si.median;
    std::printf("\n%-52s %8s %8s  %s\n", "target", "measured", "goal", "verdict");
    std::printf("%-52s %7.3fx %8s  %s\n", "pps with commits / pps without (medians)", ratio,
                ">=0.95x", verdict(ratio >= kTarget));
    std::printf("%-52s %7.3fx %8s  %s\n", "median of per-pair ratios (reference)", sr.median,
                ">=0.95x", "info");
    std::printf("%-52s %7.3fx %8s  %s\n", "frames per flood CPU-second, commits / none",
                sbc.median / sic.median, ">=0.95x", "info");
    std::printf("%-52s %7.3fx %8s  %s\n", "XDP run time per packet, none / commits",
                sin.median / sbn.median, ">=0.95x", "info");
    std::printf("\nload:    %s at end\n", load_average(false).c_str());
    stub.reset();
    const int code = daemon.stop();
    if (code != 0) {
      std::printf("\nWARNING: policyd exited with code %d on SIGTERM\n", code);
      exit_code = 1;
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(work, ec);
  return exit_code;
}

}  // namespace
}  // namespace policyd::bench

int main(int argc, char** argv) { return policyd::bench::run(argc, argv); }
