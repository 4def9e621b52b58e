// StateStore on SQLite: round trip of the record, history bound and undo with the contents
// only they named, the refusal of every kind of damage (with the way to recover, touching
// nothing), the directory lock, the one-time import of the earlier format, and the sqlite3 CLI.
#include "core/state_store.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "record_write_lock.h"

namespace policyd::core {
namespace {

namespace fs = std::filesystem;

const Bytes kSlot0{0, 0, 0, 0};
const Bytes kSlot1{1, 0, 0, 0};

std::vector<Entry> entries(uint8_t tag) {
  return {Entry{{1, 2, 3, 4}, {tag, 0, 0, 0, 0, 0, 0, 0}},
          Entry{{5, 6, 7, 8}, {tag, 1, 0, 0, 0, 0, 0, 0}}};
}

EncodedContentsPtr contents(uint8_t tag) {
  return std::make_shared<const EncodedContents>(encode_contents(entries(tag), 4, 8));
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// What `sql` prints through Debian's sqlite3 CLI on `db`, read-only.
std::string sqlite3_cli(const std::string& db, const std::string& sql) {
  const std::string cmd = "sqlite3 -readonly '" + db + "' \"" + sql + "\" 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return "popen failed";
  std::string out;
  char buf[512];
  while (size_t n = ::fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  ::pclose(p);
  return out;
}

class StateStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/policyd-state-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    state_dir_ = dir_ + "/state";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<StateStore> open() {
    auto s = StateStore::open(state_dir_);
    EXPECT_TRUE(s.ok()) << s.error().message();
    return s.ok() ? std::move(s).value() : nullptr;
  }

  // state_dir_ holding a copy of tests/e2e/fixtures/state_v2 (format 2); its database's path.
  std::string use_format2_fixture() {
    fs::create_directories(state_dir_);
    fs::permissions(state_dir_, fs::perms::owner_all, fs::perm_options::replace);
    fs::copy_file(STATE_V2_FIXTURE "/state.db", state_dir_ + "/state.db");
    return state_dir_ + "/state.db";
  }
  // How many of format 2's three indexes on digest columns `db` has, as the CLI prints it.
  static std::string digest_indexes(const std::string& db) {
    return sqlite3_cli(db, "SELECT count(*) FROM sqlite_master WHERE name GLOB '*_by_*'");
  }

  // The store's reference counts against the tables (a drift deletes contents still named).
  static void expect_counts_match(StateStore& store) {
    Status st = store.check_references();
    EXPECT_TRUE(st.ok()) << st.error().message();
  }

  // The record `store` holds; nullopt, with the failure reported, when it cannot be read or
  // there is none.
  static std::optional<StoredState> record_of(StateStore& store) {
    auto loaded = store.load();
    EXPECT_TRUE(loaded.ok()) << (loaded.ok() ? "" : loaded.error().message());
    if (!loaded.ok()) return std::nullopt;
    EXPECT_TRUE(loaded->has_value()) << "no record";
    return std::move(loaded).value();
  }

  // Generation `id` puts contents(tag) in acl `slot` (previously `previous`, or empty).
  static RecordUpdate generation(uint64_t id, const Bytes& slot, uint8_t tag,
                                 const EncodedContentsPtr& previous, uint32_t inner_id) {
    RecordUpdate up;
    EncodedContentsPtr c = contents(tag);
    StoredGeneration g;
    g.id = id;
    g.label = "g" + std::to_string(id);
    g.request_id = "req-" + std::to_string(id);
    g.changes = 1;
    g.entries = 2;
    g.slots.push_back({"acl", slot, c->digest, previous ? previous->digest : Digest{}});
    up.generations.push_back(g);
    up.slots.push_back({"acl", slot, c->digest, inner_id});
    up.contents.push_back(c);
    up.generation = id;
    return up;
  }

  std::string dir_;
  std::string state_dir_;
};

TEST_F(StateStoreTest, G8_NoRecordOnFirstStart) {
  auto store = open();
  ASSERT_TRUE(store);
  auto loaded = store->load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().message();
  EXPECT_FALSE(loaded->has_value());
  EXPECT_TRUE(fs::exists(state_dir_ + "/state.db"));
}

TEST_F(StateStoreTest, G8_RecordRoundTripsThroughARestart) {
  {
    auto store = open();
    ASSERT_TRUE(store);
    RecordUpdate first = generation(1, kSlot0, 1, nullptr, 40);
    first.pin_dir = "/sys/fs/bpf/p";
    first.totals.push_back({"acl", kSlot0, "hits", 7});
    first.drained_inner_ids = std::vector<uint32_t>{9, 10};
    ASSERT_TRUE(store->write(first).ok());
    RecordUpdate second = generation(2, kSlot0, 2, contents(1), 41);
    second.totals.push_back({"acl", kSlot0, "hits", 1ull << 63});  // u64 survives INTEGER
    ASSERT_TRUE(store->write(second).ok());
  }
  auto store = open();
  ASSERT_TRUE(store);
  auto loaded = store->load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().message();
  ASSERT_TRUE(loaded->has_value());
  const StoredState& st = **loaded;
  EXPECT_EQ(st.pin_dir, "/sys/fs/bpf/p");
  EXPECT_EQ(st.generation, 2u);
  ASSERT_EQ(st.slots.size(), 1u);
  EXPECT_EQ(st.slots[0].inner_id, 41u);
  EXPECT_EQ(st.slots[0].contents, contents(2)->digest);
  ASSERT_EQ(st.history.size(), 2u);
  EXPECT_EQ(st.history[0].id, 2u);
  EXPECT_EQ(st.history[0].request_id, "req-2");
  ASSERT_EQ(st.history[0].slots.size(), 1u);
  EXPECT_EQ(st.history[0].slots[0].previous, contents(1)->digest);
  ASSERT_EQ(st.drained.size(), 1u);
  EXPECT_EQ(st.drained[0].total, 1ull << 63);
  EXPECT_EQ(st.drained_inner_ids, (std::vector<uint32_t>{9, 10}));
  auto back = store->get_contents(contents(2)->digest);
  ASSERT_TRUE(back.ok()) << back.error().message();
  ASSERT_EQ(back->size(), 2u);
  EXPECT_EQ((*back)[1].value, entries(2)[1].value);
}

TEST_F(StateStoreTest, G8_HistoryBeyondItsBoundGoesWithTheContentsOnlyItNamed) {
  auto store = open();
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->write(generation(1, kSlot0, 1, nullptr, 1)).ok());
  ASSERT_TRUE(store->write(generation(2, kSlot0, 2, contents(1), 2)).ok());
  RecordUpdate third = generation(3, kSlot0, 3, contents(2), 3);
  third.keep_from = 3;  // generations 1 and 2 leave the history
  ASSERT_TRUE(store->write(third).ok());
  expect_counts_match(*store);
  auto loaded = store->load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  ASSERT_EQ((*loaded)->history.size(), 1u);
  EXPECT_EQ((*loaded)->history[0].id, 3u);
  // Contents 2 is still named (as generation 3's previous); contents 1 is not.
  EXPECT_TRUE(store->get_contents(contents(2)->digest).ok());
  auto gone = store->get_contents(contents(1)->digest);
  ASSERT_FALSE(gone.ok());
  EXPECT_NE(gone.error().message().find("not in the contents table"), std::string::npos);
}

TEST_F(StateStoreTest, G8_UndoOfARefusedBatchPutsBackTheRecordBeforeIt) {
  auto store = open();
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->write(generation(1, kSlot0, 1, nullptr, 11)).ok());
  RecordUpdate batch = generation(2, kSlot1, 2, nullptr, 12);
  ASSERT_TRUE(store->write(batch).ok());
  RecordUpdate undo;
  undo.drop_from = 2;
  undo.generation = 1;
  undo.slots.push_back({"acl", kSlot1, {}, 0});
  ASSERT_TRUE(store->write(undo).ok());
  expect_counts_match(*store);
  auto loaded = store->load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value()) << loaded.error().message();
  EXPECT_EQ((*loaded)->generation, 1u);
  ASSERT_EQ((*loaded)->history.size(), 1u);
  ASSERT_EQ((*loaded)->slots.size(), 1u);
  EXPECT_EQ((*loaded)->slots[0].slot, kSlot0);
  EXPECT_FALSE(store->get_contents(contents(2)->digest).ok()) << "undone contents kept";
}

