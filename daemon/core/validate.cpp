// Generation and map-config validation. Pure functions: no kernel calls.
#include "core/validate.h"

#include <bit>
#include <cstring>
#include <optional>
#include <string_view>
#include <vector>

#include "core/pin_paths.h"
#include "kernel/map.h"
#include "util/hex.h"

namespace policyd::core {
namespace {

std::string where(const OuterMapConfig& map, const Bytes& slot) {
  return "map \"" + map.name + "\" slot " + slot_to_string(map.kind, slot);
}

// LPM keys are a u32 prefix length then the address; bits past the prefix do not matter to
// the kernel, so two keys that differ only there are the same entry.
void normalize_lpm_key(uint8_t* k, size_t size) {
  uint32_t prefixlen = 0;
  std::memcpy(&prefixlen, k, sizeof(prefixlen));
  for (size_t bit = prefixlen; bit < (size - 4) * 8; ++bit) {
    k[4 + bit / 8] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
  }
}

// 64-bit hash of a key's bytes (keys are small and fixed-size; no need for more).
uint64_t hash_key(std::string_view key) {
  uint64_t h = 0x243f6a8885a308d3ull ^ key.size();
  size_t i = 0;
  for (; i + 8 <= key.size(); i += 8) {
    uint64_t chunk = 0;
    std::memcpy(&chunk, key.data() + i, 8);
    h = (h ^ chunk) * 0x9e3779b97f4a7c15ull;
    h ^= h >> 29;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, key.data() + i, key.size() - i);
  h = (h ^ tail) * 0x9e3779b97f4a7c15ull;
  return h ^ (h >> 32);
}

// Duplicate-key detection for up to millions of entries: open addressing over entry indexes
// tagged with a hash fingerprint, keys viewed in place (no node or key copy per entry; a key is
// only compared when its fingerprint matches).
class KeyIndex {
 public:
  explicit KeyIndex(size_t entries) : table_(std::bit_ceil(entries * 2 + 2), 0) {
    keys_.reserve(entries);
  }

  // Remembers `key` (which must outlive the index) as the next entry; returns the index of an
  // earlier entry with the same key instead, if there is one.
  std::optional<uint32_t> insert(std::string_view key) {
    const uint64_t h = hash_key(key);
    const uint64_t tag = h & 0xffffffff00000000ull;
    const size_t mask = table_.size() - 1;
    for (size_t pos = h & mask;; pos = (pos + 1) & mask) {
      const uint64_t slot = table_[pos];
      if (slot == 0) {
        keys_.push_back(key);
        table_[pos] = tag | keys_.size();  // index + 1: 0 means empty
        return std::nullopt;
      }
      const auto index = static_cast<uint32_t>((slot & 0xffffffffull) - 1);
      if ((slot & 0xffffffff00000000ull) == tag && keys_[index] == key) return index;
    }
  }

