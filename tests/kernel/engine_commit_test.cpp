// core::Engine's commit path against the running kernel: G1 (an invalid generation touches
// nothing), G2 (a kernel failure half way is undone), G3 (one write round per batch, group
// commit), G6 (no map or fd leaks over 1,000 generations), adoption of pinned maps, and the
// start-up probe. Each test mounts its own bpffs; maps carry test-unique names so that the
// kernel's global map list can be filtered down to this test's maps.
#include <dirent.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "core/engine.h"
#include "kernel/map.h"
#include "kernel/probe.h"
#include "support/bpffs.h"
#include "util/hex.h"

namespace policyd::core {

// Names the barrier mode in gtest's messages (found by ADL, so not in the unnamed namespace).
void PrintTo(BarrierMode mode, std::ostream* os);
void PrintTo(BarrierMode mode, std::ostream* os) { *os << to_string(mode); }

namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::Not;

// The value layout of every inner map here: the action a program would apply, and a counter.
struct Value {
  uint32_t action = 0;
  uint32_t pad = 0;
  uint64_t hits = 0;
};
static_assert(sizeof(Value) == 16);

Bytes u32_bytes(uint32_t v) { return array_slot(v); }

std::string hex(const Bytes& bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s;
  for (uint8_t b : bytes) {
    s.push_back(kDigits[b >> 4]);
    s.push_back(kDigits[b & 0xf]);
  }
  return s;
}

Bytes value_bytes(uint32_t action, uint64_t hits = 0) {
  Value v{action, 0, hits};
  Bytes b(sizeof(v));
  std::memcpy(b.data(), &v, sizeof(v));
  return b;
}

InnerTemplate hash_inner(uint32_t value_size = sizeof(Value)) {
  InnerTemplate t;
  t.type = BPF_MAP_TYPE_HASH;
  t.key_size = 4;
  t.value_size = value_size;
  t.max_entries = 16;
  t.counters = {CounterField{"hits", 8, 8}};
  return t;
}

OuterMapConfig array_outer(const std::string& name, uint32_t slots) {
  OuterMapConfig m;
  m.name = name;
  m.kind = OuterKind::kArray;
  m.slots = slots;
  m.slot_key_size = 4;
  m.inner = hash_inner();
  return m;
}

OuterMapConfig hash_outer(const std::string& name, uint32_t slots) {
  OuterMapConfig m = array_outer(name, slots);
  m.kind = OuterKind::kHash;
  return m;
}

// A replacement of `slot` with `n` entries whose action is `action`.
SlotChange replace(const std::string& map, const Bytes& slot, uint32_t action, uint32_t n = 2) {
  SlotChange c{map, slot, false, {}};
  for (uint32_t k = 0; k < n; ++k) c.entries.push_back({u32_bytes(k), value_bytes(action + k)});
  return c;
}

SlotChange remove(const std::string& map, const Bytes& slot) { return {map, slot, true, {}}; }

using SlotRow = std::tuple<Bytes, uint32_t, uint64_t>;  // slot, inner map id, installed_by

std::vector<SlotRow> slot_rows(const Engine& engine, const std::string& map) {
  Result<std::vector<SlotInfo>> slots = engine.slots(map);
  EXPECT_TRUE(slots.ok()) << slots.error().message();
  std::vector<SlotRow> rows;
  if (!slots.ok()) return rows;
  for (const SlotInfo& s : *slots) rows.emplace_back(s.slot, s.map_id, s.installed_by);
  return rows;
}

// slot -> inner map id, as the engine believes the data plane holds it.
std::map<Bytes, uint32_t> slot_ids(const Engine& engine, const std::string& map) {
  std::map<Bytes, uint32_t> out;
  for (auto& [slot, id, by] : slot_rows(engine, map)) out[slot] = id;
  return out;
}

// slot -> inner map id, as the kernel holds it in the pinned outer map (a syscall lookup on an
// outer map returns the inner map's id).
std::map<Bytes, uint32_t> pinned_slots(const std::string& path) {
  std::map<Bytes, uint32_t> out;
  Result<kernel::UniqueFd> fd = kernel::open_pinned(path);
  EXPECT_TRUE(fd.ok()) << fd.error().message();
  if (!fd.ok()) return out;
  Result<kernel::MapInfo> info = kernel::map_info(fd->get());
  EXPECT_TRUE(info.ok()) << info.error().message();
  if (!info.ok()) return out;
  Status st = kernel::dump(fd->get(), *info, [&](const uint8_t* key, const uint8_t* value) {
    uint32_t id = 0;
    std::memcpy(&id, value, sizeof(id));
    out[Bytes(key, key + info->key_size)] = id;
  });
  EXPECT_TRUE(st.ok()) << st.error().message();
  return out;
}

uint32_t pinned_id(const std::string& path) {
  Result<kernel::UniqueFd> fd = kernel::open_pinned(path);
  EXPECT_TRUE(fd.ok()) << fd.error().message();
  if (!fd.ok()) return 0;
  Result<kernel::MapInfo> info = kernel::map_info(fd->get());
  EXPECT_TRUE(info.ok()) << info.error().message();
  return info.ok() ? info->id : 0;
}

// The name of map `id`, or nullopt when it is gone (freed between listing and opening).
std::optional<std::string> map_name(uint32_t id) {
  Result<kernel::UniqueFd> fd = kernel::map_fd_by_id(id);
  if (!fd.ok()) return std::nullopt;
  Result<kernel::MapInfo> info = kernel::map_info(fd->get());
  if (!info.ok()) return std::nullopt;
  return info->name;
}

// Ids of every live kernel map whose name is in `names` (inner maps carry their outer map's
// name), whoever created it.
std::set<uint32_t> live_maps_named(const std::set<std::string>& names) {
  std::set<uint32_t> out;
  Result<std::vector<uint32_t>> ids = kernel::list_map_ids();
  EXPECT_TRUE(ids.ok()) << ids.error().message();
  if (!ids.ok()) return out;
  for (uint32_t id : *ids) {
    std::optional<std::string> name = map_name(id);
    if (name && names.count(*name)) out.insert(id);
  }
  return out;
}

std::set<uint32_t> owned_maps_named(const Engine& engine, const std::set<std::string>& names) {
  std::set<uint32_t> out;
  for (uint32_t id : engine.owned_map_ids()) {
    std::optional<std::string> name = map_name(id);
    if (name && names.count(*name)) out.insert(id);
  }
  return out;
}

bool map_alive(uint32_t id) {
  Result<kernel::UniqueFd> fd = kernel::map_fd_by_id(id);
  return fd.ok();
}

// Polls `done` for up to 5 s: the kernel frees maps after a grace period and a workqueue.
template <typename F>
bool eventually(F&& done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    if (done()) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

size_t open_fds() {
  size_t n = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n - 1;  // the directory's own fd
}

std::string describe(const std::set<uint32_t>& ids) {
  std::string s;
  for (uint32_t id : ids) {
    std::optional<std::string> name = map_name(id);
    s += std::to_string(id) + "(" + name.value_or("gone") + ") ";
  }
  return s;
}

class EngineTest : public test::BpffsTest {
 protected:
  [[nodiscard]] virtual BarrierMode mode() const { return BarrierMode::kBatch; }

  EngineConfig config(std::vector<OuterMapConfig> maps) const {
    EngineConfig c;
    c.pin_dir = bpffs_->join("policyd");
    c.maps = std::move(maps);
    c.barrier = mode();
    return c;
  }

  std::string pin(const std::string& map) const { return bpffs_->join("policyd/" + map); }
};

class EngineCommitTest : public EngineTest, public ::testing::WithParamInterface<BarrierMode> {
 protected:
  [[nodiscard]] BarrierMode mode() const override { return GetParam(); }
};

std::string mode_name(const ::testing::TestParamInfo<BarrierMode>& info) {
  return info.param == BarrierMode::kBatch ? "Batch" : "Concurrent";
}

INSTANTIATE_TEST_SUITE_P(Strategies, EngineCommitTest,
                         ::testing::Values(BarrierMode::kBatch, BarrierMode::kConcurrent),
                         mode_name);

#define ASSERT_OK(expr)                                             \
  do {                                                              \
    const auto& policyd_ok_ = (expr);                               \
    ASSERT_TRUE(policyd_ok_.ok()) << policyd_ok_.error().message(); \
  } while (0)

// --- G1 ------------------------------------------------------------------------------------

TEST_P(EngineCommitTest, G1_InvalidGenerationCreatesNoMapAndChangesNothing) {
  const std::set<std::string> names = {"g1arr", "g1hash"};
  auto opened = Engine::open(config({array_outer("g1arr", 8), hash_outer("g1hash", 8)}));
  ASSERT_OK(opened);
  Engine& engine = **opened;
  ASSERT_EQ(engine.strategy(),
            mode() == BarrierMode::kBatch ? Strategy::kBatch : Strategy::kConcurrent);

  Generation gen1;
  gen1.changes = {replace("g1arr", u32_bytes(0), 10), replace("g1arr", u32_bytes(1), 20),
                  replace("g1hash", Bytes{0xaa, 0, 0, 0}, 30)};
  ASSERT_OK(engine.push(gen1));

  const std::set<uint32_t> live_before = live_maps_named(names);
  const auto arr_before = slot_rows(engine, "g1arr");
  const auto hash_before = slot_rows(engine, "g1hash");
  const auto pinned_arr_before = pinned_slots(pin("g1arr"));
  const auto pinned_hash_before = pinned_slots(pin("g1hash"));
  const EngineStats stats_before = engine.stats();
  ASSERT_EQ(live_before.size(), 2u + 3u);  // two outer maps, three inner maps
  ASSERT_EQ(pinned_arr_before.size(), 2u);

  // Each one is valid up to its last change, so a validator that builds as it goes would
  // already have created inner maps for the earlier changes.
  struct Case {
    const char* what;
    Generation gen;
    std::vector<std::string> message;
  };
  std::vector<Case> cases;
  {
    Generation g;
    g.changes = {replace("g1arr", u32_bytes(0), 1), replace("g1hash", Bytes{1, 0, 0, 0}, 1),
                 replace("nope", u32_bytes(0), 1)};
    cases.push_back({"unknown map", g, {"changes[2]", "unknown map \"nope\""}});
  }
  {
    Generation g;
    g.changes = {replace("g1arr", u32_bytes(0), 1), replace("g1arr", u32_bytes(8), 1)};
    cases.push_back({"slot out of range", g, {"changes[1]", "slot 8 is out of range"}});
  }
  {
    Generation g;
    SlotChange bad = replace("g1hash", Bytes{0xaa, 0, 0, 0}, 1, 3);
    bad.entries[2].value.resize(8);
    g.changes = {replace("g1arr", u32_bytes(1), 1), replace("g1arr", u32_bytes(2), 1), bad};
    cases.push_back(
        {"bad value size",
         g,
         {"changes[2]", "map \"g1hash\" slot 0xaa000000", "entry 2", "value is 8 bytes"}});
  }
  {
    Generation g;
    SlotChange dup = replace("g1arr", u32_bytes(3), 1, 3);
    dup.entries[2].key = dup.entries[0].key;
    g.changes = {replace("g1arr", u32_bytes(1), 1), dup};
    cases.push_back(
        {"duplicate key", g, {"changes[1]", "map \"g1arr\" slot 3", "entry 2", "duplicate key"}});
  }
  {
    Generation g;
    g.changes = {replace("g1arr", u32_bytes(1), 1), replace("g1arr", u32_bytes(5), 1, 17)};
    cases.push_back({"too many entries", g, {"changes[1]", "map \"g1arr\" slot 5", "17 entries"}});
  }
  {
    Generation g;
    g.changes = {replace("g1arr", u32_bytes(4), 1), remove("g1arr", u32_bytes(4))};
    cases.push_back({"same slot twice", g, {"changes[1]", "already changed by changes[0]"}});
  }

  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    Result<CommitReport> pushed = engine.push(c.gen);
    ASSERT_FALSE(pushed.ok());
    EXPECT_EQ(pushed.error().code, ErrorCode::kInvalidArgument) << pushed.error().message();
    for (const std::string& m : c.message) EXPECT_THAT(pushed.error().message(), HasSubstr(m));
    Result<BuiltGeneration> built = engine.build(c.gen);
    ASSERT_FALSE(built.ok());
    EXPECT_EQ(built.error().code, ErrorCode::kInvalidArgument);

    // No map was created (the engine holds no fd, so a created map would still be listed
    // only if leaked; either way the set must not have grown or changed).
    EXPECT_EQ(live_maps_named(names), live_before) << describe(live_maps_named(names));
    EXPECT_EQ(slot_rows(engine, "g1arr"), arr_before);
    EXPECT_EQ(slot_rows(engine, "g1hash"), hash_before);
    EXPECT_EQ(pinned_slots(pin("g1arr")), pinned_arr_before);
    EXPECT_EQ(pinned_slots(pin("g1hash")), pinned_hash_before);
    EXPECT_EQ(engine.current_generation(), 1u);
    EXPECT_EQ(engine.stats().writer.rounds, stats_before.writer.rounds);
    EXPECT_EQ(engine.stats().writer.waiting_calls, stats_before.writer.waiting_calls);
    EXPECT_EQ(engine.pending_drains(), 0u);
  }
}

// --- G2 ------------------------------------------------------------------------------------

TEST_P(EngineCommitTest, G2_HashOuterOverflowHalfWayIsUndone) {
  const std::set<std::string> names = {"g2full"};
  auto opened = Engine::open(config({hash_outer("g2full", 4)}));
  ASSERT_OK(opened);
  Engine& engine = **opened;
  auto key = [](uint32_t k) { return u32_bytes(k); };

  Generation gen1;
  gen1.changes = {replace("g2full", key(1), 10), replace("g2full", key(2), 20),
                  replace("g2full", key(3), 30)};
  ASSERT_OK(engine.push(gen1));
  ASSERT_OK(engine.drain());

  const auto pinned_before = pinned_slots(pin("g2full"));
  const auto rows_before = slot_rows(engine, "g2full");
  const uint64_t current_before = engine.current_generation();
  const std::set<uint32_t> live_before = live_maps_named(names);
  ASSERT_EQ(pinned_before.size(), 3u);
  ASSERT_EQ(live_before.size(), 4u);
  std::set<uint32_t> old_ids;
  for (auto& [slot, id] : pinned_before) old_ids.insert(id);

  // Replaces the three slots and adds two: 5 > max_entries 4, so the kernel refuses one of
  // the new keys (E2BIG) after it applied some of the other writes.
  Generation gen2;
  gen2.changes = {replace("g2full", key(1), 11), replace("g2full", key(2), 21),
                  replace("g2full", key(3), 31), replace("g2full", key(4), 41),
                  replace("g2full", key(5), 51)};
  Result<CommitReport> failed = engine.push(gen2);
  ASSERT_FALSE(failed.ok());
  const Error& e = failed.error();
  EXPECT_EQ(e.code, ErrorCode::kResourceExhausted) << e.message();
  EXPECT_EQ(e.sys_errno, E2BIG) << e.message();
  EXPECT_THAT(e.message(), HasSubstr("commit generation 2"));
  EXPECT_THAT(e.message(), AnyOf(HasSubstr("map \"g2full\" slot 0x04000000"),
                                 HasSubstr("map \"g2full\" slot 0x05000000")));
  EXPECT_THAT(e.message(), HasSubstr("undone"));
  EXPECT_THAT(e.message(), HasSubstr("generation 1"));

  EXPECT_EQ(pinned_slots(pin("g2full")), pinned_before);
  EXPECT_EQ(slot_rows(engine, "g2full"), rows_before);
  EXPECT_EQ(engine.current_generation(), current_before);
  EXPECT_EQ(engine.stats().failed_commits, 1u);

  // Whatever was live for a moment is drained; none of it is an old map.
  Result<std::vector<DrainRecord>> drained = engine.drain();
  ASSERT_OK(drained);
  for (const DrainRecord& r : *drained) {
    EXPECT_EQ(old_ids.count(r.map_id), 0u) << "an old inner map was drained: " << r.map_id;
  }
  EXPECT_EQ(engine.pending_drains(), 0u);
  EXPECT_TRUE(eventually([&] { return live_maps_named(names) == live_before; }))
      << "alive: " << describe(live_maps_named(names)) << "; expected: " << describe(live_before);

  // The engine is still usable and its view was right.
  Generation gen3;
  gen3.changes = {replace("g2full", key(2), 22), replace("g2full", key(4), 42)};
  Result<CommitReport> ok = engine.push(gen3);
  ASSERT_OK(ok);
  EXPECT_EQ(ok->first_generation, 2u);
  const auto pinned_after = pinned_slots(pin("g2full"));
  EXPECT_EQ(pinned_after, slot_ids(engine, "g2full"));
  ASSERT_EQ(pinned_after.size(), 4u);
  EXPECT_EQ(pinned_after.at(key(1)), pinned_before.at(key(1)));
  EXPECT_EQ(pinned_after.at(key(3)), pinned_before.at(key(3)));
  EXPECT_NE(pinned_after.at(key(2)), pinned_before.at(key(2)));
  Result<std::vector<DrainRecord>> drained3 = engine.drain();
  ASSERT_OK(drained3);
  ASSERT_EQ(drained3->size(), 1u);
  EXPECT_EQ((*drained3)[0].map_id, pinned_before.at(key(2)));
}

TEST_P(EngineCommitTest, G2_FailureInSecondOuterMapUndoesTheFirst) {
  const std::set<std::string> names = {"g2first", "g2second"};
  auto opened = Engine::open(config({array_outer("g2first", 8), hash_outer("g2second", 2)}));
  ASSERT_OK(opened);
  Engine& engine = **opened;

  Generation gen1;
  gen1.changes = {replace("g2first", u32_bytes(0), 10), replace("g2first", u32_bytes(1), 20),
                  replace("g2second", u32_bytes(1), 30), replace("g2second", u32_bytes(2), 40)};
  ASSERT_OK(engine.push(gen1));

  const auto first_before = pinned_slots(pin("g2first"));
  const auto second_before = pinned_slots(pin("g2second"));
  const auto first_rows = slot_rows(engine, "g2first");
  const auto second_rows = slot_rows(engine, "g2second");
  const std::set<uint32_t> live_before = live_maps_named(names);
  ASSERT_EQ(first_before.size(), 2u);
  ASSERT_EQ(second_before.size(), 2u);

  // g2first: replace two slots and fill an empty one (all succeed); g2second is full, so its
  // new key fails. The first map's writes must be undone, including the new slot 2.
  Generation gen2;
  gen2.changes = {replace("g2first", u32_bytes(0), 11), replace("g2first", u32_bytes(1), 21),
                  replace("g2first", u32_bytes(2), 51), replace("g2second", u32_bytes(1), 31),
                  replace("g2second", u32_bytes(3), 61)};
  Result<CommitReport> failed = engine.push(gen2);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().code, ErrorCode::kResourceExhausted) << failed.error().message();
  EXPECT_THAT(failed.error().message(), HasSubstr("map \"g2second\" slot 0x03000000"));
  EXPECT_THAT(failed.error().message(), HasSubstr("undone"));