// The undo of a refused batch puts back contents that only the refused generation still named
// (the generation that installed them left the history): they must survive the undo.
TEST_F(StateStoreTest, G8_UndoKeepsContentsOnlyTheRefusedGenerationNamed) {
  auto store = open();
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->write(generation(1, kSlot0, 1, nullptr, 1)).ok());
  RecordUpdate second = generation(2, kSlot1, 2, nullptr, 2);
  second.keep_from = 2;  // generation 1 leaves the history: only slot 0's row names contents 1
  ASSERT_TRUE(store->write(second).ok());
  ASSERT_TRUE(store->write(generation(3, kSlot0, 3, contents(1), 3)).ok());
  RecordUpdate undo;
  undo.drop_from = 3;
  undo.generation = 2;
  undo.slots.push_back({"acl", kSlot0, contents(1)->digest, 1});
  ASSERT_TRUE(store->write(undo).ok());
  expect_counts_match(*store);
  EXPECT_TRUE(store->get_contents(contents(1)->digest).ok()) << "the undo lost slot 0's contents";
  EXPECT_FALSE(store->get_contents(contents(3)->digest).ok()) << "the refused contents stayed";
  store.reset();
  auto again = open();
  ASSERT_TRUE(again);
  auto loaded = again->load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value()) << loaded.error().message();
  EXPECT_EQ((*loaded)->generation, 2u);
}

