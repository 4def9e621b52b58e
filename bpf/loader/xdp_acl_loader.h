// XdpAcl: loads the example XDP firewall (bpf/xdp_acl.bpf.c) against policyd's pinned outer
// maps and attaches it to interfaces. Used by the policyd-xdp-acl tool, the real-traffic e2e
// test and the XDP benchmark. Not thread-safe; one object per loaded program.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "util/result.h"
#include "xdp_acl.h"

struct xdp_acl;  // the generated skeleton (xdp_acl.skel.h)

namespace policyd::xdp {

// Which outer map gives the packet's trie.
enum class SlotMode {
  kIfindex,  // xacl_if, slot = the ingress ifindex (program xdp_acl_ifindex)
  kFixed,    // xacl, slot = LoadOptions::fixed_slot (program xdp_acl_fixed)
};

struct LoadOptions {
  std::string pin_dir;  // policyd's pin_dir: the outer maps are <pin_dir>/xacl_if and xacl
  SlotMode mode = SlotMode::kIfindex;
  uint32_t fixed_slot = 0;                        // kFixed only; < XDP_ACL_SLOTS
  uint32_t default_action = XDP_ACL_ACTION_PASS;  // no slot, no matching rule
};

using Stats = std::array<uint64_t, XDP_ACL_STAT_COUNT>;  // indexed by enum xdp_acl_stat

// XDP_FLAGS_* for a mode name: "native" (driver), "generic" (skb) or "auto" (0).
[[nodiscard]] Result<uint32_t> xdp_flags_for(const std::string& mode);
// Parses "pass"/"drop" (or 1/2) into an XDP_ACL_ACTION_*.
[[nodiscard]] Result<uint32_t> parse_action(const std::string& text);

class XdpAcl {
 public:
  // Opens the object with pin_root_path = options.pin_dir, so the pin-by-name outer maps are
  // policyd's own, sets the load-time constants and loads it. Fails (NotFound) when policyd
  // has not pinned both outer maps in pin_dir, instead of letting libbpf create them there.
  [[nodiscard]] static Result<XdpAcl> load(const LoadOptions& options);

  XdpAcl(XdpAcl&&) noexcept;
  XdpAcl& operator=(XdpAcl&&) noexcept;
  ~XdpAcl();

  // Attaches the program (the one for the mode) to `ifindex`; netlink attachment, so it
  // stays after this process exits. `flags`: XDP_FLAGS_* (see xdp_flags_for).
  [[nodiscard]] Status attach(int ifindex, uint32_t flags) const;
  // Pins the statistics map (so `policyd-xdp-acl stats` or a test can read it later).
  [[nodiscard]] Status pin_stats(const std::string& path) const;

  [[nodiscard]] int prog_fd() const;
  [[nodiscard]] int stats_fd() const;

 private:
  explicit XdpAcl(struct xdp_acl* skel, SlotMode mode) : skel_(skel), mode_(mode) {}

  struct xdp_acl* skel_ = nullptr;
  SlotMode mode_ = SlotMode::kIfindex;
};

// Detaches whatever XDP program is attached to `ifindex` in mode `flags`.
[[nodiscard]] Status detach(int ifindex, uint32_t flags);
// Sums the per-CPU values of an xacl_stats map (from stats_fd() or its pin).
[[nodiscard]] Result<Stats> read_stats(int stats_fd);
// read_stats() on the map pinned at `path` (XdpAcl::pin_stats).
[[nodiscard]] Result<Stats> read_pinned_stats(const std::string& path);
// Name of a stats index ("pass", "drop", "matched", ...).
[[nodiscard]] const char* stat_name(int index);

}  // namespace policyd::xdp
