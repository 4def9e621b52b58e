// StateStore: the durable record in SQLite (tables in DESIGN.md, "Durable state").
#include "core/state_store.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>

#include <spdlog/spdlog.h>

#include "core/sqlite_db.h"
#include "core/state_v1.h"
#include "util/fs.h"

namespace policyd::core {
namespace {

// PRAGMA user_version of a policyd database: the layout of the tables below. Format 2 had three
// more indexes (on the digest columns of slots and generation_slots), which the reference
// counts in memory replace; it is upgraded in place by dropping them.
constexpr int kFormat = 3;
constexpr int kFormatWithDigestIndexes = 2;

constexpr const char* kSchema = R"sql(
CREATE TABLE meta(key TEXT PRIMARY KEY, value ANY) STRICT;
CREATE TABLE contents(
  digest BLOB PRIMARY KEY, key_size INTEGER NOT NULL, value_size INTEGER NOT NULL,
  count INTEGER NOT NULL, data BLOB NOT NULL) STRICT;
CREATE TABLE slots(
  map TEXT NOT NULL, slot BLOB NOT NULL, contents BLOB NOT NULL, inner_id INTEGER NOT NULL,
  PRIMARY KEY(map, slot)) STRICT, WITHOUT ROWID;
CREATE TABLE generations(
  id INTEGER PRIMARY KEY, label TEXT NOT NULL, committed_unix_ms INTEGER NOT NULL,
  changes INTEGER NOT NULL, entries INTEGER NOT NULL, request_id TEXT NOT NULL) STRICT;
CREATE TABLE generation_slots(
  generation INTEGER NOT NULL, map TEXT NOT NULL, slot BLOB NOT NULL, contents BLOB,
  previous BLOB, PRIMARY KEY(generation, map, slot)) STRICT, WITHOUT ROWID;
CREATE TABLE drained(
  map TEXT NOT NULL, slot BLOB NOT NULL, field TEXT NOT NULL, total INTEGER NOT NULL,
  PRIMARY KEY(map, slot, field)) STRICT, WITHOUT ROWID;
CREATE TABLE drained_inner_ids(id INTEGER PRIMARY KEY) STRICT;
)sql";

void put_le32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

bool exists(const std::string& path, off_t* size = nullptr) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return false;
  if (size) *size = st.st_size;
  return true;
}

// A file of the database that is there must be a regular file: a symlink or anything else
// planted in state_dir is refused by name, before SQLite opens (or creates) anything.
Status refuse_unless_regular(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return {};  // missing: fine
  if (S_ISLNK(st.st_mode)) {
    return failed_precondition(path + " is a symlink: policyd does not follow links in its " +
                               "state_dir (put the real file there, or move the link aside)");
  }
  if (!S_ISREG(st.st_mode)) return failed_precondition(path + " is not a regular file");
  return {};
}

Status fsync_dir(const std::string& path) {
  kernel::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return sys_error(errno, "open " + path);
  if (::fsync(fd.get()) != 0) return sys_error(errno, "fsync " + path);
  return {};
}

// The refusal for a database that cannot be used as it is, with the way out.
Error damaged(const std::string& db, const std::string& why) {
  return failed_precondition(
      "state database " + db + " is damaged or unreadable: " + why +
      ". policyd will not guess what the data plane should hold. To recover, restore the state "
      "directory from a backup, or move the database aside (mv " +
      db + " " + db + ".bad, and the same for " + db + "-wal and " + db +
      "-shm when they exist) and start again: policyd then adopts the pinned maps as they are "
      "(generation history starts over), or starts empty when nothing is pinned");
}

Bytes as_bytes(const std::string& s) { return Bytes(s.begin(), s.end()); }

}  // namespace

Digest sha256(const void* data, size_t size) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data, size, md, &len, EVP_sha256(), nullptr);
  return Digest(reinterpret_cast<const char*>(md), len);
}

std::string digest_hex(const Digest& d) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : d) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