  EXPECT_EQ(pinned_slots(pin("g2first")), first_before);
  EXPECT_EQ(pinned_slots(pin("g2second")), second_before);
  EXPECT_EQ(slot_rows(engine, "g2first"), first_rows);
  EXPECT_EQ(slot_rows(engine, "g2second"), second_rows);
  EXPECT_EQ(engine.current_generation(), 1u);

  ASSERT_OK(engine.drain());
  EXPECT_TRUE(eventually([&] { return live_maps_named(names) == live_before; }))
      << "alive: " << describe(live_maps_named(names)) << "; expected: " << describe(live_before);

  Generation gen3;
  gen3.changes = {replace("g2first", u32_bytes(2), 52), replace("g2second", u32_bytes(2), 42)};
  ASSERT_OK(engine.push(gen3));
  EXPECT_EQ(pinned_slots(pin("g2first")), slot_ids(engine, "g2first"));
  EXPECT_EQ(pinned_slots(pin("g2second")), slot_ids(engine, "g2second"));
  EXPECT_EQ(pinned_slots(pin("g2first")).size(), 3u);
}

// --- G3 ------------------------------------------------------------------------------------

TEST_P(EngineCommitTest, G3_SixtyFourSlotsInFourOuterMapsTakeOneRound) {
  std::vector<OuterMapConfig> maps;
  for (int m = 0; m < 4; ++m) maps.push_back(array_outer("g3m" + std::to_string(m), 16));
  auto opened = Engine::open(config(maps));
  ASSERT_OK(opened);
  Engine& engine = **opened;

  auto generation = [&](uint32_t action) {
    Generation g;
    for (int m = 0; m < 4; ++m) {
      for (uint32_t s = 0; s < 16; ++s) {
        g.changes.push_back(replace("g3m" + std::to_string(m), u32_bytes(s), action + s));
      }
    }
    return g;
  };
  ASSERT_OK(engine.push(generation(100)));  // fills every slot
  const EngineStats before = engine.stats();

  Result<CommitReport> report = engine.push(generation(200));  // replaces every slot
  ASSERT_OK(report);
  EXPECT_EQ(report->rounds, 1u);
  EXPECT_EQ(report->slots_written, 64u);
  const EngineStats after = engine.stats();
  EXPECT_EQ(after.writer.rounds, before.writer.rounds + 1);
  EXPECT_EQ(after.writer.barriers, 0u);
  EXPECT_EQ(after.writer.last_round_depth, 1u);
  EXPECT_EQ(after.writer.last_round_calls, mode() == BarrierMode::kBatch ? 4u : 64u);
  EXPECT_EQ(after.writer.waiting_calls - before.writer.waiting_calls,
            mode() == BarrierMode::kBatch ? 4u : 64u);

  for (int m = 0; m < 4; ++m) {
    const std::string name = "g3m" + std::to_string(m);
    EXPECT_EQ(pinned_slots(pin(name)), slot_ids(engine, name));
    EXPECT_EQ(pinned_slots(pin(name)).size(), 16u);
  }
  Result<std::vector<DrainRecord>> drained = engine.drain();
  ASSERT_OK(drained);
  EXPECT_EQ(drained->size(), 64u);
}