// A write that failed is retried together with the next one: both land, in order.
TEST_F(StateStoreTest, G8_AnUpdateRetriedWithTheNextLandsInOrder) {
  auto store = open();
  ASSERT_TRUE(store);
  RecordUpdate first = generation(1, kSlot0, 1, nullptr, 1);
  RecordUpdate second = generation(2, kSlot0, 2, contents(1), 2);
  ASSERT_TRUE(store->write({&first, &second}).ok());
  expect_counts_match(*store);
  auto loaded = store->load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_EQ((*loaded)->generation, 2u);
  ASSERT_EQ((*loaded)->slots.size(), 1u);
  EXPECT_EQ((*loaded)->slots[0].inner_id, 2u);
  EXPECT_EQ((*loaded)->history.size(), 2u);
}

TEST_F(StateStoreTest, G8_ASecondDaemonOnTheSameDirectoryIsRefused) {
  auto first = open();
  ASSERT_TRUE(first);
  auto second = StateStore::open(state_dir_);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.error().message().find("in use by another policyd"), std::string::npos);
  first.reset();
  EXPECT_TRUE(StateStore::open(state_dir_).ok()) << "the lock outlived its holder";
}

// Someone who could write into state_dir could rewrite what the next start re-commits: a
// state_dir that is group- or world-writable, another uid's, or a symlink is refused, with the
// fix; the controls (0700 and 0755, policyd's own) open.
TEST_F(StateStoreTest, G8_AStateDirOthersCouldWriteIsRefused) {
  const std::string dir = state_dir_ + "-perm";
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  ASSERT_TRUE(StateStore::open(dir).ok());  // the control
  ASSERT_EQ(::chmod(dir.c_str(), 0755), 0);
  ASSERT_TRUE(StateStore::open(dir).ok());  // readable by others is fine

  ASSERT_EQ(::chmod(dir.c_str(), 0775), 0);
  auto refused = StateStore::open(dir);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(
      refused.error().message().find("is group- or world-writable (mode 0775; chmod go-w it)"),
      std::string::npos)
      << refused.error().message();
  ASSERT_EQ(::chmod(dir.c_str(), 0707), 0);
  EXPECT_FALSE(StateStore::open(dir).ok());

  ASSERT_EQ(::chmod(dir.c_str(), 0700), 0);
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(dir.c_str(), 65534, 65534), 0);
    refused = StateStore::open(dir);
    ASSERT_FALSE(refused.ok());
    EXPECT_NE(refused.error().message().find("is owned by uid 65534, not policyd's uid 0"),
              std::string::npos)
        << refused.error().message();
    ASSERT_EQ(::chown(dir.c_str(), 0, 0), 0);
  }

  const std::string link = state_dir_ + "-link";
  ASSERT_EQ(::symlink(dir.c_str(), link.c_str()), 0);
  refused = StateStore::open(link);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message().find("is not a directory (a symlink is refused)"),
            std::string::npos)
      << refused.error().message();
  ::unlink(link.c_str());
  EXPECT_TRUE(StateStore::open(dir).ok());
  std::filesystem::remove_all(dir);
}

