// Pin paths, computed in exactly one place. Everything policyd pins lives under pin_dir.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

#include "policyd/abi.h"  // the names programs see, shared with bpf/include

namespace policyd::core {

class PinPaths {
 public:
  explicit PinPaths(std::string pin_dir) : dir_(std::move(pin_dir)) {}

  [[nodiscard]] const std::string& dir() const { return dir_; }
  // A plain outer map, or the kernel name of a group member's bank copy.
  [[nodiscard]] static std::string member_name(const std::string& map, int bank) {
    return map + (bank == 0 ? POLICYD_BANK_A_SUFFIX : POLICYD_BANK_B_SUFFIX);
  }
  [[nodiscard]] static std::string bank_name(const std::string& group) {
    return group + POLICYD_BANK_MAP_SUFFIX;
  }

  [[nodiscard]] std::string outer(const std::string& map) const { return dir_ + "/" + map; }
  [[nodiscard]] std::string member(const std::string& map, int bank) const {
    return outer(member_name(map, bank));
  }
  [[nodiscard]] std::string bank(const std::string& group) const { return outer(bank_name(group)); }
  // Replaced inner maps wait here, pinned, until their drain is durable (G8). bpffs refuses
  // '.' in names, so this is "_drain" rather than a hidden ".drain"; map names cannot start
  // with '_'.
  [[nodiscard]] std::string drain_dir() const { return dir_ + "/_drain"; }
  // "<map>_<slot hex>_<installed_by>_<id>": enough to attribute the counters after a restart.
  [[nodiscard]] std::string drain_pin(const std::string& map, const std::string& slot_hex,
                                      uint64_t installed_by, uint32_t id) const {
    return drain_dir() + "/" + drain_pin_name({map, slot_hex, installed_by, id});
  }

  // The parts of a drain pin's name.
  struct DrainPin {
    std::string map;
    std::string slot_hex;
    uint64_t installed_by = 0;
    uint32_t id = 0;
  };
  [[nodiscard]] static std::string drain_pin_name(const DrainPin& pin) {
    return pin.map + "_" + pin.slot_hex + "_" + std::to_string(pin.installed_by) + "_" +
           std::to_string(pin.id);
  }
  // The inverse of drain_pin_name, split at the last three '_' (a map name may contain '_');
  // nullopt for a name that is not one.
  [[nodiscard]] static std::optional<DrainPin> parse_drain_pin_name(const std::string& name) {
    size_t cut[3];
    size_t end = name.size();
    for (size_t& c : cut) {
      c = end == 0 ? std::string::npos : name.rfind('_', end - 1);
      if (c == std::string::npos || c == 0) return std::nullopt;
      end = c;
    }
    // cut[0] precedes the id, cut[1] installed_by, cut[2] the slot.
    DrainPin pin;
    pin.map = name.substr(0, cut[2]);
    pin.slot_hex = name.substr(cut[2] + 1, cut[1] - cut[2] - 1);
    pin.installed_by =
        std::strtoull(name.substr(cut[1] + 1, cut[0] - cut[1] - 1).c_str(), nullptr, 10);
    pin.id = static_cast<uint32_t>(std::strtoul(name.substr(cut[0] + 1).c_str(), nullptr, 10));
    return pin;
  }

 private:
  std::string dir_;
};

}  // namespace policyd::core
