// What programs see through the engine's outer maps: after every commit a program run with
// BPF_PROG_TEST_RUN finds the new generation, a deleted slot misses, and drain() returns the
// replaced map's final entries with the counter sums the programs produced. The kernel's own
// view of the outer map (looked up through the pin, not through the engine) must agree with
// Engine::slots(). Every inner map type of test_progs.bpf.c, under both barrier strategies.
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "core/engine.h"
#include "engine_harness.h"
#include "kernel/map.h"
#include "support/bpffs.h"
#include "support/prog_run.h"
#include "util/hex.h"

namespace policyd::test {
namespace {

using core::BarrierMode;
using core::Bytes;
using core::Entry;

constexpr uint32_t kSlot = 3;  // not 0, so that a lookup of the wrong slot cannot pass

// How a test drives one outer map of test_progs.bpf.c.
struct MapCase {
  std::string map;
  bool lpm = false;
  bool percpu = false;
  bool array_inner = false;  // every key 0..max-1 exists in the inner map
};

const MapCase kCases[] = {
    {"arr_hash", false, false, false},  {"arr_array", false, false, true},
    {"arr_lpm", true, false, false},    {"arr_pcpu", false, true, true},
    {"hash_hash", false, false, false},
};

using Param = std::tuple<BarrierMode, MapCase>;

class EngineDatapathTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    POLICYD_REQUIRE_BPF();
    auto fs = PrivateBpffs::create();
    ASSERT_TRUE(fs.ok()) << fs.error().message();
    bpffs_.emplace(std::move(fs).value());

    core::EngineConfig config;
    config.pin_dir = bpffs_->join("pd");
    config.maps = plain_test_maps();
    config.barrier = mode();
    auto engine = core::Engine::open(std::move(config));
    ASSERT_TRUE(engine.ok()) << engine.error().message();
    engine_ = std::move(engine).value();
    ASSERT_EQ(engine_->strategy(), strategy_of(mode()));

    std::vector<ReusedMap> reuse;
    for (const auto& m : plain_test_maps()) {
      auto fd = engine_->outer_fd(m.name);
      ASSERT_TRUE(fd.ok()) << fd.error().message();
      reuse.push_back({m.name, *fd});
    }
    skel_ = load_skeleton(reuse);
    ASSERT_NE(skel_, nullptr);
    prog_fd_ = bpf_program__fd(program());
    ASSERT_GE(prog_fd_, 0);
    set_inputs();
  }

  [[nodiscard]] BarrierMode mode() const { return std::get<0>(GetParam()); }
  [[nodiscard]] const MapCase& c() const { return std::get<1>(GetParam()); }

  [[nodiscard]] bpf_program* program() const {
    const std::string& m = c().map;
    if (m == "arr_hash") return skel_->progs.count_arr_hash;
    if (m == "arr_array") return skel_->progs.count_arr_array;
    if (m == "arr_lpm") return skel_->progs.count_arr_lpm;
    if (m == "arr_pcpu") return skel_->progs.count_arr_pcpu;
    return skel_->progs.count_hash_hash;
  }

  // The program looks up slot kSlot, key 5 (arrays, hashes) or address 10.1.2.3 (LPM).
  void set_inputs() {
    skel_->bss->slot = kSlot;
    skel_->bss->key = 5;
    skel_->bss->lpm_addr = lpm4_addr(10, 1, 2, 3);
  }

  // The key the program hits, and a second entry it must not hit.
  [[nodiscard]] Bytes hit_key() const { return c().lpm ? lpm4_key(24, 10, 1, 2, 0) : u32_bytes(5); }
  [[nodiscard]] Bytes other_key() const {
    // LPM: a shorter prefix that also covers the address; the longest match must win.
    return c().lpm ? lpm4_key(8, 10, 0, 0, 0) : u32_bytes(9);
  }

