// VethPair and the namespace helpers; see netns.h.
#include "netns.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "daemon_fixture.h"

namespace policyd::e2e {

std::string ip_binary() {
  for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return "ip";
}

namespace {

// Unique per process and per call, so parallel runs and reruns never share a namespace.
std::string unique_stem(const std::string& prefix) {
  static std::atomic<int> counter{0};
  return prefix + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

// Namespaces "<prefix><pid>-<n>{a,b}" left by a run that was killed (no destructor ran) and
// whose process is gone.
void reap_stale(const std::string& prefix) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/run/netns", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string rest = name.substr(prefix.size());
    const size_t dash = rest.find('-');
    if (dash == 0 || dash == std::string::npos || rest.find_first_not_of("0123456789") != dash) {
      continue;
    }
    const pid_t pid = static_cast<pid_t>(std::stol(rest.substr(0, dash)));
    if (::kill(pid, 0) != 0 && errno == ESRCH) (void)run_ip({"netns", "del", name});
  }
}

}  // namespace

Status run_ip(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {ip_binary()};
  argv.insert(argv.end(), args.begin(), args.end());
  CmdResult r = run_command(argv);
  if (r.exit_code != 0) {
    std::string cmd;
    for (const std::string& a : argv) cmd += a + " ";
    return Error{ErrorCode::kInternal, 0,
                 cmd + "exited " + std::to_string(r.exit_code) + ": " + r.err};
  }
  return {};
}

Status run_in_netns(const std::string& ns, const std::function<Status()>& fn) {
  Status result;
  std::thread t([&] {
    const std::string path = "/run/netns/" + ns;
    kernel::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
      result = sys_error(errno, "open " + path);
      return;
    }
    if (::setns(fd.get(), CLONE_NEWNET) != 0) {
      result = sys_error(errno, "setns " + path);
      return;
    }
    result = fn();
  });
  t.join();
  return result;
}

Result<kernel::UniqueFd> udp_socket_in(const std::string& ns, const std::string& addr,
                                       uint16_t port, int rcvbuf) {
  kernel::UniqueFd out;
  Status st = run_in_netns(ns, [&]() -> Status {
    kernel::UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return sys_error(errno, "socket in " + ns);
    if (rcvbuf > 0 &&
        ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) != 0) {
      return sys_error(errno, "SO_RCVBUFFORCE");
    }
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    if (::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr) != 1) {
      return invalid_argument("bad IPv4 address " + addr);
    }
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
      return sys_error(errno, "bind " + addr + ":" + std::to_string(port) + " in " + ns);
    }
    out = std::move(fd);
    return {};
  });
  if (!st.ok()) return std::move(st).error();
  return out;
}

Result<VethPair> VethPair::create(const std::string& prefix, uint8_t subnet) {
  reap_stale(prefix);
  const std::string stem = unique_stem(prefix);
  VethPair pair(stem + "a", stem + "b", subnet);
  POLICYD_TRY(pair.setup());
  return pair;
}

Status VethPair::setup() {
  POLICYD_TRY(run_ip({"netns", "add", ns_a_}));
  POLICYD_TRY(run_ip({"netns", "add", ns_b_}));
  // New interfaces inherit "default": no IPv6 link-local address, no ND/MLD frames. /proc/sys/net
  // shows the namespace of the thread that opens it.
  for (const std::string& ns : {ns_a_, ns_b_}) {
    POLICYD_TRY(run_in_netns(ns, [&ns]() -> Status {
      for (const char* conf : {"all", "default"}) {
        const std::string path = std::string("/proc/sys/net/ipv6/conf/") + conf + "/disable_ipv6";
        std::ofstream out(path);
        out << "1\n";
        out.close();
        if (!out) return sys_error(EIO, "write " + path + " in " + ns);
      }
      return {};
    }));
  }
  POLICYD_TRY(run_ip({"-n", ns_a_, "link", "add", dev_a(), "type", "veth", "peer", "name", dev_b(),
                      "netns", ns_b_}));
  POLICYD_TRY(run_ip({"-n", ns_a_, "addr", "add", addr_a() + "/24", "dev", dev_a()}));
  POLICYD_TRY(run_ip({"-n", ns_b_, "addr", "add", addr_b() + "/24", "dev", dev_b()}));
  POLICYD_TRY(run_ip({"-n", ns_a_, "link", "set", dev_a(), "up"}));
  POLICYD_TRY(run_ip({"-n", ns_b_, "link", "set", dev_b(), "up"}));

  std::string mac_b;
  POLICYD_TRY(run_in_netns(ns_b_, [&]() -> Status {
    ifindex_b_ = ::if_nametoindex(dev_b());
    if (ifindex_b_ == 0) return sys_error(errno, std::string("if_nametoindex ") + dev_b());
    return {};
  }));
  // b's MAC, from `ip -br link` (no JSON parser needed).
  CmdResult link = run_command({ip_binary(), "-n", ns_b_, "-br", "link", "show", dev_b()});
  // "pdb@if2  UP  aa:bb:cc:dd:ee:ff <...>": the third column.
  std::istringstream cols(link.out);
  std::string name, state;
  cols >> name >> state >> mac_b;
  if (link.exit_code != 0 || mac_b.size() != 17) {
    return Error{ErrorCode::kInternal, 0,
                 "cannot read the MAC of " + std::string(dev_b()) + ": " + link.out + link.err};
  }
  return run_ip({"-n", ns_a_, "neigh", "replace", addr_b(), "lladdr", mac_b, "dev", dev_a(), "nud",
                 "permanent"});
}

