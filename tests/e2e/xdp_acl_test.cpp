// Real traffic through the example XDP firewall (bpf/xdp_acl.bpf.c): two network namespaces
// joined by a veth pair, the real policyd on the maps of config/examples/xdp-acl.yaml, the
// program attached to the receiving veth by the real policyd-xdp-acl tool, and UDP datagrams
// numbered by the sender. Checks that after each push is acked every datagram sent later gets
// the new verdict (with a control: the same check on datagrams sent before the ack does see old
// verdicts), that drained plus live hit counters equal the frames that reached XDP exactly,
// the fixed-slot mode with its default action, and the layouts GetState reports.
#include "xdp_acl.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "daemon_fixture.h"
#include "netns.h"
#include "xdp_acl_layout.h"
#include "xdp_acl_loader.h"

#ifndef XDP_ACL_CONFIG
#error "XDP_ACL_CONFIG must name config/examples/xdp-acl.yaml (set by tests/e2e/CMakeLists.txt)"
#endif
#ifndef POLICYD_XDP_ACL_BIN
#error "POLICYD_XDP_ACL_BIN must name the policyd-xdp-acl tool (set by tests/e2e/CMakeLists.txt)"
#endif

namespace policyd::e2e {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr uint16_t kPort = 9000;
constexpr int kFlips = 100;        // generations pushed while traffic runs
constexpr uint64_t kWindow = 200;  // datagrams checked after each ack
constexpr size_t kMaxDatagrams = 4'000'000;

// Records which sequence numbers arrived on a UDP socket, on its own thread.
class Receiver {
 public:
  explicit Receiver(kernel::UniqueFd fd) : fd_(std::move(fd)), seen_(kMaxDatagrams, 0) {
    timeval tv{0, 50'000};  // recv wakes up to check the stop flag
    ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    thread_ = std::thread([this] { run(); });
  }
  ~Receiver() { stop(); }
  // Returns once nothing arrived for `quiet` (everything in flight is in), then stops.
  void drain_and_stop(milliseconds quiet) {
    uint64_t last = received_.load();
    for (;;) {
      std::this_thread::sleep_for(quiet);
      const uint64_t now = received_.load();
      if (now == last) break;
      last = now;
    }
    stop();
  }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // Valid after stop().
  [[nodiscard]] bool seen(uint64_t seq) const { return seq < seen_.size() && seen_[seq]; }
  [[nodiscard]] uint64_t received() const { return received_.load(); }
  [[nodiscard]] uint64_t out_of_range() const { return out_of_range_; }

 private:
  void run() {
    char buf[64];
    while (!stop_.load()) {
      const ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), 0);
      if (n < static_cast<ssize_t>(sizeof(uint64_t))) continue;
      uint64_t seq = 0;
      std::memcpy(&seq, buf, sizeof(seq));
      if (seq < seen_.size()) {
        seen_[seq] = 1;
      } else {
        ++out_of_range_;
      }
      received_.fetch_add(1);
    }
  }

  kernel::UniqueFd fd_;
  std::vector<uint8_t> seen_;  // written by the thread only; read after stop()
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> received_{0};
  uint64_t out_of_range_ = 0;
  std::thread thread_;
};

// One push during traffic: its verdict and where the sender was before it and after the ack.
struct Flip {
  uint32_t action = 0;     // XDP_ACL_ACTION_* of the generation pushed
  uint64_t before = 0;     // sender's started() just before the push
  uint64_t after_ack = 0;  // sender's started() just after the ack
  uint64_t generation = 0;
};

// Datagrams in [from, to) that show verdict `old_action` (dropped when it passes, or the
// reverse): for a window after the ack these must be zero.
uint64_t old_verdicts(const Receiver& rx, uint64_t from, uint64_t to, uint32_t new_action) {
  uint64_t n = 0;
  for (uint64_t s = from; s < to; ++s) {
    const bool passed = rx.seen(s);
    if (new_action == XDP_ACL_ACTION_PASS ? !passed : passed) ++n;
  }
  return n;
}

class XdpAclTest : public DaemonTest {
 protected:
  DaemonOptions daemon_options() const override {
    DaemonOptions o;
    o.maps_yaml = maps_section(XDP_ACL_CONFIG);  // policyd on exactly the example's maps
    o.log_level = "info";
    return o;
  }

