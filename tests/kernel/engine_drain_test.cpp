// G5 lossless drain under load: threads run the counting program against slot 0 without
// pause while the engine replaces slot 0 hundreds of times, draining after every commit. Every
// run lands in exactly one inner map, so the drained "hits" plus the live map's must equal the
// runs the threads made, exactly. A negative control shows that this accounting catches loss:
// the naive scheme that reads the old map *before* swapping it falls short under the same load.
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>

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

namespace policyd::test {
namespace {

using core::BarrierMode;
using core::Bytes;
using core::Entry;

constexpr size_t kThreads = 2;
constexpr uint32_t kRepeat = 200;
constexpr uint32_t kGenerations = 200;  // commits under load, after the first

using Param = std::tuple<BarrierMode, std::string>;

class EngineDrainTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    POLICYD_REQUIRE_BPF();
    core::EngineConfig config;
    config.maps = plain_test_maps();
    config.barrier = std::get<0>(GetParam());
    ASSERT_NO_FATAL_FAILURE(open_test_engine(std::move(config), bpffs_, engine_));
    ASSERT_EQ(engine_->strategy(), strategy_of(std::get<0>(GetParam())));

    auto fd = engine_->outer_fd(map());
    ASSERT_TRUE(fd.ok()) << fd.error().message();
    skel_ = load_skeleton({{map(), *fd}});
    ASSERT_NE(skel_, nullptr);
    bpf_program* prog =
        map() == "arr_pcpu" ? skel_->progs.count_arr_pcpu : skel_->progs.count_arr_hash;
    prog_fd_ = bpf_program__fd(prog);
    ASSERT_GE(prog_fd_, 0);
    skel_->bss->slot = 0;
    skel_->bss->key = 0;
  }

  [[nodiscard]] const std::string& map() const { return std::get<1>(GetParam()); }

  // Slot 0 with key 0 present, its counter zero (the builder zeroes counter fields anyway).
  [[nodiscard]] core::Generation slot0(uint32_t action) const {
    return generation({replace_slot(map(), 0, {Entry{u32_bytes(0), value_bytes(action, 0)}})});
  }

  std::optional<PrivateBpffs> bpffs_;
  std::unique_ptr<core::Engine> engine_;
  SkelPtr skel_;
  int prog_fd_ = -1;
};

TEST_P(EngineDrainTest, G5_DrainedPlusLiveCountersEqualRunsUnderLoad) {
  auto first = engine_->push(slot0(1));
  ASSERT_TRUE(first.ok()) << first.error().message();

  ProgramLoad load(prog_fd_, kThreads, kRepeat);
  uint64_t drained_records = 0;
  for (uint32_t gen = 2; gen <= kGenerations + 1; ++gen) {
    // Every map about to be replaced has taken at least one whole call of runs, so each
    // commit swaps a map the programs are busy with (and the test cannot pass idle).
    ASSERT_TRUE(load.wait_for_full_call()) << "program threads stalled: " << load.error();
    auto report = engine_->push(slot0(gen));
    ASSERT_TRUE(report.ok()) << "generation " << gen << ": " << report.error().message();
    auto records = engine_->drain();
    ASSERT_TRUE(records.ok()) << "generation " << gen << ": " << records.error().message();
    ASSERT_EQ(records->size(), 1u) << "generation " << gen;
    const core::DrainRecord& r = records->front();
    EXPECT_EQ(r.installed_by, gen - 1);
    EXPECT_EQ(r.replaced_by, gen);
    EXPECT_GE(r.counters.at("hits"), uint64_t{kRepeat}) << "generation " << gen - 1;
    ++drained_records;
  }
  load.stop();
  ASSERT_EQ(load.error(), "");

  const uint64_t runs = load.runs();
  const uint64_t drained = engine_->drained_totals().at({map(), core::array_slot(0), "hits"});
  auto live = engine_->live_counters(map(), core::array_slot(0));
  ASSERT_TRUE(live.ok()) << live.error().message();
  EXPECT_EQ(drained_records, kGenerations);
  EXPECT_EQ(skel_->bss->runs, runs) << "the threads' own count disagrees with the program's";
  EXPECT_EQ(skel_->bss->misses, 0u) << "a run found slot 0 or key 0 missing mid-swap";
  EXPECT_EQ(skel_->bss->hits_found, runs);
  EXPECT_EQ(drained + live->at("hits"), runs)
      << "drained " << drained << " + live " << live->at("hits") << " != runs " << runs;
  EXPECT_EQ(engine_->pending_drains(), 0u);
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  return std::string(strategy_name(std::get<0>(info.param))) + "_" + std::get<1>(info.param);
}

