// xdp_acl_layout_check CONFIG [STAMP]: the build-time check of the example XDP firewall. Reads a
// policyd config with policyd's own config loader (so the layouts are the ones the daemon will
// create and GetState will report) and compares the maps xdp_acl.bpf.c uses with the structs
// and sizes of bpf/xdp_acl.h. Exit 0 and touch STAMP when they match; exit 1 listing every
// difference otherwise (the build then fails).
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "config/config.h"
#include "kernel/map_types.h"
#include "xdp_acl_layout.h"

namespace {

using policyd::config::DaemonConfig;
using policyd::xdp::FieldView;
using policyd::xdp::MapView;

std::vector<FieldView> field_views(const policyd::schema::Layout& layout) {
  std::vector<FieldView> out;
  for (const policyd::schema::Field& f : layout.fields) {
    out.push_back(
        {f.name, f.offset, f.size, f.counter, f.type == policyd::schema::FieldType::kPad});
  }
  return out;
}

// The map as the daemon would describe it, or nullopt-like empty name when not configured.
bool find_map(const DaemonConfig& config, const std::string& name, MapView& out) {
  for (const policyd::core::OuterMapConfig& m : config.engine.maps) {
    if (m.name != name) continue;
    out.name = m.name;
    out.type = policyd::core::to_string(m.kind);
    out.slots = m.slots;
    out.slot_key_size = m.slot_key_size;
    out.inner_type = policyd::kernel::map_type_label(m.inner.type);
    out.inner_max_entries = m.inner.max_entries;
    out.key_size = m.inner.key_size;
    out.value_size = m.inner.value_size;
    auto schema = config.schemas.find(name);
    if (schema != config.schemas.end()) {
      out.key = field_views(schema->second.key);
      out.value = field_views(schema->second.value);
    }
    return true;
  }
  return false;
}

int check(const std::string& path) {
  auto config = policyd::config::load_config_file(path);
  if (!config.ok()) {
    std::fprintf(stderr, "xdp_acl_layout_check: %s\n", config.error().message().c_str());
    return 1;
  }
  std::vector<std::string> problems;
  for (const std::string& name : policyd::xdp::expected_map_names()) {
    MapView map;
    if (!find_map(*config, name, map)) {
      problems.push_back("map " + name + ": not in the config (xdp_acl.bpf.c uses it)");
      continue;
    }
    for (std::string& p : policyd::xdp::check_map(map)) problems.push_back(std::move(p));
  }
  for (const std::string& p : problems) {
    std::fprintf(stderr, "%s: %s\n", path.c_str(), p.c_str());
  }
  if (!problems.empty()) {
    std::fprintf(stderr, "xdp_acl_layout_check: %zu difference(s) between %s and bpf/xdp_acl.h\n",
                 problems.size(), path.c_str());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: xdp_acl_layout_check CONFIG [STAMP]\n");
    return 2;
  }
  const int rc = check(argv[1]);
  if (rc == 0 && argc == 3) {
    std::ofstream stamp(argv[2], std::ios::trunc);
    stamp << "layouts of " << argv[1] << " match bpf/xdp_acl.h\n";
  }
  return rc;
}