EncodedContents encode_contents(const std::vector<Entry>& entries, uint32_t key_size,
                                uint32_t value_size) {
  EncodedContents c;
  c.key_size = key_size;
  c.value_size = value_size;
  c.count = entries.size();
  c.data.reserve(entries.size() * (size_t{key_size} + value_size));
  for (const Entry& e : entries) {
    c.data.append(e.key.begin(), e.key.end());
    c.data.append(e.value.begin(), e.value.end());
  }
  std::string named;
  put_le32(named, key_size);
  put_le32(named, value_size);
  named += c.data;
  c.digest = sha256(named.data(), named.size());
  return c;
}

Result<std::vector<Entry>> decode_contents(const EncodedContents& c) {
  const size_t stride = size_t{c.key_size} + c.value_size;
  if (c.data.size() != stride * c.count) {
    return invalid_argument("contents " + digest_hex(c.digest) + ": " +
                            std::to_string(c.data.size()) + " bytes of data for " +
                            std::to_string(c.count) + " entries of " + std::to_string(stride));
  }
  std::vector<Entry> entries(c.count);
  const auto* p = reinterpret_cast<const uint8_t*>(c.data.data());
  for (Entry& e : entries) {
    e.key.assign(p, p + c.key_size);
    e.value.assign(p + c.key_size, p + stride);
    p += stride;
  }
  return entries;
}

// ---- opening, creating, importing ---------------------------------------------------------

struct StateStore::Statements {
  SqliteStmt begin, commit, rollback;
  SqliteStmt put_contents, get_contents;
  SqliteStmt put_generation, put_generation_slot;
  SqliteStmt slot_contents, put_slot, delete_slot;
  SqliteStmt set_meta;
  SqliteStmt digests_from, delete_slots_from, delete_generations_from;
  SqliteStmt digests_before, delete_slots_before, delete_generations_before;
  SqliteStmt put_total, clear_drained_ids, put_drained_id;
  SqliteStmt delete_contents;
};

namespace {

// Format 2 -> 3, in one transaction: the tables are the same, three indexes go. On failure
// nothing of it stays.
Status upgrade_from_format_2(SqliteDb& db) {
  Status st = db.exec(
      "BEGIN IMMEDIATE; DROP INDEX IF EXISTS slots_by_contents; "
      "DROP INDEX IF EXISTS generation_slots_by_contents; "
      "DROP INDEX IF EXISTS generation_slots_by_previous; PRAGMA user_version = " +
      std::to_string(kFormat) + "; COMMIT");
  if (!st.ok()) (void)db.exec("ROLLBACK");  // fails harmlessly when BEGIN was what failed
  return st;
}

Status create_schema(SqliteDb& db) {
  POLICYD_TRY(db.exec(kSchema));
  return db.exec("PRAGMA user_version = " + std::to_string(kFormat));
}

// Fills a new database from a state_dir of the earlier format: the current slots, history as
// the slots each generation changed (the oldest keeps its metadata only: what it changed is
// unknown and never needed), totals, drained ids. Contents are re-encoded under new digests.
Status import_v1(StateStore& store, const v1::State& old) {
  RecordUpdate up;
  std::map<Digest, Digest> renamed;  // v1 digest -> digest in the database
  for (const v1::Generation& g : old.history) {
    for (const v1::Slot& s : g.slots) {
      if (renamed.count(s.contents)) continue;
      POLICYD_ASSIGN_OR_RETURN(v1::Contents c, v1::read_contents(store.dir(), s.contents));
      auto e =
          std::make_shared<EncodedContents>(encode_contents(c.entries, c.key_size, c.value_size));
      renamed[s.contents] = e->digest;
      up.contents.push_back(std::move(e));
    }
  }
  const v1::Generation* before = nullptr;
  for (auto g = old.history.rbegin(); g != old.history.rend(); ++g) {
    StoredGeneration sg;
    static_cast<GenerationMeta&>(sg) = *g;
    if (before) {
      std::map<SlotKey, Digest> was;
      for (const v1::Slot& s : before->slots) was[{s.map, s.slot}] = renamed.at(s.contents);
      for (const v1::Slot& s : g->slots) {
        const Digest now = renamed.at(s.contents);
        auto it = was.find({s.map, s.slot});
        if (it != was.end() && it->second == now) {
          was.erase(it);
          continue;
        }
        sg.slots.push_back({s.map, s.slot, now, it == was.end() ? Digest{} : it->second});
        if (it != was.end()) was.erase(it);
      }
      for (const auto& [key, digest] : was) sg.slots.push_back({key.first, key.second, {}, digest});
    }
    up.generations.push_back(std::move(sg));
    before = &*g;
  }
  if (!old.history.empty()) {
    for (const v1::Slot& s : old.history.front().slots) {
      up.slots.push_back({s.map, s.slot, renamed.at(s.contents), s.inner_id});
    }
  }
  up.generation = old.generation;
  up.totals = old.drained;
  up.drained_inner_ids = old.drained_inner_ids;
  up.pin_dir = old.pin_dir;
  return store.write(up);
}

// Moves the files of the earlier format into state_dir/v1-imported once state.db holds them.
Status set_v1_files_aside(const std::string& dir) {
  if (!exists(dir + "/state")) return {};
  const std::string aside = dir + "/v1-imported";
  POLICYD_TRY(util::make_dirs(aside, 0700));
  for (const char* name : {"state", "contents"}) {
    const std::string from = dir + "/" + name;
    if (exists(from) && ::rename(from.c_str(), (aside + "/" + name).c_str()) != 0) {
      return sys_error(errno, "move " + from + " to " + aside);
    }
  }
  return fsync_dir(dir);
}

}  // namespace

