// Pin paths, computed in exactly one place. Everything policyd pins lives under pin_dir.
#pragma once

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
    return drain_dir() + "/" + map + "_" + slot_hex + "_" + std::to_string(installed_by) + "_" +
           std::to_string(id);
  }

 private:
  std::string dir_;
};

}  // namespace policyd::core