  // A generation replacing kSlot: the hit key with `action`, the other key with action+1000.
  [[nodiscard]] core::Generation replace(uint32_t action) const {
    return generation({replace_slot(c().map, kSlot,
                                    {Entry{hit_key(), value_bytes(action, 0)},
                                     Entry{other_key(), value_bytes(action + 1000, 0)}})},
                      "action " + std::to_string(action));
  }

  // Inner map id in kSlot, read from the kernel through the pinned outer map; nullopt when
  // the slot is empty.
  [[nodiscard]] std::optional<uint32_t> kernel_slot_id() const {
    auto outer = kernel::open_pinned(engine_->pins().outer(c().map));
    EXPECT_TRUE(outer.ok()) << outer.error().message();
    if (!outer.ok()) return std::nullopt;
    const Bytes slot = core::array_slot(kSlot);
    uint32_t id = 0;
    auto found = kernel::lookup_elem(outer->get(), slot.data(), &id);
    EXPECT_TRUE(found.ok()) << found.error().message();
    if (!found.ok() || !*found) return std::nullopt;
    return id;
  }

  // The engine's record of kSlot; nullopt when the engine says it is empty.
  [[nodiscard]] std::optional<core::SlotInfo> engine_slot() const {
    auto slots = engine_->slots(c().map);
    EXPECT_TRUE(slots.ok()) << slots.error().message();
    if (!slots.ok()) return std::nullopt;
    for (const core::SlotInfo& s : *slots) {
      if (s.slot == core::array_slot(kSlot)) return s;
    }
    return std::nullopt;
  }

  // The kernel and the engine agree on kSlot: same inner map, of the configured type.
  void expect_kernel_agrees(uint64_t installed_by) {
    std::optional<uint32_t> kid = kernel_slot_id();
    std::optional<core::SlotInfo> mine = engine_slot();
    ASSERT_TRUE(kid.has_value()) << "kernel: slot " << kSlot << " is empty";
    ASSERT_TRUE(mine.has_value()) << "engine: slot " << kSlot << " is empty";
    EXPECT_EQ(*kid, mine->map_id);
    EXPECT_EQ(mine->installed_by, installed_by);
    auto fd = kernel::map_fd_by_id(*kid);
    ASSERT_TRUE(fd.ok()) << fd.error().message();
    auto info = kernel::map_info(fd->get());
    ASSERT_TRUE(info.ok()) << info.error().message();
    EXPECT_EQ(info->name, c().map);
    const auto& cfg = engine_->maps().at(c().map);
    EXPECT_EQ(info->type, cfg.inner.type);
  }

  // Runs the program once and expects a hit on the entry with `action`.
  void expect_hit(uint32_t action) {
    const uint64_t hits = skel_->bss->hits_found;
    auto verdict = run_xdp(prog_fd_, 1);
    ASSERT_TRUE(verdict.ok()) << verdict.error().message();
    EXPECT_EQ(*verdict, static_cast<uint32_t>(XDP_PASS));
    EXPECT_EQ(skel_->bss->hits_found, hits + 1);
    EXPECT_EQ(skel_->bss->last_action, action);
  }

  std::optional<PrivateBpffs> bpffs_;
  std::unique_ptr<core::Engine> engine_;
  SkelPtr skel_;
  int prog_fd_ = -1;
};

TEST_P(EngineDatapathTest, G4_EveryCommitIsVisibleToPrograms) {
  std::optional<uint32_t> previous_id;
  for (uint32_t action = 1; action <= 6; ++action) {
    auto report = engine_->push(replace(action));
    ASSERT_TRUE(report.ok()) << report.error().message();
    ASSERT_EQ(report->last_generation, action);
    expect_hit(action);
    expect_kernel_agrees(action);

    auto records = engine_->drain();
    ASSERT_TRUE(records.ok()) << records.error().message();
    if (!previous_id) {
      EXPECT_TRUE(records->empty()) << "the first commit replaced nothing";
    } else {
      ASSERT_EQ(records->size(), 1u);
      const core::DrainRecord& r = records->front();
      EXPECT_EQ(r.map, c().map);
      EXPECT_EQ(r.slot, core::array_slot(kSlot));
      EXPECT_EQ(r.map_id, *previous_id);
      EXPECT_EQ(r.installed_by, action - 1);
      EXPECT_EQ(r.replaced_by, action);
      EXPECT_EQ(r.counters.at("hits"), 1u) << "one run hit the replaced map";
    }
    previous_id = engine_slot().value().map_id;
    EXPECT_NE(kernel_slot_id(), std::nullopt);
  }
  EXPECT_EQ(skel_->bss->misses, 0u);
  EXPECT_EQ(engine_->pending_drains(), 0u);
}

