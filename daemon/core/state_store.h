// StateStore: policyd's durable record (G8), an SQLite database in WAL mode with
// synchronous=FULL, one transaction (one fsync of the log) per committed batch.
//
//   state_dir/state.db     the record; its tables are described in DESIGN.md ("Durable
//                          state"), and `sqlite3 state_dir/state.db` reads it while policyd runs
//   state_dir/state.db-wal SQLite's write-ahead log (and -shm, its index)
//   state_dir/lock         flock()ed while a daemon uses the directory
//
// A write names only what a batch changed: the contents it brings (stored once, keyed by
// digest), the slots its generations changed (with what they held before, so that history
// needs no full snapshots), the current slots it touched, and the drained totals that moved.
// Contents no longer named are deleted by reference counts kept in memory (counted at open).
// A state_dir in the format before this store (state + contents/) is imported once; a database
// of format 2 is upgraded in place.
// Thread-safety: one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/model.h"
#include "kernel/unique_fd.h"
#include "util/result.h"

namespace policyd::core {

class SqliteDb;

// Raw SHA-256 digest (32 bytes) and its hex form (logs, the sqlite3 CLI's hex()).
using Digest = std::string;
[[nodiscard]] Digest sha256(const void* data, size_t size);
[[nodiscard]] std::string digest_hex(const Digest& d);

using SlotKey = std::pair<std::string, Bytes>;  // (outer map, slot key)

// A slot's entries as stored: `count` (key, value) pairs packed in `data`, named by the digest
// of sizes and data.
struct EncodedContents {
  Digest digest;
  uint32_t key_size = 0;
  uint32_t value_size = 0;
  uint64_t count = 0;
  std::string data;
};
using EncodedContentsPtr = std::shared_ptr<const EncodedContents>;
[[nodiscard]] EncodedContents encode_contents(const std::vector<Entry>& entries, uint32_t key_size,
                                              uint32_t value_size);
[[nodiscard]] Result<std::vector<Entry>> decode_contents(const EncodedContents& contents);

// What a generation was; the committer's history and the durable record share it.
struct GenerationMeta {
  uint64_t id = 0;
  std::string label;
  int64_t committed_unix_ms = 0;
  uint32_t changes = 0;
  uint64_t entries = 0;
  std::string request_id;
};

// One slot a generation changed: what it holds after and held before (empty: no inner map).
struct SlotWrite {
  std::string map;
  Bytes slot;
  Digest contents;
  Digest previous;
};

struct StoredGeneration : GenerationMeta {
  std::vector<SlotWrite> slots;  // the slots it changed (none for the oldest imported one)
};

// A slot of the current generation: its contents and the kernel id of the inner map there.
struct StoredSlot {
  std::string map;
  Bytes slot;
  Digest contents;  // empty in a RecordUpdate: the slot is now empty
  uint32_t inner_id = 0;
};

struct StoredCounter {
  std::string map;
  Bytes slot;
  std::string field;
  uint64_t total = 0;
};

// The record as a start-up reads it.
struct StoredState {
  std::string pin_dir;  // whose maps the record describes
  uint64_t generation = 0;
  std::vector<StoredSlot> slots;          // the current generation's slots
  std::vector<StoredGeneration> history;  // newest first; history[0].id == generation
  std::vector<StoredCounter> drained;     // cumulative drained counter totals
  // Inner maps whose counters `drained` already includes but whose drain pins may still be
  // there: a restart unpins them without counting them again.
  std::vector<uint32_t> drained_inner_ids;
};

// One durable write: everything in it becomes durable together, or nothing does.
struct RecordUpdate {
  std::vector<EncodedContentsPtr> contents;   // contents the writes below name (new or not)
  std::vector<StoredGeneration> generations;  // committed generations, oldest first
  std::vector<StoredSlot> slots;              // current slots set (empty contents: removed)
  std::optional<uint64_t> generation;         // the current generation, when it changed
  uint64_t keep_from = 0;                     // generations older than this id are forgotten
  uint64_t drop_from = 0;             // undo: generations from this id on are forgotten (0: none)
  std::vector<StoredCounter> totals;  // drained totals that changed
  std::optional<std::vector<uint32_t>> drained_inner_ids;  // replaces the list when set

  std::optional<std::string> pin_dir;  // set on a new record
};

class StateStore {
 public:
  // Creates the directory when missing, takes the lock (a second daemon on the same state_dir
  // is refused), and opens the database: created on first start, imported once from a
  // state_dir of the earlier format, refused with the way to recover when damaged.
  [[nodiscard]] static Result<std::unique_ptr<StateStore>> open(const std::string& dir);
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  [[nodiscard]] const std::string& dir() const { return dir_; }
  [[nodiscard]] std::string db_path() const { return dir_ + "/state.db"; }

  // The record, or nullopt when nothing was recorded yet (first start).
  [[nodiscard]] Result<std::optional<StoredState>> load();
  [[nodiscard]] Result<std::vector<Entry>> get_contents(const Digest& digest);
  // Applies the updates, in order, in one transaction: durable when this returns ok, and
  // nothing of them written when it fails (a failed write is retried with the next one).
  [[nodiscard]] Status write(const std::vector<const RecordUpdate*>& updates);
  [[nodiscard]] Status write(const RecordUpdate& update) { return write({&update}); }
  // Counts the references to contents in the tables again and compares them with the counts
  // policyd keeps, checks that every contents row named is there and that no row is named by
  // nothing: an error names the first difference. For tests (a count that drifts would delete
  // contents still named, or keep rows forever).
  [[nodiscard]] Status check_references();

 private:
  struct Statements;
  StateStore(std::string dir, kernel::UniqueFd lock, std::unique_ptr<SqliteDb> db);
  Status prepare();
  Status apply(const RecordUpdate& update);
  Status forget_generations(const std::string& where, uint64_t id, std::vector<Digest>& candidates);
  Status collect(const std::vector<Digest>& candidates);

  // References to contents rows: a row goes in the transaction that drops its last reference,
  // without an index on the digest columns (every such index would be written at a random
  // page per slot a commit changes).
  struct DigestHash {
    size_t operator()(const Digest& d) const;
  };
  using RefCounts = std::unordered_map<Digest, uint32_t, DigestHash>;
  [[nodiscard]] Result<RefCounts> count_references();
  [[nodiscard]] int64_t references(const Digest& d) const;  // committed + this transaction's
  void reference(const Digest& d, int64_t by, std::vector<Digest>& candidates);
  void keep_references();

  std::string dir_;
  kernel::UniqueFd lock_;
  std::unique_ptr<SqliteDb> db_;
  std::unique_ptr<Statements> stmts_;
  // The slots' and the history's references per contents digest, counted at open.
  RefCounts refs_;
  std::unordered_map<Digest, int64_t, DigestHash> delta_;  // the open transaction's changes
};

}  // namespace policyd::core
