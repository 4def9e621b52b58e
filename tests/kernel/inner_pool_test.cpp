// The inner-map pool (core/inner_pool.h) on the real kernel: pooled maps are fresh (never one
// that was in the data plane), a template change drops them, and the fd budget counts them
// (G6: bounded resources).
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cstring>
#include <filesystem>
#include <set>

#include "core/engine.h"
#include "core/fd_budget.h"
#include "core/inner_pool.h"
#include "kernel/map.h"
#include "kernel/unique_fd.h"
#include "support/bpffs.h"

namespace policyd::core {
namespace {

OuterMapConfig array_of_hash(const std::string& name, uint32_t slots, uint32_t value_size = 8) {
  OuterMapConfig m;
  m.name = name;
  m.kind = OuterKind::kArray;
  m.slots = slots;
  m.inner.type = BPF_MAP_TYPE_HASH;
  m.inner.key_size = 4;
  m.inner.value_size = value_size;
  m.inner.max_entries = 16;
  return m;
}

SlotChange replace(const std::string& map, uint32_t slot, uint32_t value_size, uint32_t tag) {
  SlotChange c;
  c.map = map;
  c.slot = array_slot(slot);
  Entry e;
  e.key.resize(4);
  std::memcpy(e.key.data(), &tag, 4);
  e.value.assign(value_size, static_cast<uint8_t>(tag));
  c.entries.push_back(std::move(e));
  return c;
}

size_t open_fds() {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)e;
    ++n;
  }
  return n;
}

class InnerPoolTest : public test::BpffsTest {
 protected:
  EngineConfig config(std::vector<OuterMapConfig> maps, size_t pool) const {
    EngineConfig c;
    c.pin_dir = bpffs_->join("policyd");
    c.maps = std::move(maps);
    c.barrier = BarrierMode::kBatch;
    c.inner_pool = pool;
    return c;
  }
};

TEST(InnerPoolTarget, G6_BoundedBySlotsMaximumAndMemory) {
  OuterMapConfig m = array_of_hash("t", 8);
  EXPECT_EQ(pool_target(m, 64), 8u);  // never more than the outer map's slots
  m.slots = 1000;
  EXPECT_EQ(pool_target(m, 64), 64u);
  EXPECT_EQ(pool_target(m, 0), 0u);
  m.inner.max_entries = 1000000;  // a preallocated map of ~76 MB: none pooled
  EXPECT_EQ(pool_target(m, 64), 0u);
  m.inner.flags = BPF_F_NO_PREALLOC;  // allocated as it fills: cheap when empty
  EXPECT_EQ(pool_target(m, 64), 64u);
}

// Every inner map a push installs is one the kernel never had in the data plane before, and no
// pooled map is one that was installed or drained, over many generations that use the pool.
TEST_F(InnerPoolTest, G6_PooledMapIsNeverOneThatWasInTheDataPlane) {
  auto opened = Engine::open(config({array_of_hash("fresh", 8)}, 8));
  ASSERT_TRUE(opened.ok()) << opened.error().message();
  Engine& engine = **opened;
  ASSERT_NE(engine.inner_pool(), nullptr);
  ASSERT_TRUE(engine.inner_pool()->wait_full(10000));

  std::set<uint32_t> seen;  // every id that was ever installed or drained
  for (uint32_t i = 0; i < 60; ++i) {
    Generation g;
    g.label = std::to_string(i);
    for (uint32_t s = 0; s < 4; ++s) g.changes.push_back(replace("fresh", (i + s) % 8, 8, i));
    Result<CommitReport> r = engine.push(g);
    ASSERT_TRUE(r.ok()) << "generation " << i << ": " << r.error().message();
    Result<std::vector<SlotInfo>> slots = engine.slots("fresh");
    ASSERT_TRUE(slots.ok());
    for (const SlotInfo& s : *slots) {
      if (s.installed_by != engine.current_generation()) continue;
      EXPECT_FALSE(seen.count(s.map_id)) << "generation " << i << " installed map " << s.map_id
                                         << ", which was in the data plane before";
    }
    for (const SlotInfo& s : *slots) seen.insert(s.map_id);
    Result<std::vector<DrainRecord>> drained = engine.drain();
    ASSERT_TRUE(drained.ok());
    for (const DrainRecord& d : *drained) seen.insert(d.map_id);
    for (uint32_t id : engine.inner_pool()->ids()) {
      EXPECT_FALSE(seen.count(id)) << "pooled map " << id << " was in the data plane";
    }
    if (i % 3 == 0) engine.inner_pool()->wait_full(10000);
  }
  const PoolStats stats = engine.stats().pool;
  EXPECT_GT(stats.taken, 100u) << "the pushes must have used the pool";
  EXPECT_EQ(stats.taken + stats.pooled + stats.dropped, stats.created);
}