TEST_P(EngineDatapathTest, G5_DrainCountsReplacedEntriesAndSumsCountersOverCpus) {
  auto first = engine_->push(replace(7));
  ASSERT_TRUE(first.ok()) << first.error().message();
  const uint32_t first_id = engine_slot().value().map_id;

  // 100 runs split over two CPUs (when the process may use two), so that per-CPU maps must
  // be summed across CPUs and the other types see concurrent increments.
  std::vector<int> cpus = allowed_cpus();
  ASSERT_FALSE(cpus.empty());
  const int cpu_a = cpus.front();
  const int cpu_b = cpus.size() > 1 ? cpus[1] : cpus.front();
  auto ra = run_xdp_on_cpu(prog_fd_, 60, cpu_a);
  ASSERT_TRUE(ra.ok()) << ra.error().message();
  auto rb = run_xdp_on_cpu(prog_fd_, 40, cpu_b);
  ASSERT_TRUE(rb.ok()) << rb.error().message();
  EXPECT_EQ(*ra, static_cast<uint32_t>(XDP_PASS));
  EXPECT_EQ(skel_->bss->hits_found, 100u);

  auto live = engine_->live_counters(c().map, core::array_slot(kSlot));
  ASSERT_TRUE(live.ok()) << live.error().message();
  EXPECT_EQ(live->at("hits"), 100u);
  const size_t expected_entries = c().array_inner ? size_t{PD_TEST_INNER_MAX} : size_t{2};

  // The live slot's dump (DumpSlot) keeps every entry and per-CPU value: arrays hold every
  // index (zero where nothing was written), hashes and tries exactly what the generation wrote.
  auto dump = engine_->dump_slot(c().map, core::array_slot(kSlot));
  ASSERT_TRUE(dump.ok()) << dump.error().message();
  EXPECT_EQ(dump->entry_count, expected_entries);
  ASSERT_EQ(dump->entries.size(), expected_entries);
  EXPECT_EQ(dump->counters.at("hits"), 100u);
  const size_t cpus_per_value = c().percpu ? kernel::possible_cpus() : 1;
  bool saw_hit = false;
  bool saw_other = false;
  for (const core::DrainedEntry& e : dump->entries) {
    ASSERT_EQ(e.values.size(), cpus_per_value);
    uint64_t hits = 0;
    for (const Bytes& v : e.values) hits += decode_value(v).hits;
    if (e.key == hit_key()) {
      saw_hit = true;
      EXPECT_EQ(hits, 100u);
      for (const Bytes& v : e.values) EXPECT_EQ(decode_value(v).action, 7u);
      if (c().percpu) {
        // Each CPU's copy holds exactly the runs made on that CPU.
        for (size_t cpu = 0; cpu < e.values.size(); ++cpu) {
          uint64_t want = 0;
          if (static_cast<int>(cpu) == cpu_a) want += 60;
          if (static_cast<int>(cpu) == cpu_b) want += 40;
          EXPECT_EQ(decode_value(e.values[cpu]).hits, want) << "CPU " << cpu;
        }
      }
    } else if (e.key == other_key()) {
      saw_other = true;
      EXPECT_EQ(hits, 0u);
      for (const Bytes& v : e.values) EXPECT_EQ(decode_value(v).action, 1007u);
    } else {
      EXPECT_TRUE(c().array_inner) << "unexpected key " << util::to_hex(e.key);
      EXPECT_EQ(hits, 0u);
    }
  }
  EXPECT_TRUE(saw_hit);
  EXPECT_TRUE(saw_other);

  auto second = engine_->push(replace(8));
  ASSERT_TRUE(second.ok()) << second.error().message();
  expect_hit(8);
  auto records = engine_->drain();
  ASSERT_TRUE(records.ok()) << records.error().message();
  ASSERT_EQ(records->size(), 1u);
  const core::DrainRecord& r = records->front();
  EXPECT_EQ(r.map, c().map);
  EXPECT_EQ(r.slot, core::array_slot(kSlot));
  EXPECT_EQ(r.map_id, first_id);
  EXPECT_EQ(r.installed_by, first->last_generation);
  EXPECT_EQ(r.replaced_by, second->last_generation);
  EXPECT_EQ(r.mode, core::DrainMode::kEntries);
  EXPECT_EQ(r.counters.at("hits"), 100u);
  EXPECT_EQ(engine_->drained_totals().at({c().map, core::array_slot(kSlot), "hits"}), 100u);
  // The drain counts the entries and sums the counters over entries and CPUs; it keeps no
  // entry (nothing promises them; the Drained event carries the count).
  EXPECT_EQ(r.entry_count, expected_entries);
  EXPECT_TRUE(r.entries.empty()) << "a drain held " << r.entries.size() << " entries";
  EXPECT_EQ(engine_->stats().drained_entries, expected_entries);

  // The replacement started from zero: only the one run since the swap.
  live = engine_->live_counters(c().map, core::array_slot(kSlot));
  ASSERT_TRUE(live.ok()) << live.error().message();
  EXPECT_EQ(live->at("hits"), 1u);
  EXPECT_EQ(skel_->bss->misses, 0u);
}