StateStore::StateStore(std::string dir, kernel::UniqueFd lock, std::unique_ptr<SqliteDb> db)
    : dir_(std::move(dir)), lock_(std::move(lock)), db_(std::move(db)) {}

StateStore::~StateStore() {
  stmts_.reset();  // statements go before their database
}

namespace {

// The record decides what the data plane holds: refuse a state_dir that someone else could
// write into (another uid's, or group- or world-writable) or that is a symlink.
Status check_state_dir_is_private(const std::string& dir) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) return sys_error(errno, "stat state_dir " + dir);
  if (!S_ISDIR(st.st_mode)) {
    return failed_precondition("state_dir " + dir + " is not a directory (a symlink is refused)");
  }
  if (st.st_uid != ::geteuid()) {
    return failed_precondition("state_dir " + dir + " is owned by uid " +
                               std::to_string(st.st_uid) + ", not policyd's uid " +
                               std::to_string(::geteuid()) + " (chown it)");
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return failed_precondition("state_dir " + dir + " is group- or world-writable (mode " + mode +
                               "; chmod go-w it)");
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<StateStore>> StateStore::open(const std::string& dir) {
  POLICYD_TRY(util::make_dirs(dir, 0700));
  POLICYD_TRY(check_state_dir_is_private(dir));
  const std::string lock_path = dir + "/lock";
  kernel::UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!lock.valid()) return sys_error(errno, "open " + lock_path);
  if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return failed_precondition("state_dir " + dir + " is in use by another policyd (" +
                                 lock_path + " is locked)");
    }
    return sys_error(errno, "lock " + lock_path);
  }

  const std::string db_path = dir + "/state.db";
  const std::string fresh = db_path + ".new";
  ::unlink(fresh.c_str());  // a first start that crashed before its database was complete
  ::unlink((fresh + "-journal").c_str());
  for (const char* suffix : {"", "-wal", "-shm"})
    POLICYD_TRY(refuse_unless_regular(db_path + suffix));
  off_t db_size = 0;
  if (!exists(db_path, &db_size)) {
    off_t wal_size = 0;
    if (exists(db_path + "-wal", &wal_size) && wal_size > 0) {
      return damaged(db_path, "the database file is missing but its write-ahead log " + db_path +
                                  "-wal is there (" + std::to_string(wal_size) +
                                  " bytes): committed generations may be in it");
    }
    ::unlink((db_path + "-wal").c_str());
    ::unlink((db_path + "-shm").c_str());
    // A new database is made complete under a temp name (rollback journal, so that it is one
    // file), then renamed: a state.db always has its tables.
    POLICYD_ASSIGN_OR_RETURN(std::unique_ptr<SqliteDb> db, SqliteDb::open(fresh, true));
    POLICYD_TRY(db->exec("PRAGMA journal_mode = DELETE; PRAGMA synchronous = FULL"));
    POLICYD_TRY(create_schema(*db));
    Result<std::optional<v1::State>> read_old = v1::read_state(dir);
    if (!read_old.ok()) {
      db.reset();
      ::unlink(fresh.c_str());
      return read_old.error();
    }
    std::optional<v1::State> old = std::move(read_old).value();
    if (old) {
      StateStore importer(dir, {}, std::move(db));
      POLICYD_TRY(importer.prepare());
      Status imported = import_v1(importer, *old);
      if (!imported.ok()) {
        importer.stmts_.reset();
        importer.db_.reset();
        ::unlink(fresh.c_str());
        return imported.error().wrap("import " + dir + "/state into " + db_path);
      }
      db = std::move(importer.db_);
      importer.stmts_.reset();
    }
    db.reset();
    if (::rename(fresh.c_str(), db_path.c_str()) != 0) return sys_error(errno, "rename " + fresh);
    POLICYD_TRY(fsync_dir(dir));
  } else if (db_size == 0) {
    return damaged(db_path, "the file is empty (truncated)");
  }
  POLICYD_TRY(set_v1_files_aside(dir));

  Result<std::unique_ptr<SqliteDb>> opened = SqliteDb::open(db_path, false);
  if (!opened.ok()) return damaged(db_path, opened.error().message());
  std::unique_ptr<SqliteDb> db = std::move(opened).value();
  Status mode = db->exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL");
  if (!mode.ok()) return damaged(db_path, mode.error().message());
  Result<std::string> check = db->query_text("PRAGMA integrity_check");
  if (!check.ok()) return damaged(db_path, check.error().message());
  if (*check != "ok") return damaged(db_path, "PRAGMA integrity_check says: " + *check);
  Result<std::string> format = db->query_text("PRAGMA user_version");
  if (format.ok() && *format == std::to_string(kFormatWithDigestIndexes)) {
    if (Status up = upgrade_from_format_2(*db); !up.ok()) {
      // Nothing is damaged, and nothing changed: a full disk, say, or another connection's
      // write lock held past the busy timeout.
      return up.error().wrap("upgrade state database " + db_path + " from format " +
                             std::to_string(kFormatWithDigestIndexes) + " to " +
                             std::to_string(kFormat) +
                             "; the database is unchanged, start again once it can be written");
    }
    spdlog::info(
        "state database {}: upgraded from format {} to {} (dropped the indexes on "
        "digest columns)",
        db_path, kFormatWithDigestIndexes, kFormat);
    format = std::to_string(kFormat);
  }
  if (!format.ok() || *format != std::to_string(kFormat)) {
    return damaged(db_path, "format " + (format.ok() ? *format : format.error().message()) +
                                ", this policyd reads format " + std::to_string(kFormat));
  }
  std::unique_ptr<StateStore> store(new StateStore(dir, std::move(lock), std::move(db)));
  if (Status st = store->prepare(); !st.ok()) return damaged(db_path, st.error().message());
  return store;
}