  void SetUp() override {
    DaemonTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_FALSE(daemon_options().maps_yaml.empty()) << "no maps: section in " XDP_ACL_CONFIG;
    auto veth = VethPair::create("pdx", static_cast<uint8_t>(100 + ::getpid() % 100));
    ASSERT_TRUE(veth.ok()) << veth.error().message();
    veth_.emplace(std::move(veth).value());
    stats_pin_ = (fs::path(pin_dir()).parent_path() / "xacl_stats").string();
  }

  // policyd-xdp-acl attach, run inside b's namespace, on pdb, pinning the statistics map.
  void attach(const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {
        ip_binary(),         "netns",   "exec",        veth_->ns_b(),
        POLICYD_XDP_ACL_BIN, "attach",  "--dev",       VethPair::dev_b(),
        "--pin-dir",         pin_dir(), "--pin-stats", stats_pin_};
    argv.insert(argv.end(), extra.begin(), extra.end());
    CmdResult r = run_command(argv);
    ASSERT_EQ(r.exit_code, 0) << "policyd-xdp-acl attach failed: " << r.out << r.err;
    stats_fd_.reset(bpf_obj_get(stats_pin_.c_str()));
    ASSERT_TRUE(stats_fd_.valid()) << "open " << stats_pin_ << ": " << std::strerror(errno);
  }

  xdp::Stats stats() {
    auto s = xdp::read_stats(stats_fd_.get());
    EXPECT_TRUE(s.ok()) << s.error().message();
    return s.ok() ? *s : xdp::Stats{};
  }

  // Replaces one slot with rules {prefix -> action}; returns the generation (0 on failure).
  uint64_t push_rules(const std::string& map, const v1::SlotRef& slot,
                      const std::vector<std::pair<std::string, uint32_t>>& rules,
                      const std::string& label) {
    return push_ok(rules_push(map, slot, rules, label));
  }

  uint64_t push_sender_rule(uint32_t action, const std::string& label) {
    return push_rules(XDP_ACL_MAP_BY_IFINDEX,
                      fields_slot({{"ifindex", std::to_string(veth_->ifindex_b())}}),
                      {{veth_->addr_a() + "/32", action}}, label);
  }

  // Drained + live `hits` over every slot of `map`, from GetCounters.
  uint64_t hit_total(const std::string& map) { return counter_sum(map, "hits").total(); }

  // Polls until the hit total equals `want` (drains run after the ack and may lag).
  bool wait_hit_total(const std::string& map, uint64_t want, uint64_t* last) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    do {
      *last = hit_total(map);
      if (*last == want) return true;
      std::this_thread::sleep_for(milliseconds(20));
    } while (std::chrono::steady_clock::now() < deadline);
    return false;
  }

  uint64_t rx_packets() {
    auto r = veth_->rx_packets_b();
    EXPECT_TRUE(r.ok()) << r.error().message();
    return r.ok() ? *r : 0;
  }

  std::unique_ptr<UdpSender> new_sender(int burst, std::chrono::microseconds pause) {
    auto fd = udp_socket_in(veth_->ns_a(), veth_->addr_a(), kPort);
    EXPECT_TRUE(fd.ok()) << fd.error().message();
    if (!fd.ok()) return nullptr;
    return std::make_unique<UdpSender>(std::move(fd).value(), veth_->addr_b(), kPort, burst, pause);
  }

  std::unique_ptr<Receiver> new_receiver() {
    auto fd = udp_socket_in(veth_->ns_b(), veth_->addr_b(), kPort, 64 << 20);
    EXPECT_TRUE(fd.ok()) << fd.error().message();
    return fd.ok() ? std::make_unique<Receiver>(std::move(fd).value()) : nullptr;
  }

  std::optional<VethPair> veth_;
  std::string stats_pin_;
  kernel::UniqueFd stats_fd_;
};