TEST_P(EngineCommitTest, G3_GroupCommitOfEightGenerationsIsOneRoundAndLastWins) {
  const std::string map = "g3batch";
  auto opened = Engine::open(config({array_outer(map, 16)}));
  ASSERT_OK(opened);
  Engine& engine = **opened;

  Generation seed;
  for (uint32_t s : {0u, 1u, 2u, 3u, 12u, 14u})
    seed.changes.push_back(replace(map, u32_bytes(s), s));
  ASSERT_OK(engine.push(seed));
  ASSERT_OK(engine.drain());
  const uint64_t base = engine.current_generation();
  const auto seeded = slot_ids(engine, map);

  // Generation k replaces slots k%4 and (k+1)%4 and slot 10 (everyone overlaps there). Also:
  // slot 11 (empty) is filled by gen 2 then deleted by gen 5 -> stays empty, no write;
  // slot 12 is deleted by gen 6 then refilled by gen 7 -> gen 7's map;
  // slot 13 (empty) is deleted by gen 3 then filled by gen 4 -> gen 4's map;
  // slot 14 is replaced by gen 1 then deleted by gen 6 -> empty.
  std::vector<Generation> gens(8);
  for (uint32_t k = 0; k < 8; ++k) {
    gens[k].label = "batch-" + std::to_string(k);
    gens[k].changes = {replace(map, u32_bytes(k % 4), 1000 * k),
                       replace(map, u32_bytes((k + 1) % 4), 1000 * k + 100),
                       replace(map, u32_bytes(10), 1000 * k + 200)};
  }
  gens[2].changes.push_back(replace(map, u32_bytes(11), 2300));
  gens[5].changes.push_back(remove(map, u32_bytes(11)));
  gens[6].changes.push_back(remove(map, u32_bytes(12)));
  gens[7].changes.push_back(replace(map, u32_bytes(12), 7400));
  gens[3].changes.push_back(remove(map, u32_bytes(13)));
  gens[4].changes.push_back(replace(map, u32_bytes(13), 4500));
  gens[1].changes.push_back(replace(map, u32_bytes(14), 1600));
  gens[6].changes.push_back(remove(map, u32_bytes(14)));

  // Expected winner per slot: (generation index, inner map id or 0 for a delete).
  std::vector<BuiltGeneration> batch;
  std::map<Bytes, std::pair<uint32_t, uint32_t>> winner;
  std::set<uint32_t> built_ids;
  for (uint32_t k = 0; k < 8; ++k) {
    Result<BuiltGeneration> built = engine.build(gens[k]);
    ASSERT_OK(built);
    for (const BuiltChange& c : built->changes) {
      const uint32_t id = c.inner ? c.inner->id : 0;
      if (id) built_ids.insert(id);
      winner[c.slot] = {k, id};
    }
    batch.push_back(std::move(built).value());
  }
  std::set<uint32_t> winner_ids;
  for (auto& [slot, w] : winner) {
    if (w.second) winner_ids.insert(w.second);
  }
  std::set<uint32_t> superseded;
  std::set_difference(built_ids.begin(), built_ids.end(), winner_ids.begin(), winner_ids.end(),
                      std::inserter(superseded, superseded.end()));
  ASSERT_EQ(superseded.size(), 3u * 8 + 4 - winner_ids.size());

  const uint64_t rounds_before = engine.stats().writer.rounds;
  Result<CommitReport> report = engine.commit(std::move(batch));
  ASSERT_OK(report);
  EXPECT_EQ(report->rounds, 1u);
  EXPECT_EQ(engine.stats().writer.rounds, rounds_before + 1);
  EXPECT_EQ(engine.stats().writer.barriers, 0u);
  EXPECT_EQ(engine.stats().writer.last_round_depth, 1u);
  EXPECT_EQ(report->first_generation, base + 1);
  EXPECT_EQ(report->last_generation, base + 8);
  EXPECT_EQ(engine.current_generation(), base + 8);
  EXPECT_EQ(engine.stats().generations, 1u + 8u);
  // Slots 0-3, 10, 12, 13, 14 change; 11 was empty and ends empty.
  EXPECT_EQ(report->slots_written, 8u);

  std::map<Bytes, uint32_t> expected_ids;
  for (const SlotRow& row : slot_rows(engine, map)) {
    const auto& [slot, id, installed_by] = row;
    ASSERT_TRUE(winner.count(slot) || seeded.count(slot)) << hex(slot);
    if (!winner.count(slot)) continue;
    EXPECT_EQ(id, winner[slot].second) << "slot " << hex(slot);
    EXPECT_EQ(installed_by, base + 1 + winner[slot].first) << "slot " << hex(slot);
  }
  for (auto& [slot, w] : winner) {
    if (w.second) expected_ids[slot] = w.second;
  }
  EXPECT_EQ(pinned_slots(pin(map)), expected_ids);
  EXPECT_EQ(slot_ids(engine, map), expected_ids);

  // Superseded inner maps never reached the data plane: nothing drains them, the engine holds
  // none, and the kernel frees them.
  Result<std::vector<DrainRecord>> drained = engine.drain();
  ASSERT_OK(drained);
  std::set<uint32_t> drained_ids;
  for (const DrainRecord& r : *drained) {
    drained_ids.insert(r.map_id);
    EXPECT_GE(r.replaced_by, base + 1);
    EXPECT_LE(r.replaced_by, base + 8);
  }
  std::set<uint32_t> seeded_replaced;
  for (auto& [slot, id] : seeded) {
    if (winner.count(slot)) seeded_replaced.insert(id);
  }
  EXPECT_EQ(drained_ids, seeded_replaced);
  const std::vector<uint32_t> owned = engine.owned_map_ids();
  for (uint32_t id : superseded) {
    EXPECT_EQ(std::count(owned.begin(), owned.end(), id), 0) << id;
  }
  EXPECT_TRUE(
      eventually([&] { return std::none_of(superseded.begin(), superseded.end(), map_alive); }));
}

