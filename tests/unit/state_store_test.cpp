// StateStore: round trip of the record and contents files, detection of every kind of damage,
// the directory lock, and garbage collection of contents no generation refers to.
#include "core/state_store.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

namespace policyd::core {
namespace {

namespace fs = std::filesystem;

class StateStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/policyd-state-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<StateStore> open() {
    auto s = StateStore::open(dir_ + "/state");
    EXPECT_TRUE(s.ok()) << s.error().message();
    return s.ok() ? std::move(s).value() : nullptr;
  }

  static std::vector<Entry> entries(uint8_t tag) {
    return {Entry{{1, 2, 3, 4}, {tag, 0, 0, 0, 0, 0, 0, 0}},
            Entry{{5, 6, 7, 8}, {tag, 1, 0, 0, 0, 0, 0, 0}}};
  }

  // A state whose current generation holds `digest` in acl slot 0.
  static StoredState state_with(uint64_t id, const Digest& digest) {
    StoredState st;
    st.generation = id;
    StoredGeneration g;
    g.id = id;
    g.label = "g" + std::to_string(id);
    g.slots.push_back({"acl", {0, 0, 0, 0}, digest, 42});
    g.content_hash = generation_hash(g.slots);
    st.history.push_back(g);
    st.drained.push_back({"acl", {0, 0, 0, 0}, "hits", 7});
    st.drained_inner_ids = {9, 10};
    return st;
  }

  static void flip_byte(const std::string& path, size_t from_end) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-static_cast<std::streamoff>(from_end), std::ios::end);
    char c = 0;
    f.read(&c, 1);
    f.seekp(-static_cast<std::streamoff>(from_end), std::ios::end);
    c ^= 0x01;
    f.write(&c, 1);
  }

  std::string dir_;
};

TEST_F(StateStoreTest, G8_NoRecordOnFirstStart) {
  auto store = open();
  ASSERT_NE(store, nullptr);
  auto loaded = store->load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().message();
  EXPECT_FALSE(loaded->has_value());
}

TEST_F(StateStoreTest, G8_RecordAndContentsRoundTrip) {
  auto store = open();
  ASSERT_NE(store, nullptr);
  auto digest = store->put_contents(entries(7), 4, 8);
  ASSERT_TRUE(digest.ok()) << digest.error().message();
  ASSERT_TRUE(store->sync_contents().ok());
  ASSERT_TRUE(store->write(state_with(3, *digest)).ok());

  auto loaded = store->load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().message();
  ASSERT_TRUE(loaded->has_value());
  const StoredState& st = **loaded;
  EXPECT_EQ(st.generation, 3u);
  ASSERT_EQ(st.history.size(), 1u);
  EXPECT_EQ(st.history[0].label, "g3");
  ASSERT_EQ(st.history[0].slots.size(), 1u);
  EXPECT_EQ(st.history[0].slots[0].inner_id, 42u);
  EXPECT_EQ(st.history[0].slots[0].contents, *digest);
  ASSERT_EQ(st.drained.size(), 1u);
  EXPECT_EQ(st.drained[0].total, 7u);
  EXPECT_EQ(st.drained_inner_ids, (std::vector<uint32_t>{9, 10}));

  auto back = store->get_contents(*digest);
  ASSERT_TRUE(back.ok()) << back.error().message();
  ASSERT_EQ(back->size(), 2u);
  EXPECT_EQ((*back)[1].value, entries(7)[1].value);
  // Content addressed: the same entries give the same file.
  auto again = store->put_contents(entries(7), 4, 8);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *digest);
}

TEST_F(StateStoreTest, G8_EveryKindOfDamageIsReportedWithTheWayToRecover) {
  auto store = open();
  ASSERT_NE(store, nullptr);
  auto digest = store->put_contents(entries(1), 4, 8);
  ASSERT_TRUE(digest.ok());
  ASSERT_TRUE(store->write(state_with(1, *digest)).ok());
  const std::string path = store->manifest_path();
  const auto size = fs::file_size(path);
  std::string good;
  {
    std::ifstream in(path, std::ios::binary);
    good.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto restore = [&] {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << good;
  };
  auto expect_corrupt = [&](const std::string& why) {
    auto r = store->load();
    ASSERT_FALSE(r.ok()) << why << ": a damaged record was accepted";
    EXPECT_NE(r.error().context.find("corrupt"), std::string::npos) << r.error().context;
    EXPECT_NE(r.error().context.find(why), std::string::npos) << r.error().context;
    EXPECT_NE(r.error().context.find("To recover"), std::string::npos) << r.error().context;
    restore();
  };

  fs::resize_file(path, size - 1);
  expect_corrupt("truncated");
  fs::resize_file(path, 10);
  expect_corrupt("truncated");
  flip_byte(path, 1);
  expect_corrupt("checksum");
  flip_byte(path, size);  // first byte of the magic
  expect_corrupt("bad magic");

  const std::string contents = dir_ + "/state/contents/" + digest_hex(*digest);
  flip_byte(contents, 2);
  auto r = store->get_contents(*digest);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().context.find("checksum"), std::string::npos) << r.error().context;
  fs::remove(contents);
  r = store->get_contents(*digest);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().context.find(contents), std::string::npos) << r.error().context;
}

