// policyd: the daemon's entry point. Parses the command line, loads the config, runs.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "app/daemon.h"
#include "config/config.h"

namespace {

constexpr const char* kUsage =
    "usage: policyd --config FILE       run the daemon in the foreground\n"
    "       policyd --check-config FILE validate a configuration and exit\n"
    "       policyd --version | --help\n";

int check_config(const std::string& path) {
  policyd::Result<policyd::config::DaemonConfig> cfg = policyd::config::load_config_file(path);
  if (!cfg.ok()) {
    std::fprintf(stderr, "policyd: %s\n", cfg.error().message().c_str());
    return 1;
  }
  std::printf("%s: ok (%zu map(s))\n", path.c_str(), cfg->engine.maps.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (arg == "--version") {
      std::printf("policyd %s\n", POLICYD_VERSION);
      return 0;
    }
    if ((arg == "--config" || arg == "--check-config") && i + 1 < argc) {
      if (arg == "--check-config") return check_config(argv[i + 1]);
      config_path = argv[++i];
      continue;
    }
    std::fprintf(stderr, "policyd: unknown argument \"%s\"\n%s", arg.c_str(), kUsage);
    return 2;
  }
  if (config_path.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  policyd::Result<policyd::config::DaemonConfig> cfg =
      policyd::config::load_config_file(config_path);
  if (!cfg.ok()) {
    std::fprintf(stderr, "policyd: %s\n", cfg.error().message().c_str());
    return 2;
  }
  policyd::Result<std::unique_ptr<policyd::app::Daemon>> daemon =
      policyd::app::Daemon::start(std::move(cfg).value());
  if (!daemon.ok()) {
    spdlog::critical("{}", daemon.error().message());
    return 1;
  }
  return (*daemon)->run();
}