// --- G6 ------------------------------------------------------------------------------------

TEST_F(EngineTest, G6_ThousandGenerationsLeakNoMapAndNoFd) {
  const std::set<std::string> names = {"g6leak_a", "g6leak_b"};
  auto opened = Engine::open(config({array_outer("g6leak_a", 8), hash_outer("g6leak_b", 8)}));
  ASSERT_OK(opened);
  Engine& engine = **opened;
  const size_t fds_at_open = open_fds();

  size_t drained_maps = 0;
  for (uint32_t i = 0; i < 1000; ++i) {
    Generation g;
    g.label = std::to_string(i);
    g.changes = {replace("g6leak_a", u32_bytes(i % 8), i),
                 replace("g6leak_a", u32_bytes((i + 3) % 8), i + 1),
                 replace("g6leak_b", u32_bytes(i % 8), i + 2, 1)};
    if (i % 10 == 0) g.changes.push_back(remove("g6leak_b", u32_bytes((i + 5) % 8)));
    Result<CommitReport> r = engine.push(g);
    ASSERT_TRUE(r.ok()) << "generation " << i << ": " << r.error().message();
    Result<std::vector<DrainRecord>> d = engine.drain();
    ASSERT_TRUE(d.ok()) << "generation " << i << ": " << d.error().message();
    drained_maps += d->size();
  }
  EXPECT_EQ(engine.current_generation(), 1000u);
  EXPECT_EQ(engine.pending_drains(), 0u);
  EXPECT_GT(drained_maps, 2000u);

  const size_t live_slots =
      slot_rows(engine, "g6leak_a").size() + slot_rows(engine, "g6leak_b").size();
  EXPECT_EQ(pinned_slots(pin("g6leak_a")), slot_ids(engine, "g6leak_a"));
  EXPECT_EQ(pinned_slots(pin("g6leak_b")), slot_ids(engine, "g6leak_b"));
  // One fd per live inner map, nothing else.
  EXPECT_EQ(open_fds(), fds_at_open + live_slots);

  const std::set<uint32_t> owned = owned_maps_named(engine, names);
  EXPECT_EQ(owned.size(), 2u + live_slots);  // the outer maps and the live inner maps
  EXPECT_TRUE(eventually([&] { return live_maps_named(names) == owned; }))
      << "alive: " << describe(live_maps_named(names)) << "; owned: " << describe(owned);
}