Status StateStore::prepare() {
  auto s = std::make_unique<Statements>();
  SqliteDb& db = *db_;
  struct Named {
    SqliteStmt* stmt;
    const char* sql;
  };
  const Named all[] = {
      {&s->begin, "BEGIN IMMEDIATE"},
      {&s->commit, "COMMIT"},
      {&s->rollback, "ROLLBACK"},
      {&s->put_contents,
       "INSERT OR IGNORE INTO contents(digest, key_size, value_size, count, data) "
       "VALUES(?1, ?2, ?3, ?4, ?5)"},
      {&s->get_contents,
       "SELECT key_size, value_size, count, data FROM contents WHERE digest = ?1"},
      {&s->put_generation,
       "INSERT OR REPLACE INTO generations(id, label, committed_unix_ms, changes, entries, "
       "request_id) VALUES(?1, ?2, ?3, ?4, ?5, ?6)"},
      {&s->put_generation_slot,
       "INSERT INTO generation_slots(generation, map, slot, contents, previous) "
       "VALUES(?1, ?2, ?3, ?4, ?5)"},
      {&s->slot_contents, "SELECT contents FROM slots WHERE map = ?1 AND slot = ?2"},
      {&s->put_slot,
       "INSERT INTO slots(map, slot, contents, inner_id) VALUES(?1, ?2, ?3, ?4) "
       "ON CONFLICT(map, slot) DO UPDATE SET contents = excluded.contents, "
       "inner_id = excluded.inner_id"},
      {&s->delete_slot, "DELETE FROM slots WHERE map = ?1 AND slot = ?2"},
      {&s->set_meta, "INSERT OR REPLACE INTO meta(key, value) VALUES(?1, ?2)"},
      {&s->digests_from, "SELECT contents, previous FROM generation_slots WHERE generation >= ?1"},
      {&s->delete_slots_from, "DELETE FROM generation_slots WHERE generation >= ?1"},
      {&s->delete_generations_from, "DELETE FROM generations WHERE id >= ?1"},
      {&s->digests_before, "SELECT contents, previous FROM generation_slots WHERE generation < ?1"},
      {&s->delete_slots_before, "DELETE FROM generation_slots WHERE generation < ?1"},
      {&s->delete_generations_before, "DELETE FROM generations WHERE id < ?1"},
      {&s->put_total,
       "INSERT OR REPLACE INTO drained(map, slot, field, total) VALUES(?1, ?2, ?3, ?4)"},
      {&s->clear_drained_ids, "DELETE FROM drained_inner_ids"},
      {&s->put_drained_id, "INSERT OR IGNORE INTO drained_inner_ids(id) VALUES(?1)"},
      {&s->delete_contents, "DELETE FROM contents WHERE digest = ?1"},
  };
  for (const Named& n : all) {
    POLICYD_ASSIGN_OR_RETURN(*n.stmt, db.prepare(n.sql));
  }
  stmts_ = std::move(s);
  POLICYD_ASSIGN_OR_RETURN(refs_, count_references());
  return {};
}

