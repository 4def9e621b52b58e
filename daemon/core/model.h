// The engine's vocabulary: outer-map configuration, generations (byte level), drain records.
// Typed schemas (field names -> bytes) live above this layer; core sees keys and values as bytes
// of the sizes configured here.
#pragma once

#include <linux/bpf.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace policyd::core {

using Bytes = std::vector<uint8_t>;

enum class OuterKind { kArray, kHash };
enum class DrainMode { kEntries, kNone };
// How outer-map writes pay for the kernel's grace-period wait (DESIGN.md, Barrier strategies
// and kernel behaviour).
enum class BarrierMode { kAuto, kBatch, kConcurrent };
enum class Strategy { kBatch, kConcurrent };

// The kernel's outer map type and the config's name for it (kernel/map_types.h).
[[nodiscard]] bpf_map_type outer_map_type(OuterKind kind);
const char* to_string(OuterKind kind);
const char* to_string(DrainMode mode);
const char* to_string(BarrierMode mode);
const char* to_string(Strategy strategy);

// A value field whose per-entry (and per-CPU) sum is published when an inner map is drained.
struct CounterField {
  std::string name;
  uint32_t offset = 0;
  uint32_t size = 8;  // 4 or 8, little endian as the program writes it
};

struct InnerTemplate {
  bpf_map_type type = BPF_MAP_TYPE_HASH;
  uint32_t key_size = 0;
  uint32_t value_size = 0;  // per CPU for per-CPU types
  uint32_t max_entries = 0;
  uint32_t flags = 0;  // BPF_F_NO_PREALLOC is forced for lpm_trie
  std::vector<CounterField> counters;
};

struct OuterMapConfig {
  std::string name;  // pinned at <pin_dir>/<name>; group members at <name>_a / <name>_b
  OuterKind kind = OuterKind::kArray;
  uint32_t slots = 0;          // array: number of indexes; hash: max slots
  uint32_t slot_key_size = 4;  // array: always 4 (u32 index)
  DrainMode drain = DrainMode::kEntries;
  std::string group;  // atomic group name, empty when none
  InnerTemplate inner;
};

struct EngineConfig {
  std::string pin_dir;
  std::vector<OuterMapConfig> maps;
  BarrierMode barrier = BarrierMode::kAuto;
  size_t build_threads = 2;     // builders fill inner maps in parallel
  size_t barrier_threads = 64;  // concurrent outer-map writes (their waits overlap)
  // Pin every inner map that is about to leave the data plane under <pin_dir>/_drain before
  // the swap, and keep the pin after the drain until release_drained(): a crash between
  // barrier and durable drain record loses no counter (G8). The daemon turns it on.
  bool drain_pins = false;
  // Empty inner maps kept ready per outer map (at most this many; fewer for large inner maps,
  // core/inner_pool.h), refilled in the background, so that a build only fills them. 0: none,
  // every build creates its maps. The daemon turns it on (kMaxPooledPerMap).
  size_t inner_pool = 0;
};

struct Entry {
  Bytes key;
  Bytes value;  // one value; per-CPU maps get it on every CPU
};

// One slot of one outer map: replace its inner map with `entries`, or delete it.
struct SlotChange {
  std::string map;
  Bytes slot;  // array: 4-byte little-endian index; hash: slot_key_size bytes
  bool remove = false;
  std::vector<Entry> entries;
};

struct Generation {
  std::string label;
  std::vector<SlotChange> changes;
};

struct DrainedEntry {
  Bytes key;
  std::vector<Bytes> values;  // one per CPU for per-CPU maps, else exactly one
};

// What an inner map held when it was read: a drain (a replaced map, after the barrier) keeps
// how many entries it had and the counter sums, never the entries themselves (nothing promises
// them: the Watch API's Drained event and the metrics carry the count and the sums); a dump of
// a live slot (Engine::dump_slot, the DumpSlot API) also keeps every entry and per-CPU value.
struct DrainRecord {
  std::string map;
  Bytes slot;
  uint32_t map_id = 0;
  uint64_t installed_by = 0;  // generation that installed it (0: adopted or never committed)
  uint64_t replaced_by = 0;   // generation whose commit removed it from the data plane
  DrainMode mode = DrainMode::kEntries;
  uint64_t entry_count = 0;                  // entries read; 0 when mode is kNone
  std::vector<DrainedEntry> entries;         // dumps only: a drain leaves it empty
  std::map<std::string, uint64_t> counters;  // field -> sum over entries and CPUs
};

// Human form of a slot key: the index for arrays, hex for hash keys.
std::string slot_to_string(OuterKind kind, const Bytes& slot);
// `map "<name>" slot <slot>`, for messages.
std::string describe(const OuterMapConfig& map, const Bytes& slot);
Bytes array_slot(uint32_t index);

}  // namespace policyd::core