// --- Adoption (G8, restart with maps pinned) -----------------------------------------------

TEST_P(EngineCommitTest, G8_ReopenAdoptsPinnedMapsWithoutTouchingTheDataPlane) {
  const std::vector<OuterMapConfig> maps = {array_outer("adopt_arr", 8),
                                            hash_outer("adopt_hash", 8)};
  std::map<Bytes, uint32_t> arr_ids, hash_ids, pinned_arr, pinned_hash;
  uint32_t arr_outer_id = 0, hash_outer_id = 0;
  {
    auto first = Engine::open(config(maps));
    ASSERT_OK(first);
    Generation g;
    g.changes = {replace("adopt_arr", u32_bytes(0), 10), replace("adopt_arr", u32_bytes(1), 20),
                 replace("adopt_arr", u32_bytes(5), 30),
                 replace("adopt_hash", Bytes{7, 0, 0, 0}, 40),
                 replace("adopt_hash", Bytes{8, 0, 0, 0}, 50)};
    ASSERT_OK((*first)->push(g));
    arr_ids = slot_ids(**first, "adopt_arr");
    hash_ids = slot_ids(**first, "adopt_hash");
    pinned_arr = pinned_slots(pin("adopt_arr"));
    pinned_hash = pinned_slots(pin("adopt_hash"));
    arr_outer_id = pinned_id(pin("adopt_arr"));
    hash_outer_id = pinned_id(pin("adopt_hash"));
  }  // the daemon exits; its maps stay pinned
  ASSERT_EQ(arr_ids.size(), 3u);
  ASSERT_EQ(hash_ids.size(), 2u);

  auto second = Engine::open(config(maps));
  ASSERT_OK(second);
  Engine& engine = **second;
  EXPECT_EQ(slot_ids(engine, "adopt_arr"), arr_ids);
  EXPECT_EQ(slot_ids(engine, "adopt_hash"), hash_ids);
  EXPECT_EQ(pinned_id(pin("adopt_arr")), arr_outer_id);
  EXPECT_EQ(pinned_id(pin("adopt_hash")), hash_outer_id);
  EXPECT_EQ(pinned_slots(pin("adopt_arr")), pinned_arr);
  EXPECT_EQ(pinned_slots(pin("adopt_hash")), pinned_hash);
  const EngineStats stats = engine.stats();
  EXPECT_EQ(stats.writer.rounds, 0u);
  EXPECT_EQ(stats.writer.barriers, 0u);
  EXPECT_EQ(stats.writer.waiting_calls, 0u);

  // A program counted hits in the adopted map of slot 1 (written directly here).
  const uint32_t adopted = arr_ids.at(u32_bytes(1));
  {
    Result<kernel::UniqueFd> fd = kernel::map_fd_by_id(adopted);
    ASSERT_OK(fd);
    const uint32_t k0 = 0, k1 = 1;
    const Bytes v0 = value_bytes(20, 40), v1 = value_bytes(21, 2);
    ASSERT_OK(kernel::update_elem(fd->get(), &k0, v0.data()));
    ASSERT_OK(kernel::update_elem(fd->get(), &k1, v1.data()));
  }
  Result<std::map<std::string, uint64_t>> live = engine.live_counters("adopt_arr", u32_bytes(1));
  ASSERT_OK(live);
  EXPECT_EQ(live->at("hits"), 42u);

  Generation g2;
  g2.changes = {replace("adopt_arr", u32_bytes(1), 21)};
  ASSERT_OK(engine.push(g2));
  Result<std::vector<DrainRecord>> drained = engine.drain();
  ASSERT_OK(drained);
  ASSERT_EQ(drained->size(), 1u);
  const DrainRecord& r = (*drained)[0];
  EXPECT_EQ(r.map, "adopt_arr");
  EXPECT_EQ(r.slot, u32_bytes(1));
  EXPECT_EQ(r.map_id, adopted);
  EXPECT_EQ(r.entry_count, 2u);
  EXPECT_TRUE(r.entries.empty());
  EXPECT_EQ(r.counters.at("hits"), 42u);
  EXPECT_EQ(engine.drained_totals().at(CounterKey{"adopt_arr", u32_bytes(1), "hits"}), 42u);
  // The adopted map left the data plane and policyd let go of it.
  EXPECT_TRUE(eventually([&] { return !map_alive(adopted); }));
  EXPECT_EQ(pinned_slots(pin("adopt_arr")).at(u32_bytes(0)), arr_ids.at(u32_bytes(0)));
}

