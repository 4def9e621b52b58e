// Reads beside the committer (core/reads.h, G5): counters and dumps read on another thread
// while this thread, as the committer, replaces and drains the counted slot again and again.
// The counts change only at moments the test chooses (it runs the counting program itself),
// so every read taken while they stand still must equal them exactly. A replaced map read
// twice (drained and still read as pending) or not at all (replaced, not drained yet) shows as
// a wrong total, whatever the timing.
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "core/engine.h"
#include "core/reads.h"
#include "engine_harness.h"
#include "support/bpffs.h"
#include "support/prog_run.h"
#include "support/scope_exit.h"

namespace policyd::test {
namespace {

using core::Entry;

constexpr uint32_t kCommits = 100;
constexpr uint32_t kRunsPerCommit = 7;
const std::string kMap = "arr_hash";

// Parameter: drain pins on (as the daemon runs: a drained map lives on until its totals are
// durable) or off (a drained map is freed at once, so a read may find it gone and retry).
class EngineReadsTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    POLICYD_REQUIRE_BPF();
    core::EngineConfig config;
    config.maps = plain_test_maps();
    config.drain_pins = GetParam();
    ASSERT_NO_FATAL_FAILURE(open_test_engine(std::move(config), bpffs_, engine_));
    auto fd = engine_->outer_fd(kMap);
    ASSERT_TRUE(fd.ok()) << fd.error().message();
    skel_ = load_skeleton({{kMap, *fd}});
    ASSERT_NE(skel_, nullptr);
    prog_fd_ = bpf_program__fd(skel_->progs.count_arr_hash);
    skel_->bss->slot = 0;
    skel_->bss->key = 0;
  }

  [[nodiscard]] static core::Generation slot0(uint32_t action) {
    return generation({replace_slot(kMap, 0, {Entry{u32_bytes(0), value_bytes(action, 0)}})});
  }

  std::optional<PrivateBpffs> bpffs_;
  std::unique_ptr<core::Engine> engine_;
  SkelPtr skel_;
  int prog_fd_ = -1;
};

// Counts of slot 0 as a reading gives them: drained + live.
uint64_t slot0_total(const core::CounterReading& r) {
  auto it = r.table.find({kMap, core::array_slot(0)});
  if (it == r.table.end()) return 0;
  uint64_t total = 0;
  for (const auto* part : {&it->second.drained, &it->second.live}) {
    auto f = part->find("hits");
    if (f != part->end()) total += f->second;
  }
  return total;
}

TEST_P(EngineReadsTest, G5_CountersReadBesideCommitsAndDrainsCountEveryMapOnce) {
  auto first = engine_->push(slot0(1));
  ASSERT_TRUE(first.ok()) << first.error().message();

  // Even: the counts stand still at `expected`; odd: the program is running.
  std::atomic<uint64_t> seq{0};
  std::atomic<uint64_t> expected{0};
  std::atomic<bool> done{false};
  std::mutex mu;
  std::string failure;
  uint64_t checked = 0, with_pending = 0, dumps = 0;
  std::thread reader([&] {
    while (!done.load()) {
      const uint64_t before = seq.load();
      const uint64_t want = expected.load();
      Result<core::CounterReading> r = core::read_counters(*engine_, kMap);
      Result<core::CounterSnapshot> snap = engine_->counter_snapshot(kMap);
      Result<core::DrainRecord> dump = core::read_slot(*engine_, kMap, core::array_slot(0));
      const bool still = before % 2 == 0 && seq.load() == before;
      std::lock_guard lock(mu);
      if (!r.ok() || !snap.ok() || !dump.ok()) {
        failure = !r.ok()      ? r.error().message()
                  : !snap.ok() ? snap.error().message()
                               : dump.error().message();
        return;
      }
      for (const core::CounterSource& s : snap->sources) with_pending += s.live ? 0 : 1;
      dumps += dump->entry_count == 1 ? 1 : 0;
      if (!still) continue;
      ++checked;
      if (slot0_total(*r) != want) {
        failure = "a read while the counts stood at " + std::to_string(want) + " gave " +
                  std::to_string(slot0_total(*r));
        return;
      }
    }
  });
  test::ScopeExit stop_reader([&] {
    done = true;
    if (reader.joinable()) reader.join();
  });

  for (uint32_t gen = 2; gen <= kCommits + 1 && failure.empty(); ++gen) {
    seq.fetch_add(1);
    auto ran = run_xdp(prog_fd_, kRunsPerCommit);
    ASSERT_TRUE(ran.ok()) << ran.error().message();
    expected.fetch_add(kRunsPerCommit);
    seq.fetch_add(1);
    auto report = engine_->push(slot0(gen));
    ASSERT_TRUE(report.ok()) << "generation " << gen << ": " << report.error().message();
    // The replaced map waits for its drain a while: reads must count it as pending.
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    auto drained = engine_->drain();
    ASSERT_TRUE(drained.ok()) << drained.error().message();
    if (GetParam()) engine_->release_drained();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  done = true;
  reader.join();
  std::lock_guard lock(mu);
  EXPECT_EQ(failure, "");
  EXPECT_EQ(expected.load(), uint64_t{kCommits} * kRunsPerCommit);
  EXPECT_EQ(skel_->bss->hits_found, expected.load());
  EXPECT_GT(checked, uint64_t{kCommits}) << "too few reads while the counts stood still";
  EXPECT_GT(with_pending, 0u) << "no read saw a replaced map waiting for its drain";
  EXPECT_GT(dumps, 0u);
}

TEST_P(EngineReadsTest, ReadsOfAnEmptySlotAndAnUnknownMapSayWhat) {
  auto dump = core::read_slot(*engine_, kMap, core::array_slot(1));
  ASSERT_FALSE(dump.ok());
  EXPECT_EQ(dump.error().code, ErrorCode::kNotFound);
  EXPECT_NE(dump.error().message().find("slot 1 is empty"), std::string::npos)
      << dump.error().message();
  auto counters = core::read_counters(*engine_, "nope");
  ASSERT_FALSE(counters.ok());
  EXPECT_EQ(counters.error().code, ErrorCode::kNotFound);
  EXPECT_NE(counters.error().message().find("unknown map \"nope\""), std::string::npos);
  auto all = core::read_counters(*engine_, "");
  ASSERT_TRUE(all.ok()) << all.error().message();
  EXPECT_EQ(all->maps.size(), plain_test_maps().size());
}

INSTANTIATE_TEST_SUITE_P(DrainPins, EngineReadsTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return std::string(p.param ? "pinned" : "unpinned");
                         });

}  // namespace
}  // namespace policyd::test
