// StateStore: policyd's durable record in state_dir (G8).
//
//   state_dir/state              the manifest: current generation, history (slot -> contents
//                                hash), drained counter totals. Rewritten per commit: temp file,
//                                fsync, rename, fsync of the directory.
//   state_dir/contents/<sha256>  one slot's entries, content-addressed: a generation writes only
//                                the slots it changed; files no manifest refers to are removed.
//   state_dir/lock               flock()ed while a daemon uses the directory.
//
// Every file is framed (magic, format version, payload length, SHA-256 of the payload), so a
// torn or corrupt file is detected and reported, never half read. Thread-safety: put_contents()
// may run on any thread; the other calls belong to one thread at a time.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/model.h"
#include "kernel/unique_fd.h"
#include "util/result.h"

namespace policyd::core {

// Raw SHA-256 digest (32 bytes) and its hex form (file names, logs).
using Digest = std::string;
[[nodiscard]] Digest sha256(const void* data, size_t size);
[[nodiscard]] std::string digest_hex(const Digest& d);

struct StoredSlot {
  std::string map;
  Bytes slot;
  Digest contents;
  uint32_t inner_id = 0;  // current generation only
};

// What a generation was; the committer's history and the durable record share it.
struct GenerationMeta {
  uint64_t id = 0;
  std::string label;
  int64_t committed_unix_ms = 0;
  uint32_t changes = 0;
  uint64_t entries = 0;
  std::string request_id;
};

struct StoredGeneration : GenerationMeta {
  std::vector<StoredSlot> slots;  // sorted by (map, slot)
  Digest content_hash;            // over the sorted (map, slot, contents) triples
};

struct StoredCounter {
  std::string map;
  Bytes slot;
  std::string field;
  uint64_t total = 0;
};

struct StoredState {
  std::string pin_dir;  // whose maps the record describes
  uint64_t generation = 0;
  std::vector<StoredGeneration> history;  // newest first
  std::vector<StoredCounter> drained;
  std::vector<uint32_t> drained_inner_ids;
};

// The content hash of a generation's slots (sorted by map and slot).
[[nodiscard]] Digest generation_hash(const std::vector<StoredSlot>& slots);

class StateStore {
 public:
  // Creates the directory (and contents/) when missing and takes the lock: a second daemon on
  // the same state_dir is refused.
  [[nodiscard]] static Result<std::unique_ptr<StateStore>> open(const std::string& dir);
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  [[nodiscard]] const std::string& dir() const { return dir_; }
  [[nodiscard]] std::string manifest_path() const { return dir_ + "/state"; }

  // The manifest, or nullopt when there is none (first start). A corrupt or truncated file is
  // an error that names the file, what is wrong, and how to recover.
  [[nodiscard]] Result<std::optional<StoredState>> load() const;
  // Writes a slot's contents (if no file has them yet) and fsyncs it; returns its digest.
  // Thread-safe. The file is durable once sync_contents() returned. The file is held (garbage
  // collection keeps it) until release() is called for it as often as it was put.
  [[nodiscard]] Result<Digest> put_contents(const std::vector<Entry>& entries, uint32_t key_size,
                                            uint32_t value_size);
  void release(const std::vector<Digest>& digests);
  [[nodiscard]] Status sync_contents();
  [[nodiscard]] Result<std::vector<Entry>> get_contents(const Digest& digest) const;
  // Replaces the manifest atomically and durably.
  [[nodiscard]] Status write(const StoredState& state);
  // Removes contents files that neither `state` (the record that stays) nor a held put refers
  // to. Call it only with a record that will not be replaced by an older one.
  void collect_garbage(const StoredState& state);

 private:
  StateStore(std::string dir, kernel::UniqueFd lock);
  void remove_temp_files() const;

  std::string dir_;
  kernel::UniqueFd lock_;
  std::mutex mu_;
  // Contents files put for pushes still in the pipeline: hex name -> puts not yet released.
  std::map<std::string, size_t> held_;
};

}  // namespace policyd::core