// A map removed by a reload and added again with another template gets no map of the old one.
TEST_F(InnerPoolTest, G6_TemplateChangeDropsStalePooledMaps) {
  auto opened = Engine::open(config({array_of_hash("tpl", 4, 8)}, 4));
  ASSERT_TRUE(opened.ok()) << opened.error().message();
  Engine& engine = **opened;
  ASSERT_TRUE(engine.inner_pool()->wait_full(10000));
  ASSERT_EQ(engine.inner_pool()->ids().size(), 4u);

  ASSERT_TRUE(engine.remove_maps({"tpl"}).ok());
  EXPECT_TRUE(engine.inner_pool()->ids().empty()) << "pooled maps of a removed map stay";
  ASSERT_TRUE(engine.add_maps({array_of_hash("tpl", 4, 16)}).ok());
  ASSERT_TRUE(engine.inner_pool()->wait_full(10000));
  for (uint32_t id : engine.inner_pool()->ids()) {
    Result<kernel::UniqueFd> fd = kernel::map_fd_by_id(id);
    ASSERT_TRUE(fd.ok()) << fd.error().message();
    Result<kernel::MapInfo> info = kernel::map_info(fd->get());
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->value_size, 16u) << "pooled map " << id << " has the old template";
  }
  // The kernel refuses an inner map of another template: a stale one would fail this push.
  Generation g;
  for (uint32_t s = 0; s < 4; ++s) g.changes.push_back(replace("tpl", s, 16, s));
  Result<CommitReport> r = engine.push(g);
  EXPECT_TRUE(r.ok()) << r.error().message();
  EXPECT_GE(engine.stats().pool.dropped, 4u);

  // configure() itself (and take(), for a config it was not filled for) drop a changed template.
  InnerMapPool pool(2);
  MapConfigs a{{"direct", array_of_hash("direct", 2, 8)}};
  pool.configure(a);
  ASSERT_TRUE(pool.wait_full(10000));
  MapConfigs b{{"direct", array_of_hash("direct", 2, 24)}};
  EXPECT_FALSE(pool.take(b.at("direct")).has_value()) << "take() handed out the old template";
  pool.configure(b);
  ASSERT_TRUE(pool.wait_full(10000));
  std::optional<PooledMap> taken = pool.take(b.at("direct"));
  ASSERT_TRUE(taken.has_value());
  Result<kernel::MapInfo> info = kernel::map_info(taken->fd.get());
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->value_size, 24u);
  EXPECT_EQ(info->id, taken->id);
}

// Pooled maps hold fds: UniqueFd counts them, so the budget does; the refill keeps spare fds
// free; and a build that needs more fds than remain gets the pooled ones back instead of failing.
TEST_F(InnerPoolTest, G6_FdBudgetCountsPooledMaps) {
  // "big": a 300,000-entry array inner map is too large to pool; "small" pools 16.
  OuterMapConfig big = array_of_hash("big", 4);
  big.inner.type = BPF_MAP_TYPE_ARRAY;
  big.inner.max_entries = 300000;
  const size_t owned_before = kernel::UniqueFd::owned_count();
  auto opened = Engine::open(config({array_of_hash("small", 16), big}, 16));
  ASSERT_TRUE(opened.ok()) << opened.error().message();
  Engine& engine = **opened;
  ASSERT_TRUE(engine.inner_pool()->wait_full(10000));
  EXPECT_EQ(engine.stats().pool.pooled, 16u);
  const size_t outer_fds = 2 + 1;  // two outer maps and the explicit-barrier map
  EXPECT_GE(kernel::UniqueFd::owned_count(), owned_before + outer_fds + 16)
      << "pooled fds are not counted";

  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  // Room for the 4 "big" maps only once the 16 pooled fds are given back.
  const size_t open = open_fds();
  rlimit low = saved;
  low.rlim_cur = open - 16 + 4 + kFdHeadroom + 2;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  Generation g;
  g.label = "needs the pooled fds";
  for (uint32_t s = 0; s < 4; ++s) g.changes.push_back(replace("big", s, 8, s));
  Result<CommitReport> r = engine.push(g);
  const PoolStats after = engine.stats().pool;
  // The refill only uses spare fds: under this limit it must not take any back.
  const bool spare = reserve_spare_fds(1, kPoolFdSpare).ok();
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
  EXPECT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(after.pooled, 0u);
  EXPECT_GE(after.dropped, 16u);
  EXPECT_FALSE(spare) << "the refill would take fds a build needs";
}

}  // namespace
}  // namespace policyd::core