// A symlink planted as state.db is not followed.
TEST_F(StateStoreTest, G8_ASymlinkInPlaceOfTheDatabaseIsNotFollowed) {
  ASSERT_TRUE(open());  // creates the db
  const std::string target = state_dir_ + "-elsewhere.db";
  ASSERT_EQ(::rename((state_dir_ + "/state.db").c_str(), target.c_str()), 0);
  ::unlink((state_dir_ + "/state.db-wal").c_str());
  ::unlink((state_dir_ + "/state.db-shm").c_str());
  ASSERT_EQ(::symlink(target.c_str(), (state_dir_ + "/state.db").c_str()), 0);
  auto refused = StateStore::open(state_dir_);
  ASSERT_FALSE(refused.ok()) << "state.db, a symlink, was followed";
  EXPECT_NE(refused.error().message().find("state.db is a symlink"), std::string::npos)
      << refused.error().message();
  ::unlink(target.c_str());
}

// ---- damage ---------------------------------------------------------------------------------

class StateStoreDamageTest : public StateStoreTest {
 protected:
  // A record of 40 generations, closed (SQLite checkpoints the log into the file on close).
  void write_record() {
    auto store = open();
    ASSERT_TRUE(store);
    for (uint64_t id = 1; id <= 40; ++id) {
      RecordUpdate up = generation(id, Bytes{static_cast<uint8_t>(id), 0, 0, 0},
                                   static_cast<uint8_t>(id), nullptr, static_cast<uint32_t>(id));
      ASSERT_TRUE(store->write(up).ok());
    }
  }

