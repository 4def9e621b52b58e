// Real-traffic fixtures: two network namespaces joined by a veth pair (sender side "a",
// receiving side "b" where XDP programs are attached), with unique names per run and removed
// by the destructor even when a test fails; and helpers that run code or open sockets inside a
// namespace (setns on a short-lived thread, so the caller's own namespace never changes).
// Used by tests/e2e/xdp_acl_test.cpp and tests/bench/xdp_bench.cpp. Needs root and iproute2.
#pragma once

#include <netinet/in.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "kernel/unique_fd.h"
#include "util/result.h"

namespace policyd::e2e {

class VethPair {
 public:
  // Creates namespaces "<prefix><pid>-<n>a" / "...b", veth "pda" in a and "pdb" in b, addresses
  // 10.<subnet>.0.1/24 (a) and .2 (b), IPv6 off (no stray ND or MLD frames), links up, and a
  // permanent ARP entry for b on a (no ARP traffic through b's XDP hook).
  // First removes namespaces with this prefix left by runs that were killed.
  [[nodiscard]] static Result<VethPair> create(const std::string& prefix, uint8_t subnet);
  ~VethPair();
  VethPair(VethPair&& other) noexcept;
  VethPair& operator=(VethPair&&) = delete;
  VethPair(const VethPair&) = delete;
  VethPair& operator=(const VethPair&) = delete;

  [[nodiscard]] const std::string& ns_a() const { return ns_a_; }
  [[nodiscard]] const std::string& ns_b() const { return ns_b_; }
  [[nodiscard]] static const char* dev_a() { return "pda"; }
  [[nodiscard]] static const char* dev_b() { return "pdb"; }
  [[nodiscard]] std::string addr_a() const;  // "10.<subnet>.0.1"
  [[nodiscard]] std::string addr_b() const;  // "10.<subnet>.0.2"
  [[nodiscard]] uint32_t ifindex_b() const { return ifindex_b_; }

  // b's RX packet counter: with XDP attached, every frame that reached the XDP hook (passed or
  // dropped), read through netlink in b's namespace.
  [[nodiscard]] Result<uint64_t> rx_packets_b() const;

 private:
  VethPair(std::string a, std::string b, uint8_t subnet)
      : ns_a_(std::move(a)), ns_b_(std::move(b)), subnet_(subnet) {}
  [[nodiscard]] Status setup();

  std::string ns_a_;
  std::string ns_b_;
  uint8_t subnet_ = 0;
  uint32_t ifindex_b_ = 0;
};

// Runs `fn` on a thread that has entered network namespace `ns` (/run/netns/<ns>).
[[nodiscard]] Status run_in_netns(const std::string& ns, const std::function<Status()>& fn);

// A UDP socket created in namespace `ns`, bound to addr:port (it stays in that namespace).
// `rcvbuf` > 0 forces SO_RCVBUF (root).
[[nodiscard]] Result<kernel::UniqueFd> udp_socket_in(const std::string& ns, const std::string& addr,
                                                     uint16_t port, int rcvbuf = 0);

// The path of iproute2's `ip`.
[[nodiscard]] std::string ip_binary();
// `ip ARGS...`; the error has ip's stderr.
[[nodiscard]] Status run_ip(const std::vector<std::string>& args);

}  // namespace policyd::e2e

namespace policyd::e2e {

// Sends UDP datagrams from a socket (see udp_socket_in) to one destination on its own thread,
// each carrying its sequence number (u64, host order) in the first 8 payload bytes.
// `burst` datagrams back to back, then a pause of `pause` (zero: as fast as possible).
class UdpSender {
 public:
  UdpSender(kernel::UniqueFd fd, const std::string& dst_addr, uint16_t dst_port, int burst,
            std::chrono::microseconds pause, int cpu = -1);
  ~UdpSender();  // stops
  UdpSender(const UdpSender&) = delete;
  UdpSender& operator=(const UdpSender&) = delete;

  void start();
  void stop();
  // Sends `n` datagrams on the calling thread (only while the sender thread is stopped).
  void send_now(uint64_t n);
  // Datagrams whose sendto() has begun: every datagram numbered started() or later is sent
  // entirely after this call returned.
  [[nodiscard]] uint64_t started() const { return started_.load(); }
  [[nodiscard]] uint64_t sent() const { return sent_.load(); }      // sendto() succeeded
  [[nodiscard]] uint64_t errors() const { return errors_.load(); }  // sendto() failed
  // CPU time the sending thread has used (user + system), updated after every burst.
  [[nodiscard]] uint64_t cpu_ns() const { return cpu_ns_.load(); }
  // Blocks until started() >= n or `timeout` passes; false on timeout.
  bool wait_started(uint64_t n, std::chrono::milliseconds timeout) const;

 private:
  void run();
  void send_one(char* payload, size_t size);

  kernel::UniqueFd fd_;
  sockaddr_in dst_{};
  int burst_;
  std::chrono::microseconds pause_;
  int cpu_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> started_{0};
  std::atomic<uint64_t> sent_{0};
  std::atomic<uint64_t> errors_{0};
  std::atomic<uint64_t> cpu_ns_{0};
  std::thread thread_;
};

}  // namespace policyd::e2e