class EngineAdoptMismatchTest : public EngineTest {
 protected:
  // Creates and pins "mm" (array, 8 slots, hash inners of 16-byte values) with slot 0 filled,
  // as a previous daemon run would have left it.
  void SetUp() override {
    EngineTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto engine = Engine::open(config({array_outer("mm", 8)}));
    ASSERT_OK(engine);
    Generation g;
    g.changes = {replace("mm", u32_bytes(0), 1)};
    ASSERT_OK((*engine)->push(g));
    id_before_ = pinned_id(pin("mm"));
    slots_before_ = pinned_slots(pin("mm"));
    ASSERT_EQ(slots_before_.size(), 1u);
  }

  void expect_refused(const OuterMapConfig& changed, const std::vector<std::string>& why) {
    Result<std::unique_ptr<Engine>> opened = Engine::open(config({changed}));
    ASSERT_FALSE(opened.ok()) << "a mismatching pinned map was adopted";
    EXPECT_EQ(opened.error().code, ErrorCode::kFailedPrecondition) << opened.error().message();
    EXPECT_THAT(opened.error().message(), HasSubstr(pin("mm"))) << "names the path";
    for (const std::string& w : why) EXPECT_THAT(opened.error().message(), HasSubstr(w));
    // The pinned map is left as it was, and still adoptable with the right config.
    EXPECT_EQ(pinned_id(pin("mm")), id_before_);
    EXPECT_EQ(pinned_slots(pin("mm")), slots_before_);
    auto again = Engine::open(config({array_outer("mm", 8)}));
    ASSERT_OK(again);
    EXPECT_EQ(slot_ids(**again, "mm"), slots_before_);
  }

