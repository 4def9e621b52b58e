// A kernel refusal inside a batch (G2, G8, G9). Two pushes are built while the committer thread
// is held, so that they commit as one batch; the second writes an outer map the test has frozen
// (BPF_MAP_FREEZE: from then on the kernel refuses every update from user space with EPERM, a
// refusal it produces on demand). The batch is undone and each push is retried alone: the first
// commits, the second fails naming the kernel's refusal, and the durable record, written while
// the batch's round ran and then put back, holds only the first.
#include <bpf/bpf.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "core/committer.h"
#include "core/engine.h"
#include "core/state_store.h"
#include "engine_harness.h"
#include "kernel/map.h"
#include "support/bpffs.h"
#include "support/scope_exit.h"

namespace policyd::test {
namespace {

using core::Entry;

core::PushRequest replace(const std::string& map, uint32_t slot, const std::string& label) {
  core::PushRequest r;
  r.generation =
      generation({replace_slot(map, slot, {Entry{u32_bytes(1), value_bytes(1)}})}, label);
  return r;
}

// Parameter: the barrier strategy (batch calls, or one concurrent single update per slot).
class CommitterRefusalTest : public ::testing::TestWithParam<core::BarrierMode> {
 protected:
  void SetUp() override {
    POLICYD_REQUIRE_BPF();
    std::string tmpl = (std::filesystem::temp_directory_path() / "policyd-refusal-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    state_dir_ = tmpl;
    core::EngineConfig config;
    config.maps = plain_test_maps();
    config.drain_pins = true;  // as the daemon runs
    config.barrier = GetParam();
    std::unique_ptr<core::Engine> engine;
    ASSERT_NO_FATAL_FAILURE(open_test_engine(std::move(config), bpffs_, engine));
    auto store = core::StateStore::open(state_dir_);
    ASSERT_TRUE(store.ok()) << store.error().message();
    auto committer = core::Committer::open(std::move(engine), std::move(store).value(),
                                           core::CommitterOptions{});
    ASSERT_TRUE(committer.ok()) << committer.error().message();
    committer_ = std::move(committer).value();
  }
  void TearDown() override {
    committer_.reset();
    std::error_code ec;
    if (!state_dir_.empty()) std::filesystem::remove_all(state_dir_, ec);
  }

  std::optional<PrivateBpffs> bpffs_;
  std::string state_dir_;
  std::unique_ptr<core::Committer> committer_;
};

TEST_P(CommitterRefusalTest, G2_G8_AKernelRefusalInABatchFailsOnlyItsPushAndTheRecordKeepsTheRest) {
  auto frozen = kernel::open_pinned(bpffs_->join("pd/arr_array"));
  ASSERT_TRUE(frozen.ok()) << frozen.error().message();
  ASSERT_EQ(bpf_map_freeze(frozen->get()), 0) << "BPF_MAP_FREEZE: " << std::strerror(errno);

  // Hold the committer until both pushes are built: they then commit as one batch.
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::promise<void> holding;
  committer_->post([released, &holding](core::CommitEngine* /*engine*/) {
    holding.set_value();
    released.wait();
  });
  holding.get_future().wait();  // the committer thread is in the job: nothing is taken meanwhile
  bool let_go = false;
  auto let_go_once = [&] {
    if (!std::exchange(let_go, true)) release.set_value();
  };
  test::ScopeExit let_go_at_exit(let_go_once);  // a failed ASSERT must not leave it held
  auto a = std::make_shared<std::promise<Result<core::PushResult>>>();
  auto b = std::make_shared<std::promise<Result<core::PushResult>>>();
  committer_->push(replace("arr_hash", 0, "a"),
                   [a](Result<core::PushResult> r) { a->set_value(r); });
  committer_->push(replace("arr_array", 0, "b"),
                   [b](Result<core::PushResult> r) { b->set_value(r); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (committer_->queue_depth().built < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(committer_->queue_depth().built, 2u) << "the builder did not build both pushes";
  let_go_once();

  Result<core::PushResult> ra = a->get_future().get();
  Result<core::PushResult> rb = b->get_future().get();
  ASSERT_TRUE(ra.ok()) << "the push the kernel did not refuse failed with it: "
                       << ra.error().message();
  EXPECT_EQ(ra->generation, 1u);
  EXPECT_EQ(ra->batch_size, 1u) << "not retried alone after the batch was refused";
  ASSERT_FALSE(rb.ok());
  EXPECT_NE(rb.error().message().find("Operation not permitted"), std::string::npos)
      << rb.error().message();
  EXPECT_NE(rb.error().message().find("arr_array"), std::string::npos) << rb.error().message();
  // Nothing of arr_array was written: there is nothing to undo there (a refused batch call that
  // applied nothing must not be taken for one that applied everything).
  EXPECT_EQ(rb.error().message().find("undo failed"), std::string::npos) << rb.error().message();
  EXPECT_EQ(committer_->view()->generation, 1u);

  committer_.reset();  // stops; closes the store
  auto store = core::StateStore::open(state_dir_);
  ASSERT_TRUE(store.ok()) << store.error().message();
  auto loaded = (*store)->load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().message();
  ASSERT_TRUE(loaded->has_value());
  const core::StoredState& s = **loaded;
  EXPECT_EQ(s.generation, 1u);
  ASSERT_EQ(s.slots.size(), 1u);
  EXPECT_EQ(s.slots[0].map, "arr_hash");
  ASSERT_EQ(s.history.size(), 1u);
  EXPECT_EQ(s.history[0].label, "a");
}

INSTANTIATE_TEST_SUITE_P(Strategies, CommitterRefusalTest,
                         ::testing::Values(core::BarrierMode::kBatch,
                                           core::BarrierMode::kConcurrent),
                         [](const ::testing::TestParamInfo<core::BarrierMode>& p) {
                           return std::string(strategy_name(p.param));
                         });

}  // namespace
}  // namespace policyd::test