// The references to each contents row the tables hold (at open; check_references()).
Result<StateStore::RefCounts> StateStore::count_references() {
  POLICYD_ASSIGN_OR_RETURN(
      SqliteStmt named,
      db_->prepare("SELECT contents FROM slots UNION ALL "
                   "SELECT contents FROM generation_slots WHERE contents IS NOT NULL UNION ALL "
                   "SELECT previous FROM generation_slots WHERE previous IS NOT NULL"));
  RefCounts counts;
  for (;;) {
    POLICYD_ASSIGN_OR_RETURN(bool row, named.step());
    if (!row) break;
    ++counts[named.column_blob(0)];
  }
  return counts;
}

size_t StateStore::DigestHash::operator()(const Digest& d) const {
  // A SHA-256 digest is uniform already: its first bytes are a hash.
  size_t h = 0;
  if (d.size() < sizeof(h)) return std::hash<std::string>{}(d);
  std::memcpy(&h, d.data(), sizeof(h));
  return h;
}

Status StateStore::check_references() {
  POLICYD_ASSIGN_OR_RETURN(RefCounts counted, count_references());
  for (const auto& [d, n] : counted) {
    auto it = refs_.find(d);
    const uint32_t mine = it == refs_.end() ? 0 : it->second;
    if (mine != n) {
      return failed_precondition("contents " + digest_hex(d) + ": the tables name it " +
                                 std::to_string(n) + " time(s), policyd counts " +
                                 std::to_string(mine));
    }
    POLICYD_ASSIGN_OR_RETURN(std::vector<Entry> entries, get_contents(d));
    (void)entries;
  }
  for (const auto& [d, mine] : refs_) {
    if (!counted.count(d)) {
      return failed_precondition("contents " + digest_hex(d) + ": policyd counts " +
                                 std::to_string(mine) + " reference(s), the tables name it none");
    }
  }
  // And no row outlived its last name.
  POLICYD_ASSIGN_OR_RETURN(SqliteStmt rows, db_->prepare("SELECT digest FROM contents"));
  for (;;) {
    POLICYD_ASSIGN_OR_RETURN(bool row, rows.step());
    if (!row) break;
    const Digest d = rows.column_blob(0);
    if (!counted.count(d)) {
      return failed_precondition("contents " + digest_hex(d) + " is kept but named by nothing");
    }
  }
  return {};
}