  uint32_t id_before_ = 0;
  std::map<Bytes, uint32_t> slots_before_;
};

// add_maps() is all or nothing: a map that cannot be adopted (here "mm" with another slot count)
// undoes the maps the same call had made ("fresh": unpinned, unknown to the engine), leaves the
// pin it refused as it was, and a corrected call then succeeds (a reload is not stuck on a
// half-made map).
TEST_F(EngineAdoptMismatchTest, AddMapsThatFailsPartWayLeavesNothingHalfMade) {
  auto engine = Engine::open(config({array_outer("keep", 4)}));
  ASSERT_OK(engine);
  Status st = (*engine)->add_maps({array_outer("fresh", 4), array_outer("mm", 16)});
  ASSERT_FALSE(st.ok()) << "a mismatching pinned map was adopted";
  EXPECT_EQ(st.error().code, ErrorCode::kFailedPrecondition) << st.error().message();
  EXPECT_FALSE(std::filesystem::exists(pin("fresh"))) << "the half-made map is still pinned";
  Generation g;
  g.changes = {replace("fresh", u32_bytes(0), 1)};
  EXPECT_FALSE((*engine)->validate(g).ok()) << "the engine still knows the half-made map";
  EXPECT_EQ(pinned_id(pin("mm")), id_before_);
  EXPECT_EQ(pinned_slots(pin("mm")), slots_before_);

  ASSERT_OK((*engine)->add_maps({array_outer("fresh", 4), array_outer("mm", 8)}));
  EXPECT_TRUE(std::filesystem::exists(pin("fresh")));
  EXPECT_EQ(slot_ids(**engine, "mm"), slots_before_) << "adopted as it was";
  ASSERT_OK((*engine)->push(g));
}

TEST_F(EngineAdoptMismatchTest, G8_RefusesDifferentSlotCount) {
  expect_refused(array_outer("mm", 16), {"slots 8 -> 16"});
}

TEST_F(EngineAdoptMismatchTest, G8_RefusesDifferentOuterType) {
  expect_refused(hash_outer("mm", 8), {"type array_of_maps -> hash_of_maps"});
}

TEST_F(EngineAdoptMismatchTest, G8_RefusesInnerMapOfWrongValueSize) {
  OuterMapConfig changed = array_outer("mm", 8);
  changed.inner = hash_inner(24);
  expect_refused(changed, {"map \"mm\" slot 0", "inner.value_size 16 -> 24"});
}

// --- Full hash outer maps: deletes and inserts in one round ---------------------------------
// A HASH_OF_MAPS at max_entries only accepts a new key once a delete has freed an element.
// The writes of a round run in parallel (batch calls per operation, or single calls), so
// their order in the kernel is not the order policyd planned.

// Five tries on fresh maps: in one try the kernel may happen to order the calls well.
constexpr int kRaceTries = 5;

TEST_P(EngineCommitTest, SwappingKeysOfAFullHashOuterMapSucceeds) {
  auto opened = Engine::open(config({hash_outer("swapfull", 4)}));
  ASSERT_OK(opened);
  Engine& engine = **opened;
  Generation g1;
  for (uint32_t k = 1; k <= 4; ++k) g1.changes.push_back(replace("swapfull", u32_bytes(k), k));
  ASSERT_OK(engine.push(g1));

  // Each generation deletes one key and adds another: the map holds 4 slots before and after.
  uint32_t gone = 1, fresh = 5;
  for (int i = 0; i < 2 * kRaceTries; ++i) {
    SCOPED_TRACE("swap " + std::to_string(i) + ": delete " + std::to_string(gone) + ", add " +
                 std::to_string(fresh));
    Generation g;
    g.changes = {remove("swapfull", u32_bytes(gone)), replace("swapfull", u32_bytes(fresh), 100)};
    Result<CommitReport> r = engine.push(g);
    ASSERT_TRUE(r.ok()) << r.error().message();
    EXPECT_EQ(pinned_slots(pin("swapfull")), slot_ids(engine, "swapfull"));
    EXPECT_EQ(pinned_slots(pin("swapfull")).count(u32_bytes(fresh)), 1u);
    std::swap(gone, fresh);
  }
}

TEST_P(EngineCommitTest, G2_UndoRestoresAFullHashOuterMapThatLostAKey) {
  // Full map {1,2,3,4}; the generation deletes 4 and adds 5 and 6 (5 slots: E2BIG). When the
  // delete and the add of 5 were applied, undo must delete 5 and re-insert 4; if it re-inserts
  // first, the map is full and 4 is lost: the data plane holds neither generation (G2).
  for (int i = 0; i < kRaceTries; ++i) {
    SCOPED_TRACE("try " + std::to_string(i));
    const std::string dir = "try" + std::to_string(i);
    EngineConfig c = config({hash_outer("undofull", 4)});
    c.pin_dir = bpffs_->join(dir);
    auto opened = Engine::open(c);
    ASSERT_OK(opened);
    Engine& engine = **opened;
    Generation g1;
    for (uint32_t k = 1; k <= 4; ++k) g1.changes.push_back(replace("undofull", u32_bytes(k), k));
    ASSERT_OK(engine.push(g1));
    const auto before = pinned_slots(bpffs_->join(dir + "/undofull"));
    const auto rows = slot_rows(engine, "undofull");

    Generation g2;
    g2.changes = {remove("undofull", u32_bytes(4)), replace("undofull", u32_bytes(5), 5),
                  replace("undofull", u32_bytes(6), 6)};
    Result<CommitReport> r = engine.push(g2);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, ErrorCode::kResourceExhausted) << r.error().message();
    EXPECT_THAT(r.error().message(), HasSubstr("undone"));
    EXPECT_THAT(r.error().message(), Not(HasSubstr("undo failed")));
    ASSERT_EQ(pinned_slots(bpffs_->join(dir + "/undofull")), before);
    ASSERT_EQ(slot_rows(engine, "undofull"), rows);
  }
}

// --- Smaller contract issues ------------------------------------------------------------------

