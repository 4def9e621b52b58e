// The durable record's format before the SQLite store (policyd up to the import): a framed
// protobuf manifest `state_dir/state` (every generation of the history as a full list of slots)
// and one framed file per slot contents, `state_dir/contents/<sha256 hex>`. Read once, by the
// import in StateStore::open(); nothing writes it any more.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/state_store.h"
#include "util/result.h"

namespace policyd::core::v1 {

struct Slot {
  std::string map;
  Bytes slot;
  Digest contents;        // SHA-256 of the contents file's payload
  uint32_t inner_id = 0;  // current generation only
};

struct Generation : GenerationMeta {
  std::vector<Slot> slots;  // every slot after this generation, sorted by (map, slot)
};

struct State {
  std::string pin_dir;
  uint64_t generation = 0;
  std::vector<Generation> history;  // newest first
  std::vector<StoredCounter> drained;
  std::vector<uint32_t> drained_inner_ids;
};

struct Contents {
  uint32_t key_size = 0;
  uint32_t value_size = 0;
  std::vector<Entry> entries;
};

// The manifest `dir`/state, or nullopt when there is none. A damaged file is an error naming
// it, what is wrong and how to recover.
[[nodiscard]] Result<std::optional<State>> read_state(const std::string& dir);
[[nodiscard]] Result<Contents> read_contents(const std::string& dir, const Digest& digest);

}  // namespace policyd::core::v1
