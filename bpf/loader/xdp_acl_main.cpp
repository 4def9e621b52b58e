// policyd-xdp-acl: attaches the example XDP firewall (bpf/xdp_acl.bpf.c) to an interface,
// reusing the outer maps policyd pinned, detaches it, and prints its statistics. The
// attachment is a netlink one (like `ip link set dev D xdp ...`): it stays after the tool exits.
#include <net/if.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "xdp_acl_loader.h"

namespace {

using policyd::xdp::LoadOptions;
using policyd::xdp::SlotMode;

constexpr const char* kUsage =
    R"(usage: policyd-xdp-acl attach --dev IFNAME [--pin-dir DIR] [--slot N] [--default pass|drop]
                              [--xdp-mode native|generic|auto] [--pin-stats PATH]
       policyd-xdp-acl detach --dev IFNAME [--xdp-mode native|generic|auto]
       policyd-xdp-acl stats PATH

attach   loads xdp_acl.bpf.o (embedded in this tool) against policyd's pinned maps in --pin-dir (default
         /sys/fs/bpf/policyd-xdp, as in config/examples/xdp-acl.yaml) and attaches it to IFNAME.
         Without --slot, the rules are the xacl_if slot keyed by the ingress ifindex; with
         --slot N, the xacl slot N. --default: verdict when there is no slot or no rule
         (default pass). --pin-stats pins the program's statistics map at PATH.
detach   removes the XDP program from IFNAME.
stats    prints the counters of a statistics map pinned with --pin-stats.
Exit status: 0 success, 1 failure, 2 bad usage.
)";

struct Args {
  std::string command;
  std::string dev;
  std::string pin_dir = "/sys/fs/bpf/policyd-xdp";
  std::optional<uint32_t> slot;
  std::string default_action = "pass";
  std::string xdp_mode = "auto";
  std::string pin_stats;
  std::string stats_path;
};

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "policyd-xdp-acl: %s\n%s", message.c_str(), kUsage);
  std::exit(2);
}

std::optional<uint32_t> parse_u32(const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const unsigned long v = std::strtoul(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v > UINT32_MAX) return std::nullopt;
  return static_cast<uint32_t>(v);
}

Args parse_args(int argc, char** argv) {
  if (argc < 2) usage_error("a command is required");
  Args a;
  a.command = argv[1];
  std::vector<std::string> rest(argv + 2, argv + argc);
  for (size_t i = 0; i < rest.size(); ++i) {
    const std::string& opt = rest[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= rest.size()) usage_error(opt + " needs a value");
      return rest[++i];
    };
    if (opt == "--dev") {
      a.dev = value();
    } else if (opt == "--pin-dir") {
      a.pin_dir = value();
    } else if (opt == "--default") {
      a.default_action = value();
    } else if (opt == "--xdp-mode") {
      a.xdp_mode = value();
    } else if (opt == "--pin-stats") {
      a.pin_stats = value();
    } else if (opt == "--slot") {
      a.slot = parse_u32(value());
      if (!a.slot) usage_error("--slot needs a number");
    } else if (a.command == "stats" && a.stats_path.empty() && opt.rfind("--", 0) != 0) {
      a.stats_path = opt;
    } else {
      usage_error("unknown argument " + opt);
    }
  }
  return a;
}

int fail(const policyd::Error& e) {
  std::fprintf(stderr, "policyd-xdp-acl: %s\n", e.message().c_str());
  return 1;
}

int ifindex_of(const std::string& dev) {
  if (dev.empty()) usage_error("--dev is required");
  const unsigned idx = if_nametoindex(dev.c_str());
  if (idx == 0) {
    std::fprintf(stderr, "policyd-xdp-acl: no interface %s\n", dev.c_str());
    std::exit(1);
  }
  return static_cast<int>(idx);
}

int cmd_attach(const Args& a) {
  const int ifindex = ifindex_of(a.dev);
  auto flags = policyd::xdp::xdp_flags_for(a.xdp_mode);
  if (!flags.ok()) usage_error(flags.error().message());
  auto action = policyd::xdp::parse_action(a.default_action);
  if (!action.ok()) usage_error(action.error().message());
  LoadOptions options;
  options.pin_dir = a.pin_dir;
  options.mode = a.slot ? SlotMode::kFixed : SlotMode::kIfindex;
  options.fixed_slot = a.slot.value_or(0);
  options.default_action = *action;
  auto acl = policyd::xdp::XdpAcl::load(options);
  if (!acl.ok()) return fail(acl.error());
  if (auto st = acl->attach(ifindex, *flags); !st.ok()) return fail(st.error());
  if (!a.pin_stats.empty()) {
    if (auto st = acl->pin_stats(a.pin_stats); !st.ok()) return fail(st.error());
  }
  const std::string slot =
      a.slot ? "xacl[" + std::to_string(*a.slot) + "]" : "xacl_if[" + std::to_string(ifindex) + "]";
  std::printf("attached xdp_acl to %s (ifindex %d): slot %s, default %s\n", a.dev.c_str(), ifindex,
              slot.c_str(), a.default_action.c_str());
  return 0;
}

int cmd_detach(const Args& a) {
  const int ifindex = ifindex_of(a.dev);
  auto flags = policyd::xdp::xdp_flags_for(a.xdp_mode);
  if (!flags.ok()) usage_error(flags.error().message());
  if (auto st = policyd::xdp::detach(ifindex, *flags); !st.ok()) return fail(st.error());
  return 0;
}

int cmd_stats(const Args& a) {
  if (a.stats_path.empty()) usage_error("stats needs the pinned map's PATH");
  auto stats = policyd::xdp::read_pinned_stats(a.stats_path);
  if (!stats.ok()) return fail(stats.error());
  for (int i = 0; i < XDP_ACL_STAT_COUNT; ++i) {
    std::printf("%-9s %llu\n", policyd::xdp::stat_name(i),
                static_cast<unsigned long long>((*stats)[i]));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse_args(argc, argv);
  if (a.command == "attach") return cmd_attach(a);
  if (a.command == "detach") return cmd_detach(a);
  if (a.command == "stats") return cmd_stats(a);
  if (a.command == "-h" || a.command == "--help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  usage_error("unknown command " + a.command);
}