TEST_P(EngineDatapathTest, G4_DeletedSlotMisses) {
  auto first = engine_->push(replace(11));
  ASSERT_TRUE(first.ok()) << first.error().message();
  expect_hit(11);
  const uint32_t first_id = engine_slot().value().map_id;

  auto removed = engine_->push(generation({remove_slot(c().map, kSlot)}, "delete"));
  ASSERT_TRUE(removed.ok()) << removed.error().message();
  EXPECT_EQ(engine_slot(), std::nullopt) << "engine still lists the deleted slot";
  EXPECT_EQ(kernel_slot_id(), std::nullopt) << "kernel still holds an inner map in the slot";

  const uint64_t misses = skel_->bss->misses;
  auto verdict = run_xdp(prog_fd_, 1);
  ASSERT_TRUE(verdict.ok()) << verdict.error().message();
  EXPECT_EQ(*verdict, static_cast<uint32_t>(XDP_DROP));
  EXPECT_EQ(skel_->bss->misses, misses + 1);

  auto records = engine_->drain();
  ASSERT_TRUE(records.ok()) << records.error().message();
  ASSERT_EQ(records->size(), 1u);
  EXPECT_EQ(records->front().map_id, first_id);
  EXPECT_EQ(records->front().installed_by, first->last_generation);
  EXPECT_EQ(records->front().replaced_by, removed->last_generation);
  EXPECT_EQ(records->front().counters.at("hits"), 1u);
  auto live = engine_->live_counters(c().map, core::array_slot(kSlot));
  ASSERT_TRUE(live.ok()) << live.error().message();
  EXPECT_TRUE(live->empty()) << "an empty slot has no live counters";

  // The slot can be filled again.
  auto again = engine_->push(replace(12));
  ASSERT_TRUE(again.ok()) << again.error().message();
  expect_hit(12);
  expect_kernel_agrees(again->last_generation);
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  return std::string(strategy_name(std::get<0>(info.param))) + "_" + std::get<1>(info.param).map;
}

INSTANTIATE_TEST_SUITE_P(Strategies, EngineDatapathTest,
                         ::testing::Combine(::testing::Values(BarrierMode::kBatch,
                                                              BarrierMode::kConcurrent),
                                            ::testing::ValuesIn(kCases)),
                         param_name);

}  // namespace
}  // namespace policyd::test
