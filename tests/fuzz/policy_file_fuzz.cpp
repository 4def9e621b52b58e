// policyctl's policy-file parser on arbitrary text, against the GetState of fuzz_maps.h's
// config (typed fields, raw hex, slot keys); what it accepts is then split into stream messages
// as `policyctl push` would.
#include <spdlog/spdlog.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "api/convert.h"
#include "ctl/policy_file.h"
#include "fuzz_maps.h"

namespace {

const policyd::v1::GetStateResponse& state() {
  static const policyd::v1::GetStateResponse s = [] {
    policyd::v1::GetStateResponse out;
    const policyd::config::DaemonConfig& cfg = policyd::fuzz::fuzz_config();
    for (const auto& m : cfg.engine.maps) {
      policyd::api::to_map_state(m, &cfg.schemas.at(m.name), "/sys/fs/bpf/fuzz/" + m.name, {},
                                 out.add_maps());
    }
    return out;
  }();
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  spdlog::set_level(spdlog::level::off);
  (void)state();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto req = policyd::ctl::parse_policy_file(text, "fuzz.yaml", state());
  if (req.ok()) (void)policyd::ctl::split_push_request(*req, 4096);
  return 0;
}