int64_t StateStore::references(const Digest& d) const {
  int64_t n = 0;
  if (auto it = refs_.find(d); it != refs_.end()) n += it->second;
  if (auto it = delta_.find(d); it != delta_.end()) n += it->second;
  return n;
}

void StateStore::reference(const Digest& d, int64_t by, std::vector<Digest>& candidates) {
  if (d.empty()) return;
  delta_[d] += by;
  if (by < 0) candidates.push_back(d);
}

// A transaction committed: its reference changes hold.
void StateStore::keep_references() {
  for (const auto& [d, by] : delta_) {
    const int64_t n = static_cast<int64_t>(refs_[d]) + by;
    if (n < 0) {
      spdlog::error(
          "state database {}: contents {} lost more references than it had: policyd's counts "
          "no longer match the tables (a defect; a restart counts them again)",
          db_path(), digest_hex(d));
    }
    if (n <= 0)
      refs_.erase(d);
    else
      refs_[d] = static_cast<uint32_t>(n);
  }
  delta_.clear();
}

// ---- reading --------------------------------------------------------------------------------

Result<std::optional<StoredState>> StateStore::load() {
  SqliteDb& db = *db_;
  POLICYD_ASSIGN_OR_RETURN(std::string generation,
                           db.query_text("SELECT value FROM meta WHERE key = 'generation'"));
  if (generation.empty()) return std::optional<StoredState>{};
  StoredState st;
  char* end = nullptr;
  st.generation = std::strtoull(generation.c_str(), &end, 10);
  if (end == generation.c_str() || *end != '\0') {
    return damaged(db_path(), "meta.generation is \"" + generation + "\", not a generation id");
  }
  POLICYD_ASSIGN_OR_RETURN(st.pin_dir,
                           db.query_text("SELECT value FROM meta WHERE key = 'pin_dir'"));

  POLICYD_ASSIGN_OR_RETURN(SqliteStmt slots, db.prepare("SELECT map, slot, contents, inner_id "
                                                        "FROM slots ORDER BY map, slot"));
  for (;;) {
    POLICYD_ASSIGN_OR_RETURN(bool row, slots.step());
    if (!row) break;
    st.slots.push_back({slots.column_text(0), as_bytes(slots.column_blob(1)), slots.column_blob(2),
                        static_cast<uint32_t>(slots.column_int(3))});
  }
  POLICYD_ASSIGN_OR_RETURN(SqliteStmt gens,
                           db.prepare("SELECT id, label, committed_unix_ms, changes, entries, "
                                      "request_id FROM generations ORDER BY id DESC"));
  std::map<uint64_t, size_t> index;
  for (;;) {
    POLICYD_ASSIGN_OR_RETURN(bool row, gens.step());
    if (!row) break;
    StoredGeneration g;
    g.id = static_cast<uint64_t>(gens.column_int(0));
    g.label = gens.column_text(1);
    g.committed_unix_ms = gens.column_int(2);
    g.changes = static_cast<uint32_t>(gens.column_int(3));
    g.entries = static_cast<uint64_t>(gens.column_int(4));
    g.request_id = gens.column_text(5);
    index[g.id] = st.history.size();
    st.history.push_back(std::move(g));
  }
  POLICYD_ASSIGN_OR_RETURN(SqliteStmt changed,
                           db.prepare("SELECT generation, map, slot, contents, previous FROM "
                                      "generation_slots ORDER BY generation, map, slot"));
  for (;;) {
    POLICYD_ASSIGN_OR_RETURN(bool row, changed.step());
    if (!row) break;
    auto it = index.find(static_cast<uint64_t>(changed.column_int(0)));
    if (it == index.end()) {
      return damaged(db_path(), "generation_slots names generation " +
                                    std::to_string(changed.column_int(0)) +
                                    ", which the generations table does not have");
    }
    st.history[it->second].slots.push_back({changed.column_text(1),
                                            as_bytes(changed.column_blob(2)),
                                            changed.column_blob(3), changed.column_blob(4)});
  }
  if (!st.history.empty() && st.history.front().id != st.generation) {
    return damaged(db_path(),
                   "the newest generation recorded is " + std::to_string(st.history.front().id) +
                       ", but meta says the current one is " + std::to_string(st.generation));
  }
  POLICYD_ASSIGN_OR_RETURN(SqliteStmt totals,
                           db.prepare("SELECT map, slot, field, total FROM drained"));
  for (;;) {
    POLICYD_ASSIGN_OR_RETURN(bool row, totals.step());
    if (!row) break;
    st.drained.push_back({totals.column_text(0), as_bytes(totals.column_blob(1)),
                          totals.column_text(2), static_cast<uint64_t>(totals.column_int(3))});
  }
  POLICYD_ASSIGN_OR_RETURN(SqliteStmt ids, db.prepare("SELECT id FROM drained_inner_ids"));
  for (;;) {
    POLICYD_ASSIGN_OR_RETURN(bool row, ids.step());
    if (!row) break;
    st.drained_inner_ids.push_back(static_cast<uint32_t>(ids.column_int(0)));
  }
  return std::optional<StoredState>(std::move(st));
}