  // Opening is refused, names the database and the way out, and leaves every file as it was.
  void expect_refused(const std::string& what) {
    std::map<std::string, std::string> before;
    for (const auto& e : fs::directory_iterator(state_dir_)) {
      if (e.is_regular_file() && e.path().filename() != "lock" &&
          e.path().filename() != "state.db-shm")  // SQLite's index of the log, rebuilt on open
        before[e.path().filename()] = read_file(e.path());
    }
    auto store = StateStore::open(state_dir_);
    ASSERT_FALSE(store.ok()) << what << ": opened";
    const std::string msg = store.error().message();
    EXPECT_NE(msg.find(state_dir_ + "/state.db"), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
    EXPECT_NE(msg.find("mv " + state_dir_ + "/state.db"), std::string::npos) << msg;
    EXPECT_NE(msg.find("restore the state directory from a backup"), std::string::npos) << msg;
    std::map<std::string, std::string> after;
    for (const auto& e : fs::directory_iterator(state_dir_)) {
      if (e.is_regular_file() && e.path().filename() != "lock" &&
          e.path().filename() != "state.db-shm")
        after[e.path().filename()] = read_file(e.path());
    }
    EXPECT_EQ(before, after) << what << ": the refused open changed files in " << state_dir_;
  }
};

TEST_F(StateStoreDamageTest, G8_ATruncatedDatabaseIsRefusedWithTheWayToRecover) {
  write_record();
  const std::string db = state_dir_ + "/state.db";
  const auto size = fs::file_size(db);
  ASSERT_GT(size, 4u * 4096);
  fs::resize_file(db, size / 2);
  expect_refused("damaged or unreadable");
}

TEST_F(StateStoreDamageTest, G8_AnEmptiedDatabaseIsRefused) {
  write_record();
  fs::resize_file(state_dir_ + "/state.db", 0);
  expect_refused("the file is empty");
}

TEST_F(StateStoreDamageTest, G8_ACorruptedPageIsFoundByTheIntegrityCheck) {
  write_record();
  const std::string db = state_dir_ + "/state.db";
  // Page 3 onwards hold the tables' b-trees: scribble over the header of one of them.
  std::fstream f(db, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(3 * 4096);
  const std::string junk(64, '\x5a');
  f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  f.close();
  expect_refused("damaged or unreadable");
}

TEST_F(StateStoreDamageTest, G8_AWriteAheadLogWithoutItsDatabaseIsRefused) {
  // A crash leaves committed transactions in the log; then the database file goes missing.
  {
    auto store = open();
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->write(generation(1, kSlot0, 1, nullptr, 1)).ok());
    fs::copy_file(state_dir_ + "/state.db-wal", dir_ + "/saved-wal");
  }
  fs::remove(state_dir_ + "/state.db");
  fs::copy_file(dir_ + "/saved-wal", state_dir_ + "/state.db-wal");
  expect_refused("write-ahead log");
  EXPECT_FALSE(fs::exists(state_dir_ + "/state.db")) << "a new database replaced the lost one";
}

TEST_F(StateStoreDamageTest, G8_AFileThatIsNotADatabaseIsRefused) {
  fs::create_directories(state_dir_);
  std::ofstream(state_dir_ + "/state.db") << "this is not an SQLite database, but long enough "
                                             "to have a header of one: 0123456789abcdef";
  expect_refused("damaged or unreadable");
}

// Contents are collected by reference counts kept in memory: a write that fails must leave them
// as they were (else a later write deletes contents still named, or keeps ones named by
// nothing), and a restart counts them again from the tables.
TEST_F(StateStoreTest, G8_AFailedWriteLeavesTheContentsReferencesAsTheyWere) {
  auto store = open();
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->write(generation(1, kSlot0, 1, nullptr, 1)).ok());
  RecordUpdate second = generation(2, kSlot0, 2, contents(1), 2);
  second.keep_from = 2;  // generation 1 goes: contents 1 is named only as 2's previous
  {
    // Refused before the transaction begins: another connection holds the write lock.
    RecordWriteLock lock(state_dir_ + "/state.db");
    ASSERT_TRUE(lock.held()) << lock.error();
    ASSERT_FALSE(store->write(second).ok()) << "the write succeeded under another's lock";
  }
  // Refused half way, after `second` was applied: an update naming one slot twice in a
  // generation breaks generation_slots' key.
  RecordUpdate broken = generation(3, kSlot1, 5, nullptr, 3);
  broken.generations[0].slots.push_back(broken.generations[0].slots[0]);
  ASSERT_FALSE(store->write({&second, &broken}).ok());
  expect_counts_match(*store);
  // The failed write is retried with the next, which drops generation 2 from the history.
  RecordUpdate third = generation(3, kSlot0, 3, contents(2), 3);
  third.keep_from = 3;
  ASSERT_TRUE(store->write({&second, &third}).ok());
  expect_counts_match(*store);
  EXPECT_FALSE(store->get_contents(contents(1)->digest).ok()) << "contents 1 is named by nothing";
  EXPECT_FALSE(store->get_contents(contents(5)->digest).ok()) << "the refused write's contents";
  EXPECT_TRUE(store->get_contents(contents(2)->digest).ok()) << "generation 3's previous was lost";
  EXPECT_TRUE(store->get_contents(contents(3)->digest).ok()) << "slot 0's contents were lost";
  // Generation 4 drops the last reference to contents 2.
  RecordUpdate fourth = generation(4, kSlot0, 4, contents(3), 4);
  fourth.keep_from = 4;
  ASSERT_TRUE(store->write(fourth).ok());
  expect_counts_match(*store);
  EXPECT_FALSE(store->get_contents(contents(2)->digest).ok()) << "contents 2 outlived its names";
  EXPECT_EQ(sqlite3_cli(state_dir_ + "/state.db", "SELECT count(*) FROM contents"), "2\n");
  store.reset();
  // Counted again at open: generation 5 drops the last reference to contents 3.
  auto again = open();
  ASSERT_TRUE(again);
  RecordUpdate fifth = generation(5, kSlot0, 6, contents(4), 5);
  fifth.keep_from = 5;
  ASSERT_TRUE(again->write(fifth).ok());
  expect_counts_match(*again);
  EXPECT_FALSE(again->get_contents(contents(3)->digest).ok()) << "contents 3 outlived its names";
  EXPECT_TRUE(again->get_contents(contents(4)->digest).ok());
  EXPECT_TRUE(again->get_contents(contents(6)->digest).ok());
  EXPECT_EQ(sqlite3_cli(state_dir_ + "/state.db", "SELECT count(*) FROM contents"), "2\n");
}