TEST_P(EngineCommitTest, G2_UndoneInnerMapsDrainAsNeverCommitted) {
  // A map a failed commit installed for a moment and then undid was never committed: its drain
  // record must not claim a generation id (model.h: installed_by 0 = "adopted or never
  // committed"); that id is handed to the next generation that does commit.
  auto opened = Engine::open(config({hash_outer("undoneby", 2)}));
  ASSERT_OK(opened);
  Engine& engine = **opened;
  Generation g1;
  g1.changes = {replace("undoneby", u32_bytes(1), 1), replace("undoneby", u32_bytes(2), 2)};
  ASSERT_OK(engine.push(g1));
  Generation g2;  // replaces 1 (applied), adds 3 (E2BIG)
  g2.changes = {replace("undoneby", u32_bytes(1), 11), replace("undoneby", u32_bytes(3), 31)};
  ASSERT_FALSE(engine.push(g2).ok());
  Result<std::vector<DrainRecord>> drained = engine.drain();
  ASSERT_OK(drained);
  ASSERT_FALSE(drained->empty()) << "the replacement of slot 1 was applied, then undone";
  for (const DrainRecord& r : *drained) {
    EXPECT_EQ(r.installed_by, 0u) << "map id " << r.map_id << " slot " << hex(r.slot);
  }
  Result<CommitReport> next = engine.push(g1);
  ASSERT_OK(next);
  EXPECT_EQ(next->first_generation, 2u);
}

TEST_P(EngineCommitTest, DeletingASlotAlreadyEmptyInTheKernelSucceeds) {
  // Someone removed slot 1 behind policyd's back (bpftool map delete pinned ...). A generation
  // that deletes it anyway reaches its target; the concurrent strategy already treats ENOENT
  // as deleted, the batch strategy must not fail the whole commit on it.
  auto opened = Engine::open(config({hash_outer("extdel", 4)}));
  ASSERT_OK(opened);
  Engine& engine = **opened;
  Generation g1;
  g1.changes = {replace("extdel", u32_bytes(1), 1), replace("extdel", u32_bytes(2), 2)};
  ASSERT_OK(engine.push(g1));
  {
    Result<kernel::UniqueFd> fd = kernel::open_pinned(pin("extdel"));
    ASSERT_OK(fd);
    const uint32_t key = 1;
    Result<bool> deleted = kernel::delete_elem(fd->get(), &key);
    ASSERT_OK(deleted);
    ASSERT_TRUE(*deleted);
  }
  Generation g2;
  g2.changes = {remove("extdel", u32_bytes(1)), remove("extdel", u32_bytes(2))};
  Result<CommitReport> r = engine.push(g2);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_TRUE(pinned_slots(pin("extdel")).empty());
  EXPECT_TRUE(slot_rows(engine, "extdel").empty());
}

// --- Probe ---------------------------------------------------------------------------------

// Kernel-aware by design: what the probe must find depends on the running kernel. From 6.8 an
// outer-map batch update waits for one grace period per call, so `auto` picks batch; before
// (5.19 - 6.7, Debian 12's 6.1 among them) it waits once per element, and `auto` must pick
// concurrent. tests/vm/run.sh runs this test on 6.1, where the second branch is taken.
TEST(KernelProbe, AutoPicksBatchFrom68AndConcurrentBefore) {
  POLICYD_REQUIRE_BPF();
  const kernel::KernelFacts release = kernel::kernel_release();
  ASSERT_GT(release.major, 0) << "cannot parse uname release " << release.release;
  const bool batch_per_call = release.major > 6 || (release.major == 6 && release.minor >= 8);
  const Strategy expected = batch_per_call ? Strategy::kBatch : Strategy::kConcurrent;

  Result<kernel::KernelFacts> facts = kernel::probe_kernel();
  ASSERT_OK(facts);
  EXPECT_EQ(facts->release, release.release);
  if (batch_per_call) {
    EXPECT_TRUE(facts->outer_batch_update) << facts->describe();
    EXPECT_FALSE(facts->batch_waits_per_element) << facts->describe();
  } else {
    EXPECT_TRUE(!facts->outer_batch_update || facts->batch_waits_per_element) << facts->describe();
  }
  EXPECT_EQ(choose_strategy(BarrierMode::kAuto, *facts), expected) << facts->describe();

  Result<test::PrivateBpffs> fs = test::PrivateBpffs::create();
  ASSERT_OK(fs);
  EngineConfig c;
  c.pin_dir = fs->join("policyd");
  c.maps = {array_outer("probe_auto", 4)};
  c.barrier = BarrierMode::kAuto;
  auto engine = Engine::open(c);
  ASSERT_OK(engine);
  EXPECT_EQ((*engine)->strategy(), expected) << (*engine)->kernel_facts().describe();
}

// pin_dir must be on bpffs. A directory on another filesystem (here the test's TMPDIR, never
// bpffs) fails at open with an error that names the path and says how to mount one, instead
// of a bare mkdir or pin errno.
TEST(EngineOpen, PinDirOffBpffsIsRefusedWithTheFix) {
  POLICYD_REQUIRE_BPF();
  char tmpl[] = "/tmp/policyd-not-bpffs-XXXXXX";
  const char* dir = ::mkdtemp(tmpl);
  ASSERT_NE(dir, nullptr) << std::strerror(errno);
  EngineConfig c;
  c.pin_dir = std::string(dir) + "/policyd";
  c.maps = {array_outer("offfs", 4)};
  auto engine = Engine::open(c);
  ::rmdir((std::string(dir) + "/policyd").c_str());
  ::rmdir(dir);
  ASSERT_FALSE(engine.ok()) << "opened maps under " << c.pin_dir;
  const std::string message = engine.error().message();
  EXPECT_NE(message.find(c.pin_dir), std::string::npos) << message;
  EXPECT_NE(message.find("not on a bpf filesystem"), std::string::npos) << message;
  EXPECT_NE(message.find("mount -t bpf bpf /sys/fs/bpf"), std::string::npos) << message;
  EXPECT_NE(message.find("RequiresMountsFor="), std::string::npos) << message;
}

}  // namespace
}  // namespace policyd::core