INSTANTIATE_TEST_SUITE_P(
    Strategies, EngineDrainTest,
    ::testing::Combine(::testing::Values(BarrierMode::kBatch, BarrierMode::kConcurrent),
                       ::testing::Values(std::string("arr_hash"), std::string("arr_pcpu"))),
    param_name);

// The negative control: no engine, the outer map written with raw updates, and the old map's
// counter read *before* the swap, as a naive daemon might. Runs that land between that read
// and the swap (or in the grace period after it) are never counted. The window is forced to
// hold at least one whole call of runs, so the loss is certain rather than likely: the test
// proves the accounting above would notice, without depending on timing.
class NaiveDrainControlTest : public BpfTest {};

TEST_F(NaiveDrainControlTest, G5_ReadingBeforeTheSwapLosesCounts) {
  SkelPtr skel = load_skeleton({});  // libbpf creates arr_hash itself
  ASSERT_NE(skel, nullptr);
  const int outer = bpf_map__fd(skel->maps.arr_hash);
  const int prog = bpf_program__fd(skel->progs.count_arr_hash);
  skel->bss->slot = 0;
  skel->bss->key = 0;

  const uint32_t zero = 0;
  auto make_inner = [&](uint32_t action) -> Result<kernel::UniqueFd> {
    kernel::MapSpec spec;
    spec.type = BPF_MAP_TYPE_HASH;
    spec.name = "naive";
    spec.key_size = 4;
    spec.value_size = sizeof(pd_test_value);
    spec.max_entries = PD_TEST_INNER_MAX;
    POLICYD_ASSIGN_OR_RETURN(kernel::UniqueFd fd, kernel::create_map(spec));
    pd_test_value v{};
    v.action = action;
    POLICYD_TRY(kernel::update_elem(fd.get(), &zero, &v));
    return fd;
  };
  auto read_hits = [&](int fd) -> uint64_t {
    pd_test_value v{};
    auto found = kernel::lookup_elem(fd, &zero, &v);
    EXPECT_TRUE(found.ok() && *found);
    return v.hits;
  };
  auto install = [&](int inner_fd) {
    const auto value = static_cast<uint32_t>(inner_fd);
    return kernel::update_elem(outer, &zero, &value);
  };

  auto current = make_inner(1);
  ASSERT_TRUE(current.ok()) << current.error().message();
  ASSERT_TRUE(install(current->get()).ok());

  uint64_t counted = 0;
  {
    ProgramLoad load(prog, kThreads, kRepeat);
    for (uint32_t gen = 2; gen <= kGenerations + 1; ++gen) {
      auto next = make_inner(gen);
      ASSERT_TRUE(next.ok()) << next.error().message();
      counted += read_hits(current->get());  // the mistake: read, then swap
      ASSERT_TRUE(load.wait_for_full_call()) << "program threads stalled: " << load.error();
      Status st = install(next->get());
      ASSERT_TRUE(st.ok()) << st.error().message();
      current = std::move(next);
    }
    load.stop();
    ASSERT_EQ(load.error(), "");
    counted += read_hits(current->get());

    const uint64_t runs = load.runs();
    EXPECT_EQ(skel->bss->runs, runs);
    EXPECT_EQ(skel->bss->misses, 0u);
    EXPECT_LT(counted, runs) << "the naive scheme lost nothing: the accounting cannot see loss";
    // At least one whole call per generation ran between the read and the swap.
    EXPECT_GE(runs - counted, uint64_t{kGenerations} * kRepeat);
  }
}

}  // namespace
}  // namespace policyd::test