 private:
  std::vector<uint64_t> table_;
  std::vector<std::string_view> keys_;
};

std::string_view view(const Bytes& b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

// What is wrong with one entry, or "" (the caller adds where: building that text per entry
// would cost more than the checks themselves for large generations).
std::string check_entry(const OuterMapConfig& map, const Entry& e) {
  const InnerTemplate& inner = map.inner;
  if (e.key.size() != inner.key_size) {
    return "key is " + std::to_string(e.key.size()) + " bytes, the map's key is " +
           std::to_string(inner.key_size);
  }
  if (e.value.size() != inner.value_size) {
    return "value is " + std::to_string(e.value.size()) + " bytes, the map's value is " +
           std::to_string(inner.value_size);
  }
  if (kernel::is_array(inner.type)) {
    uint32_t index = 0;
    std::memcpy(&index, e.key.data(), sizeof(index));
    if (index >= inner.max_entries) {
      return "array index " + std::to_string(index) + " is out of range (max_entries " +
             std::to_string(inner.max_entries) + ")";
    }
  }
  if (inner.type == BPF_MAP_TYPE_LPM_TRIE) {
    uint32_t prefixlen = 0;
    std::memcpy(&prefixlen, e.key.data(), sizeof(prefixlen));
    uint32_t max_bits = (inner.key_size - 4) * 8;
    if (prefixlen > max_bits) {
      return "prefix length " + std::to_string(prefixlen) + " exceeds " + std::to_string(max_bits) +
             " bits";
    }
  }
  return "";
}

Status check_change(const OuterMapConfig& map, const SlotChange& change, const std::string& at) {
  if (map.kind == OuterKind::kArray) {
    if (change.slot.size() != sizeof(uint32_t)) {
      return invalid_argument(at + ": array slot key must be 4 bytes, got " +
                              std::to_string(change.slot.size()));
    }
    uint32_t index = 0;
    std::memcpy(&index, change.slot.data(), sizeof(index));
    if (index >= map.slots) {
      return invalid_argument(at + ": slot " + std::to_string(index) + " is out of range (map \"" +
                              map.name + "\" has " + std::to_string(map.slots) + " slots)");
    }
  } else if (change.slot.size() != map.slot_key_size) {
    return invalid_argument(at + ": slot key is " + std::to_string(change.slot.size()) +
                            " bytes, map \"" + map.name + "\" uses " +
                            std::to_string(map.slot_key_size));
  }
  const std::string slot_at = at + " (" + where(map, change.slot) + ")";
  if (change.remove) {
    if (!change.entries.empty()) {
      return invalid_argument(slot_at + ": a delete carries no entries");
    }
    return {};
  }
  if (change.entries.size() > map.inner.max_entries) {
    return invalid_argument(slot_at + ": " + std::to_string(change.entries.size()) +
                            " entries, the inner map holds at most " +
                            std::to_string(map.inner.max_entries));
  }
  const bool lpm = map.inner.type == BPF_MAP_TYPE_LPM_TRIE;
  std::vector<Bytes> lpm_keys;  // normalized copies; the index views them
  if (lpm) lpm_keys.reserve(change.entries.size());
  KeyIndex seen(change.entries.size());
  for (size_t i = 0; i < change.entries.size(); ++i) {
    const Entry& e = change.entries[i];
    auto entry_at = [&] { return slot_at + " entry " + std::to_string(i); };
    if (std::string problem = check_entry(map, e); !problem.empty()) {
      return invalid_argument(entry_at() + ": " + problem);
    }
    std::string_view key = view(e.key);
    if (lpm) {
      lpm_keys.push_back(e.key);
      normalize_lpm_key(lpm_keys.back().data(), lpm_keys.back().size());
      key = view(lpm_keys.back());
    }
    if (auto first = seen.insert(key)) {
      return invalid_argument(entry_at() + ": duplicate key " + util::to_hex(e.key) +
                              " (same as entry " + std::to_string(*first) + ")");
    }
  }
  return {};
}

}  // namespace

Status validate_generation(const Generation& gen, const MapConfigs& maps) {
  if (gen.changes.empty()) return invalid_argument("generation has no changes");
  std::map<std::pair<std::string, Bytes>, size_t> slots_seen;
  for (size_t i = 0; i < gen.changes.size(); ++i) {
    const SlotChange& change = gen.changes[i];
    const std::string at = "changes[" + std::to_string(i) + "]";
    auto it = maps.find(change.map);
    if (it == maps.end()) return invalid_argument(at + ": unknown map \"" + change.map + "\"");
    POLICYD_TRY(check_change(it->second, change, at));
    auto [prev, inserted] = slots_seen.emplace(std::make_pair(change.map, change.slot), i);
    if (!inserted) {
      return invalid_argument(at + ": " + where(it->second, change.slot) +
                              " is already changed by changes[" + std::to_string(prev->second) +
                              "]");
    }
  }
  return {};
}

Status check_map_name(const std::string& name) { return kernel::check_map_name(name); }

namespace {

// The names `map` pins under pin_dir, each with what it is ("map \"foo\" (bank a)").
std::vector<std::pair<std::string, std::string>> pinned_names(const OuterMapConfig& map) {
  const std::string who = "map \"" + map.name + "\"";
  if (map.group.empty()) return {{map.name, who}};
  return {{PinPaths::member_name(map.name, 0), who + " (group \"" + map.group + "\", bank a)"},
          {PinPaths::member_name(map.name, 1), who + " (group \"" + map.group + "\", bank b)"},
          {PinPaths::bank_name(map.group), "group \"" + map.group + "\"'s bank map"}};
}

}  // namespace

Status validate_pin_names(const std::vector<const OuterMapConfig*>& maps) {
  std::map<std::string, std::string> owners;  // pin name -> who pins it
  for (const OuterMapConfig* m : maps) {
    for (auto& [name, who] : pinned_names(*m)) {
      auto [it, fresh] = owners.emplace(name, who);
      // Members of one group share its bank map; that is one pin, not a collision.
      if (fresh || it->second == who) continue;
      return invalid_argument("pin name \"" + name + "\" is used by both " + it->second + " and " +
                              who);
    }
  }
  return {};
}

Status validate_map_config(const OuterMapConfig& map) {
  const std::string at = "map \"" + map.name + "\"";
  // Group members are pinned as <name>_a / <name>_b, which must also fit 15 characters.
  const std::string longest = map.group.empty() ? map.name : map.name + "_a";
  if (Status st = kernel::check_map_name(longest); !st.ok()) return st.error().wrap(at);
  // bpffs refuses '.' in file names (EPERM), and names starting with '_' are policyd's own
  // pins (the drain directory).
  if (map.name.find('.') != std::string::npos) {
    return invalid_argument(at + ": '.' is not allowed (bpffs refuses it in pin names)");
  }
  if (map.name.front() == '_' || (!map.group.empty() && map.group.front() == '_')) {
    return invalid_argument(at + ": names starting with '_' are reserved for policyd");
  }
  if (!map.group.empty()) {
    Status st = kernel::check_map_name(map.group + "_bank");
    if (!st.ok()) return st.error().wrap(at + " group \"" + map.group + "\"");
  }
  if (map.slots == 0) return invalid_argument(at + ": slots must be at least 1");
  if (map.kind == OuterKind::kArray && map.slot_key_size != sizeof(uint32_t)) {
    return invalid_argument(at + ": array_of_maps slot keys are 4 bytes");
  }
  if (map.slot_key_size == 0) return invalid_argument(at + ": slot key size must be positive");
  // Replaced inner maps are pinned as <map>_<slot hex>_<generation>_<id>, within NAME_MAX.
  if (map.slot_key_size > kMaxSlotKeySize) {
    return invalid_argument(at + ": slot keys are at most " + std::to_string(kMaxSlotKeySize) +
                            " bytes (this one is " + std::to_string(map.slot_key_size) + ")");
  }
  const InnerTemplate& inner = map.inner;
  if (kernel::is_map_in_map(inner.type)) {
    return invalid_argument(at + ": inner maps cannot be map-in-map (two levels at most)");
  }
  if (inner.key_size == 0 || inner.value_size == 0 || inner.max_entries == 0) {
    return invalid_argument(at + ": inner key, value and max_entries must be positive");
  }
  if (kernel::is_array(inner.type) && inner.key_size != sizeof(uint32_t)) {
    return invalid_argument(at + ": array inner maps have 4-byte keys");
  }
  if (inner.type == BPF_MAP_TYPE_LPM_TRIE && inner.key_size <= 4) {
    return invalid_argument(at + ": lpm_trie keys are a 4-byte prefix length plus data");
  }
  for (const CounterField& c : inner.counters) {
    if (c.size != 4 && c.size != 8) {
      return invalid_argument(at + ": counter \"" + c.name + "\" must be 4 or 8 bytes");
    }
    if (c.offset + c.size > inner.value_size) {
      return invalid_argument(at + ": counter \"" + c.name + "\" lies outside the value");
    }
  }
  return {};
}

}  // namespace policyd::core
