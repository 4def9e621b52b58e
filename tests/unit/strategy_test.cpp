// The barrier-strategy table of DESIGN.md (Barrier strategies and kernel behaviour), row by row,
// with synthetic probe results: what core::choose_strategy picks for each kind of kernel, and that
// an explicit mode always wins.
#include <gtest/gtest.h>

#include "core/engine.h"
#include "kernel/probe.h"

namespace policyd::core {
namespace {

kernel::KernelFacts facts(int major, int minor, bool batch, bool per_element) {
  kernel::KernelFacts f;
  f.release = std::to_string(major) + "." + std::to_string(minor) + ".0";
  f.major = major;
  f.minor = minor;
  f.outer_batch_update = batch;
  f.batch_waits_per_element = per_element;
  return f;
}

TEST(ChooseStrategy, OldKernelWithoutOuterBatchUsesConcurrentSingles) {  // 4.20 - 5.18
  EXPECT_EQ(choose_strategy(BarrierMode::kAuto, facts(5, 15, false, false)), Strategy::kConcurrent);
}

TEST(ChooseStrategy, BatchWaitingPerElementUsesConcurrentSingles) {  // 5.19 - 6.7
  EXPECT_EQ(choose_strategy(BarrierMode::kAuto, facts(6, 1, true, true)), Strategy::kConcurrent);
}

TEST(ChooseStrategy, BatchWaitingPerCallUsesBatch) {  // 6.8+
  EXPECT_EQ(choose_strategy(BarrierMode::kAuto, facts(6, 8, true, false)), Strategy::kBatch);
  EXPECT_EQ(choose_strategy(BarrierMode::kAuto, facts(6, 19, true, false)), Strategy::kBatch);
}

TEST(ChooseStrategy, DecidesOnWhatWasMeasuredNotOnTheVersion) {
  // A backport can change behaviour without changing the version: the probe result rules.
  EXPECT_EQ(choose_strategy(BarrierMode::kAuto, facts(5, 10, true, false)), Strategy::kBatch);
  EXPECT_EQ(choose_strategy(BarrierMode::kAuto, facts(6, 18, false, false)), Strategy::kConcurrent);
}

TEST(ChooseStrategy, ExplicitModeOverridesTheProbe) {
  for (bool batch : {false, true}) {
    for (bool per_element : {false, true}) {
      const kernel::KernelFacts f = facts(6, 18, batch, per_element);
      EXPECT_EQ(choose_strategy(BarrierMode::kBatch, f), Strategy::kBatch);
      EXPECT_EQ(choose_strategy(BarrierMode::kConcurrent, f), Strategy::kConcurrent);
    }
  }
}

}  // namespace
}  // namespace policyd::core