Result<std::vector<Entry>> StateStore::get_contents(const Digest& digest) {
  SqliteStmt& q = stmts_->get_contents;
  q.bind_blob(1, digest.data(), digest.size());
  Result<bool> row = q.step();
  if (!row.ok()) {
    q.reset();
    return row.error();
  }
  if (!*row) {
    q.reset();
    return damaged(db_path(), "contents " + digest_hex(digest) +
                                  " are named by a slot but not in the contents table");
  }
  EncodedContents c;
  c.digest = digest;
  c.key_size = static_cast<uint32_t>(q.column_int(0));
  c.value_size = static_cast<uint32_t>(q.column_int(1));
  c.count = static_cast<uint64_t>(q.column_int(2));
  c.data = q.column_blob(3);
  q.reset();
  Result<std::vector<Entry>> entries = decode_contents(c);
  if (!entries.ok()) return damaged(db_path(), entries.error().message());
  return entries;
}

// ---- writing --------------------------------------------------------------------------------

Status StateStore::write(const std::vector<const RecordUpdate*>& updates) {
  // delta_ is empty here: every write ends by keeping or dropping it.
  POLICYD_TRY(stmts_->begin.run());
  Status st;
  for (const RecordUpdate* update : updates) {
    if (st.ok()) st = apply(*update);
  }
  if (st.ok()) st = stmts_->commit.run();
  if (!st.ok()) {
    (void)stmts_->rollback.run();
    delta_.clear();  // nothing of the transaction holds, nor do its reference changes
    return st.error().wrap("write the record to " + db_path());
  }
  keep_references();
  return {};
}