TEST_F(XdpAclTest, G4_G5_VerdictsFollowEachAckAndCountersAddUpExactly) {
  attach({"--default", "pass"});
  ASSERT_FALSE(HasFatalFailure());
  // Generation 1 (pass) before any traffic, so that every datagram matches a rule.
  ASSERT_NE(push_sender_rule(XDP_ACL_ACTION_PASS, "pass-0"), 0u);

  std::unique_ptr<Receiver> rx = new_receiver();
  std::unique_ptr<UdpSender> tx = new_sender(8, std::chrono::microseconds(200));
  ASSERT_TRUE(rx && tx);
  const uint64_t rx_before = rx_packets();
  const xdp::Stats stats_before = stats();
  tx->start();
  ASSERT_TRUE(tx->wait_started(kWindow, milliseconds(5000))) << "the sender does not send";

  std::vector<Flip> flips;
  for (int i = 0; i < kFlips; ++i) {
    Flip f;
    f.action = i % 2 == 0 ? XDP_ACL_ACTION_DROP : XDP_ACL_ACTION_PASS;
    f.before = tx->started();
    f.generation = push_sender_rule(f.action, "flip-" + std::to_string(i));
    f.after_ack = tx->started();
    ASSERT_NE(f.generation, 0u);
    flips.push_back(f);
    ASSERT_TRUE(tx->wait_started(f.after_ack + kWindow, milliseconds(5000)))
        << "the sender stalled after flip " << i;
  }
  tx->stop();
  rx->drain_and_stop(milliseconds(300));
  ASSERT_LT(tx->started(), kMaxDatagrams) << "raise kMaxDatagrams";
  EXPECT_EQ(rx->out_of_range(), 0u);

  // After each ack: the kWindow datagrams sent next all follow the new verdict.
  uint64_t late = 0, control_old = 0;
  for (size_t i = 0; i < flips.size(); ++i) {
    const Flip& f = flips[i];
    const uint64_t bad = old_verdicts(*rx, f.after_ack, f.after_ack + kWindow, f.action);
    EXPECT_EQ(bad, 0u) << "flip " << i << " (generation " << f.generation << ", "
                       << (f.action == XDP_ACL_ACTION_DROP ? "drop" : "pass") << "): " << bad
                       << " of the " << kWindow << " datagrams sent after the ack got the old "
                       << "verdict";
    late += bad;
    // Control: datagrams sent between the push and its ack may still see the old trie; the
    // same check applied to them must find some, or it could not detect a late swap either.
    control_old += old_verdicts(*rx, f.before, f.after_ack, f.action);
  }
  EXPECT_EQ(late, 0u);
  EXPECT_GT(control_old, 0u) << "no datagram sent before an ack got the old verdict over " << kFlips
                             << " flips: the window check cannot tell old from new";

  // Every frame that reached XDP on pdb is one hit, drained or live, in policyd's counters.
  const uint64_t reached = rx_packets() - rx_before;
  const xdp::Stats s = stats();
  EXPECT_EQ(reached, tx->sent()) << "datagrams sent but not seen by pdb (veth drops?)";
  EXPECT_EQ(tx->errors(), 0u);
  EXPECT_EQ(s[XDP_ACL_STAT_MATCHED] - stats_before[XDP_ACL_STAT_MATCHED], reached);
  EXPECT_EQ(s[XDP_ACL_STAT_NOT_IPV4], stats_before[XDP_ACL_STAT_NOT_IPV4]) << "stray frames";
  EXPECT_EQ(s[XDP_ACL_STAT_PASS] - stats_before[XDP_ACL_STAT_PASS], rx->received())
      << "every passed datagram reaches the socket, no dropped one does";
  EXPECT_EQ(rx->received() + (s[XDP_ACL_STAT_DROP] - stats_before[XDP_ACL_STAT_DROP]), reached);
  uint64_t hits = 0;
  EXPECT_TRUE(wait_hit_total(XDP_ACL_MAP_BY_IFINDEX, reached, &hits))
      << "drained + live hits " << hits << " != " << reached << " frames that reached XDP";
  const uint64_t drained = counter_sum(XDP_ACL_MAP_BY_IFINDEX, "hits").drained;
  // Most hits live in the replaced tries: without the drain the totals would be far off.
  EXPECT_GT(drained, reached / 2) << "drained " << drained << " of " << reached;
  std::printf(
      "xdp_acl: %zu flips, %llu datagrams reached XDP, %llu passed, %llu drained hits, "
      "%llu datagrams with the old verdict before the acks (control)\n",
      flips.size(), static_cast<unsigned long long>(reached),
      static_cast<unsigned long long>(rx->received()), static_cast<unsigned long long>(drained),
      static_cast<unsigned long long>(control_old));
}