VethPair::VethPair(VethPair&& other) noexcept
    : ns_a_(std::move(other.ns_a_)),
      ns_b_(std::move(other.ns_b_)),
      subnet_(other.subnet_),
      ifindex_b_(other.ifindex_b_) {
  other.ns_a_.clear();
  other.ns_b_.clear();
}

VethPair::~VethPair() {
  // Deleting a namespace destroys its end of the veth, and with it the pair and any XDP program
  // attached to it.
  for (const std::string& ns : {ns_a_, ns_b_}) {
    if (!ns.empty()) (void)run_ip({"netns", "del", ns});
  }
}

std::string VethPair::addr_a() const { return "10." + std::to_string(subnet_) + ".0.1"; }
std::string VethPair::addr_b() const { return "10." + std::to_string(subnet_) + ".0.2"; }

Result<uint64_t> VethPair::rx_packets_b() const {
  uint64_t packets = 0;
  bool found = false;
  POLICYD_TRY(run_in_netns(ns_b_, [&]() -> Status {
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0) return sys_error(errno, "getifaddrs in " + ns_b_);
    for (ifaddrs* i = list; i; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_PACKET || !i->ifa_data) continue;
      if (std::strcmp(i->ifa_name, dev_b()) != 0) continue;
      packets = static_cast<const rtnl_link_stats*>(i->ifa_data)->rx_packets;
      found = true;
    }
    ::freeifaddrs(list);
    return {};
  }));
  if (!found) return Error{ErrorCode::kNotFound, 0, std::string("no stats for ") + dev_b()};
  return packets;
}

}  // namespace policyd::e2e

namespace policyd::e2e {

UdpSender::UdpSender(kernel::UniqueFd fd, const std::string& dst_addr, uint16_t dst_port, int burst,
                     std::chrono::microseconds pause, int cpu)
    : fd_(std::move(fd)), burst_(burst > 0 ? burst : 1), pause_(pause), cpu_(cpu) {
  dst_.sin_family = AF_INET;
  dst_.sin_port = htons(dst_port);
  ::inet_pton(AF_INET, dst_addr.c_str(), &dst_.sin_addr);
}

UdpSender::~UdpSender() { stop(); }

void UdpSender::start() {
  stop_ = false;
  thread_ = std::thread([this] { run(); });
}

void UdpSender::stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

bool UdpSender::wait_started(uint64_t n, std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (started() < n) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

void UdpSender::send_one(char* payload, size_t size) {
  // Published before the send begins: a reader that sees n knows datagram n has not begun.
  const uint64_t seq = started_.fetch_add(1);
  std::memcpy(payload, &seq, sizeof(seq));
  const ssize_t n =
      ::sendto(fd_.get(), payload, size, 0, reinterpret_cast<const sockaddr*>(&dst_), sizeof(dst_));
  if (n < 0) {
    errors_.fetch_add(1, std::memory_order_relaxed);
  } else {
    sent_.fetch_add(1, std::memory_order_relaxed);
  }
}

void UdpSender::send_now(uint64_t n) {
  char payload[32] = {};
  for (uint64_t i = 0; i < n; ++i) send_one(payload, sizeof(payload));
}

void UdpSender::run() {
  if (cpu_ >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu_, &set);
    (void)::sched_setaffinity(0, sizeof(set), &set);  // best effort: a placement hint
  }
  char payload[32] = {};
  while (!stop_.load(std::memory_order_relaxed)) {
    for (int i = 0; i < burst_; ++i) send_one(payload, sizeof(payload));
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    cpu_ns_.store(static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u +
                  static_cast<uint64_t>(ts.tv_nsec));
    if (pause_.count() > 0) std::this_thread::sleep_for(pause_);
  }
}

}  // namespace policyd::e2e
