// Proto -> generation conversion and validation on raw bytes, as a client could send them.
// push_fuzz: the input is one PushGenerationRequest (a unary PushGeneration). push_stream_fuzz
// (POLICYD_FUZZ_STREAM): the input is a stream of them, each prefixed by its length (two bytes,
// little endian), fed to a PushAssembler as PushGenerationStream does. Whatever converts is then
// validated as the engine would before building (core::validate_generation).
#include <spdlog/spdlog.h>

#include <cstddef>
#include <cstdint>

#include "api/convert.h"
#include "core/validate.h"
#include "fuzz_maps.h"
#include "policyd/v1/policyd.pb.h"

namespace {

const policyd::core::MapConfigs& maps() {
  static const policyd::core::MapConfigs m = [] {
    policyd::core::MapConfigs out;
    for (const auto& c : policyd::fuzz::fuzz_config().engine.maps) out.emplace(c.name, c);
    return out;
  }();
  return m;
}

void validate(const policyd::core::PushRequest& request) {
  (void)policyd::core::validate_generation(request.generation, maps());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  spdlog::set_level(spdlog::level::off);
  (void)maps();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const policyd::config::DaemonConfig& cfg = policyd::fuzz::fuzz_config();
#ifndef POLICYD_FUZZ_STREAM
  policyd::v1::PushGenerationRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto converted = policyd::api::to_push_request(req, cfg);
  if (converted.ok()) validate(*converted);
#else
  policyd::api::PushAssembler assembler(cfg);
  size_t at = 0;
  while (at + 2 <= size) {
    const size_t len = data[at] | (static_cast<size_t>(data[at + 1]) << 8);
    at += 2;
    if (len > size - at) return 0;
    policyd::v1::PushGenerationRequest message;
    if (!message.ParseFromArray(data + at, static_cast<int>(len))) return 0;
    at += len;
    if (!assembler.add(message).ok()) return 0;
  }
  if (assembler.messages() > 0) validate(assembler.take());
#endif
  return 0;
}