// ---- import, upgrade and the CLI -------------------------------------------------------------

// tests/e2e/fixtures/state_v2: a database of format 2 (three more indexes on digest columns),
// written by policyd's store at ce51469 (fixtures/README.md). It is upgraded in place.
TEST_F(StateStoreTest, G8_ADatabaseOfFormat2IsUpgradedInPlaceWithItsRecord) {
  const std::string db = use_format2_fixture();
  ASSERT_EQ(sqlite3_cli(db, "PRAGMA user_version"), "2\n");
  ASSERT_EQ(digest_indexes(db), "3\n") << "the fixture is not of format 2";
  {
    auto store = open();
    ASSERT_TRUE(store);
    std::optional<StoredState> record = record_of(*store);
    ASSERT_TRUE(record);
    const StoredState& st = *record;
    EXPECT_EQ(st.pin_dir, "/sys/fs/bpf/policyd-fixture-state-v2");
    EXPECT_EQ(st.generation, 3u);
    ASSERT_EQ(st.history.size(), 3u);
    EXPECT_EQ(st.history[0].request_id, "fixture-v2-c");
    EXPECT_EQ(st.history[2].label, "first");
    ASSERT_EQ(st.slots.size(), 1u);  // generation 3 emptied slot 1
    EXPECT_EQ(st.slots[0].contents, contents(3)->digest);
    EXPECT_EQ(st.slots[0].inner_id, 103u);
    ASSERT_EQ(st.drained.size(), 1u);
    EXPECT_EQ(st.drained[0].total, 42u);
    EXPECT_EQ(st.drained_inner_ids, (std::vector<uint32_t>{101}));
    for (uint8_t tag : {1, 2, 3}) EXPECT_TRUE(store->get_contents(contents(tag)->digest).ok());
    expect_counts_match(*store);
    // The counts come from the upgraded tables: generation 4 leaves only generation 3 and
    // itself, so contents 1 (generation 2's previous) is named by nothing.
    RecordUpdate fourth = generation(4, kSlot0, 4, contents(3), 104);
    fourth.keep_from = 3;
    ASSERT_TRUE(store->write(fourth).ok());
    expect_counts_match(*store);
    EXPECT_FALSE(store->get_contents(contents(1)->digest).ok());
    EXPECT_TRUE(store->get_contents(contents(2)->digest).ok()) << "generation 3's previous";
  }
  EXPECT_EQ(sqlite3_cli(db, "PRAGMA user_version"), "3\n");
  EXPECT_EQ(digest_indexes(db), "0\n");
  auto store = open();  // the upgraded database opens as it is
  ASSERT_TRUE(store);
  auto loaded = store->load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_EQ((*loaded)->generation, 4u);
}

// An upgrade that cannot be written (another connection holds the write lock past the busy
// timeout; a full disk alike) changes nothing and is not reported as damage.
TEST_F(StateStoreTest, G8_AnUpgradeThatCannotBeWrittenLeavesTheDatabaseAsItWas) {
  const std::string db = use_format2_fixture();
  {
    RecordWriteLock lock(db);
    ASSERT_TRUE(lock.held()) << lock.error();
    auto refused = StateStore::open(state_dir_);
    ASSERT_FALSE(refused.ok());
    const std::string why = refused.error().message();
    EXPECT_NE(why.find("the database is unchanged"), std::string::npos) << why;
    EXPECT_EQ(why.find("damaged"), std::string::npos) << why;
  }
  EXPECT_EQ(sqlite3_cli(db, "PRAGMA user_version"), "2\n");
  EXPECT_EQ(digest_indexes(db), "3\n");
  auto store = open();  // the lock is gone: the upgrade goes through
  ASSERT_TRUE(store);
  EXPECT_EQ(sqlite3_cli(db, "PRAGMA user_version"), "3\n");
}

