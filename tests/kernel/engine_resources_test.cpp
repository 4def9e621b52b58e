// core::Engine's own threads and memory (G6 bounded resources): the worker pools start threads
// only when a build or a write round needs them, and the heap the engine keeps per populated
// slot stays within a budget. The second test prints the measured bytes per slot, the figure
// tests/bench/README.md quotes.
#include <gtest/gtest.h>
#include <linux/bpf.h>
#include <malloc.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/engine.h"
#include "core/fd_budget.h"
#include "support/bpffs.h"

namespace policyd::core {
namespace {

// Threads of this process, from /proc/self/task.
size_t process_threads() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

// Heap bytes in use over every malloc arena, mmapped chunks included.
size_t heap_in_use() {
  const struct mallinfo2 mi = ::mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

// An array_of_maps of one-entry hash inner maps: u32 key, a 16-byte value with a counter.
OuterMapConfig one_entry_map(const std::string& name, uint32_t slots, DrainMode drain) {
  OuterMapConfig m;
  m.name = name;
  m.kind = OuterKind::kArray;
  m.slots = slots;
  m.drain = drain;
  m.inner.type = BPF_MAP_TYPE_HASH;
  m.inner.key_size = 4;
  m.inner.value_size = 16;
  m.inner.max_entries = 1;
  m.inner.counters = {{"hits", 8, 8}};
  return m;
}

// Replaces slots [first, first + count) of `map` with one entry each.
Generation fill(const std::string& map, uint32_t first, uint32_t count, uint8_t value) {
  Generation g;
  for (uint32_t i = first; i < first + count; ++i) {
    SlotChange c;
    c.map = map;
    c.slot = array_slot(i);
    c.entries.push_back({array_slot(i), Bytes(16, value)});
    g.changes.push_back(std::move(c));
  }
  return g;
}

class EngineResourcesTest : public test::BpffsTest {
 protected:
};

// Opening an engine sized for 64 concurrent writes starts no thread; a commit starts as many
// as its round has calls (batch: one per outer map; concurrent: one per slot), and the next
// commit reuses them.
TEST_F(EngineResourcesTest, G6_WorkerThreadsStartOnlyWhenACommitNeedsThem) {
  struct Case {
    BarrierMode mode;
    uint64_t barrier_threads;  // calls in a round that writes 8 slots of each of 2 maps
  };
  for (const Case& k : {Case{BarrierMode::kBatch, 2}, Case{BarrierMode::kConcurrent, 16}}) {
    SCOPED_TRACE(to_string(k.mode));
    const size_t before = process_threads();
    EngineConfig config;
    config.pin_dir = bpffs_->join(std::string("threads_") + to_string(k.mode));
    config.maps = {one_entry_map("thr_a", 64, DrainMode::kEntries),
                   one_entry_map("thr_b", 64, DrainMode::kEntries)};
    config.barrier = k.mode;
    config.build_threads = 2;
    config.barrier_threads = 64;
    auto engine = Engine::open(config);
    ASSERT_TRUE(engine.ok()) << engine.error().message();
    EXPECT_EQ((*engine)->stats().build_threads_started, 0u);
    EXPECT_EQ((*engine)->stats().barrier_threads_started, 0u);
    EXPECT_EQ(process_threads(), before) << "an engine nobody committed to holds no thread";

    for (uint8_t gen = 1; gen <= 3; ++gen) {
      Generation g = fill("thr_a", 0, 8, gen);
      for (SlotChange& c : fill("thr_b", 0, 8, gen).changes) g.changes.push_back(std::move(c));
      auto report = (*engine)->push(g);
      ASSERT_TRUE(report.ok()) << report.error().message();
      ASSERT_TRUE((*engine)->drain().ok());
      const EngineStats s = (*engine)->stats();
      // 16 entries: below the builder's threshold for worker threads, built on this thread.
      EXPECT_EQ(s.build_threads_started, 0u) << "generation " << int{gen};
      EXPECT_EQ(s.barrier_threads_started, k.barrier_threads) << "generation " << int{gen};
      EXPECT_EQ(process_threads(), before + k.barrier_threads) << "generation " << int{gen};
    }
  }
}

// What the engine keeps per populated slot (its slot tables, InnerMap objects, drain state),
// measured as heap in use after committing and draining N one-entry slots, over N. The
// kernel's side (the maps, the fds) is not in the process heap. Budget: 384 bytes per slot
// (measured 2026-12-02: see tests/bench/README.md).
TEST_F(EngineResourcesTest, G6_EngineHeapPerPopulatedSlotStaysWithinBudget) {
  constexpr uint32_t kChunk = 1024;
  constexpr size_t kBudget = 384;
  Result<FdLimit> limit = raise_fd_limit();
  ASSERT_TRUE(limit.ok()) << limit.error().message();
  // Two generations of inner maps are open at once while the second replaces the first.
  const uint64_t room = limit->soft > 512 ? (limit->soft - 512) / 2 : 0;
  const uint32_t slots = static_cast<uint32_t>(std::min<uint64_t>(8192, room / kChunk * kChunk));
  if (slots < kChunk) GTEST_SKIP() << "RLIMIT_NOFILE " << limit->soft << " is too low";

  EngineConfig config;
  config.pin_dir = bpffs_->join("heap");
  config.maps = {one_entry_map("heap", slots, DrainMode::kEntries)};
  config.barrier = BarrierMode::kBatch;
  config.drain_pins = true;  // as the daemon runs it
  auto engine = Engine::open(config);
  ASSERT_TRUE(engine.ok()) << engine.error().message();
  Engine& e = **engine;
  // Warm the pools and the one-time allocations (a commit and a drain of one slot).
  ASSERT_TRUE(e.push(fill("heap", 0, 1, 1)).ok());
  ASSERT_TRUE(e.drain().ok());
  e.release_drained();
  ::malloc_trim(0);
  const size_t base = heap_in_use();

  auto populate = [&](uint8_t value) {
    for (uint32_t first = 0; first < slots; first += kChunk) {
      auto report = e.push(fill("heap", first, kChunk, value));
      ASSERT_TRUE(report.ok()) << report.error().message();
      auto drained = e.drain();
      ASSERT_TRUE(drained.ok()) << drained.error().message();
      e.release_drained();
    }
  };
  populate(2);
  ASSERT_FALSE(HasFatalFailure());
  const size_t live = heap_in_use();
  // Replacing every slot once more adds the drained counter totals of each slot.
  populate(3);
  ASSERT_FALSE(HasFatalFailure());
  const size_t replaced = heap_in_use();
  ASSERT_EQ(e.stats().live_inner_maps, slots);
  ASSERT_EQ(e.pending_drains(), 0u);

  const double per_slot = static_cast<double>(live > base ? live - base : 0) / slots;
  const double per_slot_drained =
      static_cast<double>(replaced > base ? replaced - base : 0) / slots;
  std::printf(
      "engine heap at %u one-entry slots: %.0f bytes per populated slot, %.0f after replacing "
      "each once (drained totals included)\n",
      slots, per_slot, per_slot_drained);
  EXPECT_LE(per_slot, kBudget);
  // One counter field's drained total per slot on top.
  EXPECT_LE(per_slot_drained, kBudget + 256);
}

}  // namespace
}  // namespace policyd::core
