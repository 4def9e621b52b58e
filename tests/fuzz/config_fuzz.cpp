// The daemon config parser on arbitrary text: it must return a result (a config or an error
// naming what is wrong), never crash, hang or read out of bounds.
#include <spdlog/spdlog.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "config/config.h"

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  spdlog::set_level(spdlog::level::off);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)policyd::config::parse_config(text, "fuzz.yaml");
  return 0;
}