TEST_F(StateStoreTest, G8_AStateDirOfTheEarlierFormatIsImportedOnceAndSetAside) {
  fs::create_directories(state_dir_);
  fs::copy(STATE_V1_FIXTURE, state_dir_, fs::copy_options::recursive);
  {
    auto store = open();
    ASSERT_TRUE(store);
    std::optional<StoredState> record = record_of(*store);
    ASSERT_TRUE(record);
    const StoredState& st = *record;
    EXPECT_EQ(st.pin_dir, "/sys/fs/bpf/policyd-fixture-state-v1");
    EXPECT_EQ(st.generation, 2u);
    ASSERT_EQ(st.history.size(), 2u);
    EXPECT_EQ(st.history[0].request_id, "fixture-req-b");
    EXPECT_EQ(st.history[1].request_id, "fixture-req-a");
    // Generation 2 changed acl slot 5 (from generation 1's contents) and added a ports slot.
    ASSERT_EQ(st.history[0].slots.size(), 2u);
    EXPECT_EQ(st.slots.size(), 2u);
    for (const StoredSlot& s : st.slots) EXPECT_TRUE(store->get_contents(s.contents).ok());
    ASSERT_EQ(st.drained.size(), 1u);
    EXPECT_EQ(st.drained[0].field, "hits");
    EXPECT_EQ(st.drained[0].total, 42u);
  }
  EXPECT_FALSE(fs::exists(state_dir_ + "/state"));
  EXPECT_TRUE(fs::exists(state_dir_ + "/v1-imported/state"));
  EXPECT_TRUE(fs::exists(state_dir_ + "/v1-imported/contents"));
  // A second start reads the database; the files set aside are not imported again.
  auto store = open();
  ASSERT_TRUE(store);
  auto loaded = store->load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_EQ((*loaded)->generation, 2u);
}

TEST_F(StateStoreTest, G8_ADamagedFileOfTheEarlierFormatIsRefusedAndNothingIsCreated) {
  fs::create_directories(state_dir_);
  fs::copy(STATE_V1_FIXTURE, state_dir_, fs::copy_options::recursive);
  fs::resize_file(state_dir_ + "/state", fs::file_size(state_dir_ + "/state") - 3);
  auto store = StateStore::open(state_dir_);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.error().message().find(state_dir_ + "/state"), std::string::npos);
  EXPECT_NE(store.error().message().find("truncated"), std::string::npos)
      << store.error().message();
  EXPECT_FALSE(fs::exists(state_dir_ + "/state.db"));
  EXPECT_FALSE(fs::exists(state_dir_ + "/state.db.new")) << "the half-made database stayed";
  EXPECT_TRUE(fs::exists(state_dir_ + "/state")) << "the damaged file was moved";
}

TEST_F(StateStoreTest, G8_OperatorsReadTheRecordWithTheSqlite3CliWhilePolicydRuns) {
  auto store = open();
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->write(generation(1, kSlot0, 1, nullptr, 77)).ok());
  const std::string db = state_dir_ + "/state.db";
  EXPECT_EQ(sqlite3_cli(db, "SELECT id, label, request_id FROM generations"), "1|g1|req-1\n");
  EXPECT_EQ(sqlite3_cli(db, "SELECT map, hex(slot), inner_id FROM slots"), "acl|00000000|77\n");
  EXPECT_EQ(sqlite3_cli(db, "SELECT count FROM contents"), "2\n");
  EXPECT_EQ(sqlite3_cli(db, "PRAGMA journal_mode"), "wal\n");
}

}  // namespace
}  // namespace policyd::core