TEST_F(StateStoreTest, G8_ASecondDaemonOnTheSameDirectoryIsRefused) {
  auto first = open();
  ASSERT_NE(first, nullptr);
  auto second = StateStore::open(dir_ + "/state");
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.error().context.find("in use by another policyd"), std::string::npos);
  first.reset();
  EXPECT_TRUE(StateStore::open(dir_ + "/state").ok()) << "the lock outlived its holder";
}

TEST_F(StateStoreTest, G6_G8_ContentsNoGenerationNamesAreRemovedButPendingOnesStay) {
  auto store = open();
  ASSERT_NE(store, nullptr);
  auto a = store->put_contents(entries(1), 4, 8);
  auto b = store->put_contents(entries(2), 4, 8);
  ASSERT_TRUE(a.ok() && b.ok());
  StoredState first = state_with(1, *a);
  ASSERT_TRUE(store->write(first).ok());
  store->collect_garbage(first);
  // b was put for a generation that is not recorded yet: held, it survives the collection.
  const std::string dir = dir_ + "/state/contents/";
  EXPECT_TRUE(fs::exists(dir + digest_hex(*b)));
  StoredState second = state_with(2, *b);
  ASSERT_TRUE(store->write(second).ok());
  store->collect_garbage(second);
  EXPECT_TRUE(fs::exists(dir + digest_hex(*a))) << "a is still held by its put";
  store->release({*a});
  store->collect_garbage(second);
  EXPECT_FALSE(fs::exists(dir + digest_hex(*a))) << "a is neither recorded nor held";
  EXPECT_TRUE(fs::exists(dir + digest_hex(*b)));
}

// A push whose contents a recorded generation already has finds the file on disk; a later
// record that drops that generation must not delete the file while the push is in flight.
TEST_F(StateStoreTest, G8_AFileFoundOnDiskIsHeldForThePushThatFoundIt) {
  auto store = open();
  ASSERT_NE(store, nullptr);
  auto a = store->put_contents(entries(1), 4, 8);
  ASSERT_TRUE(a.ok());
  StoredState first = state_with(1, *a);
  ASSERT_TRUE(store->write(first).ok());
  store->release({*a});                                // the push that wrote it was acked
  auto again = store->put_contents(entries(1), 4, 8);  // a new push, same contents
  ASSERT_TRUE(again.ok());
  // Another commit's record still names a: collecting with it must not end the hold.
  ASSERT_TRUE(store->write(first).ok());
  store->collect_garbage(first);
  auto b = store->put_contents(entries(2), 4, 8);
  ASSERT_TRUE(b.ok());
  StoredState without_a = state_with(2, *b);
  ASSERT_TRUE(store->write(without_a).ok());
  store->collect_garbage(without_a);
  const std::string dir = dir_ + "/state/contents/";
  EXPECT_TRUE(fs::exists(dir + digest_hex(*a))) << "deleted under the push that needs it";
}

// Writing a record never deletes contents: only collect_garbage() does, with the record that
// stays (a commit that fails puts the previous record back).
TEST_F(StateStoreTest, G8_WritingARecordDeletesNothing) {
  auto store = open();
  ASSERT_NE(store, nullptr);
  auto a = store->put_contents(entries(1), 4, 8);
  auto b = store->put_contents(entries(2), 4, 8);
  ASSERT_TRUE(a.ok() && b.ok());
  store->release({*a, *b});
  ASSERT_TRUE(store->write(state_with(1, *a)).ok());
  ASSERT_TRUE(store->write(state_with(2, *b)).ok());
  const std::string dir = dir_ + "/state/contents/";
  EXPECT_TRUE(fs::exists(dir + digest_hex(*a)));
  EXPECT_TRUE(fs::exists(dir + digest_hex(*b)));
}

TEST_F(StateStoreTest, G6_G8_TempFilesACrashLeftAreRemovedAtOpen) {
  {
    auto store = open();
    ASSERT_NE(store, nullptr);
  }
  const std::string temp = dir_ + "/state/contents/abc.tmp.1.2";
  std::ofstream(temp) << "partial";
  auto store = open();
  ASSERT_NE(store, nullptr);
  EXPECT_FALSE(fs::exists(temp));
}

}  // namespace
}  // namespace policyd::core
