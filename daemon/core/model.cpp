// Names and formatting for the core vocabulary.
#include "core/model.h"

#include <cstring>

#include "kernel/map_types.h"
#include "util/hex.h"

namespace policyd::core {

bpf_map_type outer_map_type(OuterKind kind) {
  return kernel::outer_map_type(kind == OuterKind::kArray);
}
const char* to_string(OuterKind kind) {
  return kernel::find_map_type(outer_map_type(kind))->name.data();  // literals: NUL-terminated
}
const char* to_string(DrainMode mode) { return mode == DrainMode::kEntries ? "entries" : "none"; }
const char* to_string(BarrierMode mode) {
  switch (mode) {
    case BarrierMode::kAuto:
      return "auto";
    case BarrierMode::kBatch:
      return "batch";
    case BarrierMode::kConcurrent:
      return "concurrent";
  }
  return "unknown";
}
const char* to_string(Strategy strategy) {
  return strategy == Strategy::kBatch ? "batch" : "concurrent";
}

Bytes array_slot(uint32_t index) {
  Bytes b(sizeof(index));
  std::memcpy(b.data(), &index, sizeof(index));
  return b;
}

std::string slot_to_string(OuterKind kind, const Bytes& slot) {
  if (kind == OuterKind::kArray && slot.size() == sizeof(uint32_t)) {
    uint32_t index = 0;
    std::memcpy(&index, slot.data(), sizeof(index));
    return std::to_string(index);
  }
  return "0x" + util::to_hex(slot);
}

std::string describe(const OuterMapConfig& map, const Bytes& slot) {
  return "map \"" + map.name + "\" slot " + slot_to_string(map.kind, slot);
}

}  // namespace policyd::core
