// Loading and attaching the example XDP firewall; see xdp_acl_loader.h.
#include "xdp_acl_loader.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>
#include <sys/stat.h>

#include <cerrno>
#include <utility>
#include <vector>

#include "kernel/unique_fd.h"
#include "xdp_acl.skel.h"

namespace policyd::xdp {
namespace {

// Error from a libbpf int API (-errno) or a pointer API (errno already set).
Error libbpf_error(int rc, const std::string& what) {
  return sys_error(rc < 0 ? -rc : errno, what);
}

// Both outer maps must already be pinned by policyd: with pin-by-name, libbpf would otherwise
// create empty ones in policyd's pin_dir and the program would never see a policy.
Status require_pins(const std::string& pin_dir) {
  for (const char* name : {XDP_ACL_MAP_BY_IFINDEX, XDP_ACL_MAP_BY_INDEX}) {
    const std::string path = pin_dir + "/" + name;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      return Error{ErrorCode::kNotFound, errno,
                   path +
                       " is not pinned: start policyd with the maps of "
                       "config/examples/xdp-acl.yaml and pin_dir " +
                       pin_dir};
    }
  }
  return {};
}

Status set_constants(struct xdp_acl* skel, const LoadOptions& options) {
  if (options.default_action != XDP_ACL_ACTION_PASS &&
      options.default_action != XDP_ACL_ACTION_DROP) {
    return invalid_argument("default action must be 1 (pass) or 2 (drop)");
  }
  if (options.mode == SlotMode::kFixed && options.fixed_slot >= XDP_ACL_SLOTS) {
    return invalid_argument("slot " + std::to_string(options.fixed_slot) + " is out of range (" +
                            std::to_string(XDP_ACL_SLOTS) + " slots)");
  }
  skel->rodata->xacl_default_action = options.default_action;
  skel->rodata->xacl_fixed_slot = options.fixed_slot;
  // Only the mode's program is loaded; both outer maps are still reused from the pins.
  const bool by_ifindex = options.mode == SlotMode::kIfindex;
  bpf_program__set_autoload(skel->progs.xdp_acl_ifindex, by_ifindex);
  bpf_program__set_autoload(skel->progs.xdp_acl_fixed, !by_ifindex);
  return {};
}

}  // namespace

Result<uint32_t> xdp_flags_for(const std::string& mode) {
  if (mode == "native") return uint32_t{XDP_FLAGS_DRV_MODE};
  if (mode == "generic") return uint32_t{XDP_FLAGS_SKB_MODE};
  if (mode == "auto") return uint32_t{0};
  return invalid_argument("XDP mode \"" + mode + "\": want native, generic or auto");
}

Result<uint32_t> parse_action(const std::string& text) {
  if (text == "pass" || text == "1") return uint32_t{XDP_ACL_ACTION_PASS};
  if (text == "drop" || text == "2") return uint32_t{XDP_ACL_ACTION_DROP};
  return invalid_argument("action \"" + text + "\": want pass or drop");
}

Result<XdpAcl> XdpAcl::load(const LoadOptions& options) {
  POLICYD_TRY(require_pins(options.pin_dir));
  LIBBPF_OPTS(bpf_object_open_opts, open_opts, .pin_root_path = options.pin_dir.c_str());
  struct xdp_acl* skel = xdp_acl__open_opts(&open_opts);
  if (!skel) return libbpf_error(-errno, "open xdp_acl.bpf.o");
  XdpAcl acl(skel, options.mode);  // destroys the skeleton on every return below
  POLICYD_TRY(set_constants(skel, options));
  const int rc = xdp_acl__load(skel);
  if (rc != 0) {
    return libbpf_error(rc, "load xdp_acl against the pinned maps in " + options.pin_dir +
                                " (do their sizes match bpf/xdp_acl.h?)");
  }
  return acl;
}

XdpAcl::XdpAcl(XdpAcl&& other) noexcept
    : skel_(std::exchange(other.skel_, nullptr)), mode_(other.mode_) {}

XdpAcl& XdpAcl::operator=(XdpAcl&& other) noexcept {
  if (this != &other) {
    if (skel_) xdp_acl__destroy(skel_);
    skel_ = std::exchange(other.skel_, nullptr);
    mode_ = other.mode_;
  }
  return *this;
}

XdpAcl::~XdpAcl() {
  if (skel_) xdp_acl__destroy(skel_);
}

int XdpAcl::prog_fd() const {
  return bpf_program__fd(mode_ == SlotMode::kIfindex ? skel_->progs.xdp_acl_ifindex
                                                     : skel_->progs.xdp_acl_fixed);
}

int XdpAcl::stats_fd() const { return bpf_map__fd(skel_->maps.xacl_stats); }

Status XdpAcl::attach(int ifindex, uint32_t flags) const {
  const int rc = bpf_xdp_attach(ifindex, prog_fd(), flags, nullptr);
  if (rc != 0) return libbpf_error(rc, "attach XDP to ifindex " + std::to_string(ifindex));
  return {};
}

Status XdpAcl::pin_stats(const std::string& path) const {
  const int rc = bpf_obj_pin(stats_fd(), path.c_str());
  if (rc != 0) return libbpf_error(rc, "pin " XDP_ACL_STATS_MAP " at " + path);
  return {};
}

Status detach(int ifindex, uint32_t flags) {
  const int rc = bpf_xdp_detach(ifindex, flags, nullptr);
  if (rc != 0) return libbpf_error(rc, "detach XDP from ifindex " + std::to_string(ifindex));
  return {};
}

Result<Stats> read_stats(int stats_fd) {
  const int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return libbpf_error(cpus, "count possible CPUs");
  Stats total{};
  std::vector<uint64_t> per_cpu(static_cast<size_t>(cpus));
  for (uint32_t i = 0; i < XDP_ACL_STAT_COUNT; ++i) {
    if (bpf_map_lookup_elem(stats_fd, &i, per_cpu.data()) != 0) {
      return sys_error(errno, "read " XDP_ACL_STATS_MAP "[" + std::to_string(i) + "]");
    }
    for (uint64_t v : per_cpu) total[i] += v;
  }
  return total;
}

Result<Stats> read_pinned_stats(const std::string& path) {
  kernel::UniqueFd fd(bpf_obj_get(path.c_str()));
  if (!fd.valid()) return sys_error(errno, "open " + path);
  return read_stats(fd.get());
}

const char* stat_name(int index) {
  static const char* const kNames[XDP_ACL_STAT_COUNT] = {"pass",    "drop",     "matched",
                                                         "no_slot", "no_match", "not_ipv4"};
  return index >= 0 && index < XDP_ACL_STAT_COUNT ? kNames[index] : "?";
}

}  // namespace policyd::xdp