Status StateStore::apply(const RecordUpdate& up) {
  Statements& s = *stmts_;
  std::vector<Digest> candidates;  // contents that may have lost their last reference
  for (const EncodedContentsPtr& ptr : up.contents) {
    const EncodedContents& c = *ptr;
    candidates.push_back(c.digest);          // brought, but named by nothing in the end: not kept
    if (references(c.digest) > 0) continue;  // a named contents row is there already
    POLICYD_TRY(s.put_contents.bind_blob(1, c.digest.data(), c.digest.size())
                    .bind(2, int64_t{c.key_size})
                    .bind(3, int64_t{c.value_size})
                    .bind(4, static_cast<int64_t>(c.count))
                    .bind_blob(5, c.data.data(), c.data.size())
                    .run());
  }
  if (up.drop_from) {
    POLICYD_TRY(forget_generations("from", up.drop_from, candidates));
  }
  for (const StoredGeneration& g : up.generations) {
    POLICYD_TRY(s.put_generation.bind(1, static_cast<int64_t>(g.id))
                    .bind(2, g.label)
                    .bind(3, g.committed_unix_ms)
                    .bind(4, int64_t{g.changes})
                    .bind(5, static_cast<int64_t>(g.entries))
                    .bind(6, g.request_id)
                    .run());
    for (const SlotWrite& w : g.slots) {
      SqliteStmt& put = s.put_generation_slot;
      put.bind(1, static_cast<int64_t>(g.id))
          .bind(2, w.map)
          .bind_blob(3, w.slot.data(), w.slot.size());
      if (w.contents.empty())
        put.bind_null(4);
      else
        put.bind_blob(4, w.contents.data(), w.contents.size());
      if (w.previous.empty())
        put.bind_null(5);
      else
        put.bind_blob(5, w.previous.data(), w.previous.size());
      POLICYD_TRY(put.run());
      reference(w.contents, +1, candidates);
      reference(w.previous, +1, candidates);
    }
  }
  for (const StoredSlot& slot : up.slots) {
    SqliteStmt& old = s.slot_contents;
    old.bind(1, slot.map).bind_blob(2, slot.slot.data(), slot.slot.size());
    Result<bool> row = old.step();
    if (row.ok() && *row) reference(old.column_blob(0), -1, candidates);
    old.reset();
    if (!row.ok()) return row.error();
    reference(slot.contents, +1, candidates);
    if (slot.contents.empty()) {
      POLICYD_TRY(
          s.delete_slot.bind(1, slot.map).bind_blob(2, slot.slot.data(), slot.slot.size()).run());
    } else {
      POLICYD_TRY(s.put_slot.bind(1, slot.map)
                      .bind_blob(2, slot.slot.data(), slot.slot.size())
                      .bind_blob(3, slot.contents.data(), slot.contents.size())
                      .bind(4, int64_t{slot.inner_id})
                      .run());
    }
  }
  if (up.generation) {
    POLICYD_TRY(s.set_meta.bind(1, std::string_view("generation"))
                    .bind(2, std::to_string(*up.generation))
                    .run());
  }
  if (up.pin_dir) {
    POLICYD_TRY(s.set_meta.bind(1, std::string_view("pin_dir")).bind(2, *up.pin_dir).run());
  }
  if (up.keep_from) {
    POLICYD_TRY(forget_generations("before", up.keep_from, candidates));
  }
  for (const StoredCounter& c : up.totals) {
    POLICYD_TRY(s.put_total.bind(1, c.map)
                    .bind_blob(2, c.slot.data(), c.slot.size())
                    .bind(3, c.field)
                    .bind(4, static_cast<int64_t>(c.total))
                    .run());
  }
  if (up.drained_inner_ids) {
    POLICYD_TRY(s.clear_drained_ids.run());
    for (uint32_t id : *up.drained_inner_ids)
      POLICYD_TRY(s.put_drained_id.bind(1, int64_t{id}).run());
  }
  return collect(candidates);
}

// Forgets generations with ids >= `id` ("from": the undo of a batch the kernel refused) or
// < `id` ("before": history beyond its bound); the contents they named join `candidates`, to be
// collected once the whole update is applied (an undo's slots may name them again).
Status StateStore::forget_generations(const std::string& where, uint64_t id,
                                      std::vector<Digest>& candidates) {
  Statements& s = *stmts_;
  const bool from = where == "from";
  SqliteStmt& digests = from ? s.digests_from : s.digests_before;
  digests.bind(1, static_cast<int64_t>(id));
  for (;;) {
    Result<bool> row = digests.step();
    if (!row.ok()) {
      digests.reset();
      return row.error();
    }
    if (!*row) break;
    for (int col = 0; col < 2; ++col) {
      if (!digests.column_is_null(col)) reference(digests.column_blob(col), -1, candidates);
    }
  }
  digests.reset();
  POLICYD_TRY(
      (from ? s.delete_slots_from : s.delete_slots_before).bind(1, static_cast<int64_t>(id)).run());
  POLICYD_TRY((from ? s.delete_generations_from : s.delete_generations_before)
                  .bind(1, static_cast<int64_t>(id))
                  .run());
  return {};
}

// Deletes the contents among `candidates` that no slot and no remembered generation names.
Status StateStore::collect(const std::vector<Digest>& candidates) {
  std::set<Digest> unique(candidates.begin(), candidates.end());
  for (const Digest& d : unique) {
    if (d.empty() || references(d) > 0) continue;
    POLICYD_TRY(stmts_->delete_contents.bind_blob(1, d.data(), d.size()).run());
  }
  return {};
}

}  // namespace policyd::core