// Sends `n` datagrams and returns how many the receiver got.
uint64_t send_and_count(UdpSender& tx, Receiver& rx, uint64_t n) {
  const uint64_t before = rx.received();
  tx.send_now(n);
  std::this_thread::sleep_for(milliseconds(200));
  return rx.received() - before;
}

TEST_F(XdpAclTest, FixedSlotModeAppliesTheDefaultActionWithoutSlotOrRule) {
  constexpr uint32_t kFixed = 5;
  attach({"--slot", std::to_string(kFixed), "--default", "drop"});
  ASSERT_FALSE(HasFatalFailure());
  std::unique_ptr<Receiver> rx = new_receiver();
  std::unique_ptr<UdpSender> tx = new_sender(1, std::chrono::microseconds(100));
  ASSERT_TRUE(rx && tx);
  constexpr uint64_t kN = 100;

  // Empty slot: default drop.
  xdp::Stats s0 = stats();
  EXPECT_EQ(send_and_count(*tx, *rx, kN), 0u);
  xdp::Stats s1 = stats();
  EXPECT_EQ(s1[XDP_ACL_STAT_NO_SLOT] - s0[XDP_ACL_STAT_NO_SLOT], kN);

  // A rule for the sender in xacl[5]: passed, counted.
  ASSERT_NE(
      push_rules(XDP_ACL_MAP_BY_INDEX, index_slot(kFixed),
                 {{veth_->addr_a() + "/32", XDP_ACL_ACTION_PASS}, {"0.0.0.0/0", 2}}, "fixed-pass"),
      0u);
  EXPECT_EQ(send_and_count(*tx, *rx, kN), kN);
  // A slot other than 5 has no effect on this program.
  ASSERT_NE(push_rules(XDP_ACL_MAP_BY_INDEX, index_slot(kFixed + 1),
                       {{"0.0.0.0/0", XDP_ACL_ACTION_DROP}}, "other-slot"),
            0u);
  EXPECT_EQ(send_and_count(*tx, *rx, kN), kN);

  // Rules that do not match the sender: default drop, not counted as a hit.
  ASSERT_NE(push_rules(XDP_ACL_MAP_BY_INDEX, index_slot(kFixed),
                       {{"192.0.2.0/24", XDP_ACL_ACTION_PASS}}, "fixed-nomatch"),
            0u);
  xdp::Stats s2 = stats();
  EXPECT_EQ(send_and_count(*tx, *rx, kN), 0u);
  xdp::Stats s3 = stats();
  EXPECT_EQ(s3[XDP_ACL_STAT_NO_MATCH] - s2[XDP_ACL_STAT_NO_MATCH], kN);
  rx->stop();
  uint64_t hits = 0;
  EXPECT_TRUE(wait_hit_total(XDP_ACL_MAP_BY_INDEX, 2 * kN, &hits)) << "hits " << hits;
}

// The layouts GetState reports for the example's maps match bpf/xdp_acl.h (the same check the
// build runs on the config file), and the check notices a field that moved.
TEST_F(XdpAclTest, GetStateLayoutsMatchTheProgramStructs) {
  auto views = [](const google::protobuf::RepeatedPtrField<v1::FieldLayout>& fields) {
    std::vector<xdp::FieldView> out;
    for (const v1::FieldLayout& f : fields) {
      out.push_back({f.name(), f.offset(), f.size(), f.counter(), f.type().rfind("pad", 0) == 0});
    }
    return out;
  };
  int checked = 0;
  const v1::GetStateResponse state = get_state();
  for (const v1::MapState& m : state.maps()) {
    xdp::MapView v{m.name(),
                   m.type(),
                   m.slots(),
                   m.slot_key_size(),
                   m.inner_type(),
                   m.inner_max_entries(),
                   m.key_size(),
                   m.value_size(),
                   views(m.key_layout()),
                   views(m.value_layout())};
    std::vector<std::string> problems = xdp::check_map(v);
    EXPECT_TRUE(problems.empty()) << m.name() << ": " << ::testing::PrintToString(problems);
    ++checked;
    // Control: hits one byte further must be reported.
    for (xdp::FieldView& f : v.value) {
      if (f.name == "hits") f.offset += 1;
    }
    EXPECT_FALSE(xdp::check_map(v).empty()) << "a moved hits field went unnoticed";
  }
  EXPECT_EQ(checked, 2);
}

}  // namespace
}  // namespace policyd::e2e
