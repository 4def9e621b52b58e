// G7 atomic groups: grpx and grpy in group "grp". Every generation gives slot 0 of both maps
// the same action; threads run check_group without pause while the engine commits hundreds
// of generations, and no run may see grpx and grpy from different generations. A control
// writes the same two maps one after the other, without the bank flip, and shows that
// check_group does catch a mixed cut. Also: the group holds no inner maps beyond the two
// generations its banks reference.
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/committer.h"
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
constexpr uint32_t kGenerations = 500;

// Slot 0 of grpx and grpy, key 0 with action `action` in both, as one generation.
core::Generation both(uint32_t action) {
  auto change = [&](const std::string& map) {
    return replace_slot(map, 0, {Entry{u32_bytes(0), value_bytes(action, 0)}});
  };
  return generation({change("grpx"), change("grpy")}, "gen " + std::to_string(action));
}

// Inner map id in slot 0 of a pinned outer map, or 0 when the slot is empty.
uint32_t pinned_slot0(const std::string& path) {
  auto fd = kernel::open_pinned(path);
  EXPECT_TRUE(fd.ok()) << fd.error().message();
  if (!fd.ok()) return 0;
  const uint32_t slot = 0;
  uint32_t id = 0;
  auto found = kernel::lookup_elem(fd->get(), &slot, &id);
  EXPECT_TRUE(found.ok()) << found.error().message();
  return found.ok() && *found ? id : 0;
}

// Of `ids`, those still alive in the kernel as a map named grpx or grpy.
std::set<uint32_t> live_group_inner_maps(const std::set<uint32_t>& ids) {
  std::set<uint32_t> live;
  auto all = kernel::list_map_ids();
  EXPECT_TRUE(all.ok()) << all.error().message();
  if (!all.ok()) return live;
  for (uint32_t id : *all) {
    if (!ids.count(id)) continue;
    auto fd = kernel::map_fd_by_id(id);
    if (!fd.ok()) continue;  // freed between the listing and now
    auto info = kernel::map_info(fd->get());
    if (info.ok() && (info->name == "grpx" || info->name == "grpy")) live.insert(id);
  }
  return live;
}

class EngineGroupTest : public ::testing::TestWithParam<BarrierMode> {
 protected:
  void SetUp() override {
    POLICYD_REQUIRE_BPF();
    auto fs = PrivateBpffs::create();
    ASSERT_TRUE(fs.ok()) << fs.error().message();
    bpffs_.emplace(std::move(fs).value());

    core::EngineConfig config;
    config.pin_dir = bpffs_->join("pd");
    config.maps = {
        test_map("grpx", core::OuterKind::kArray, BPF_MAP_TYPE_ARRAY, 4, "grp"),
        test_map("grpy", core::OuterKind::kArray, BPF_MAP_TYPE_ARRAY, 4, "grp"),
    };
    config.barrier = GetParam();
    auto engine = core::Engine::open(std::move(config));
    ASSERT_TRUE(engine.ok()) << engine.error().message();
    engine_ = std::move(engine).value();
    ASSERT_EQ(engine_->strategy(), strategy_of(GetParam()));

    // The programs reach the group through the pins, the way any loader would.
    const core::PinPaths& pins = engine_->pins();
    std::vector<std::pair<std::string, std::string>> pinned = {
        {"grpx_a", pins.member("grpx", 0)}, {"grpx_b", pins.member("grpx", 1)},
        {"grpy_a", pins.member("grpy", 0)}, {"grpy_b", pins.member("grpy", 1)},
        {"grp_bank", pins.bank("grp")},
    };
    std::vector<kernel::UniqueFd> fds;
    std::vector<ReusedMap> reuse;
    for (auto& [name, path] : pinned) {
      auto fd = kernel::open_pinned(path);
      ASSERT_TRUE(fd.ok()) << fd.error().message();
      reuse.push_back({name, fd->get()});
      fds.push_back(std::move(fd).value());
    }
    skel_ = load_skeleton(reuse);
    ASSERT_NE(skel_, nullptr);
    prog_fd_ = bpf_program__fd(skel_->progs.check_group);
    ASSERT_GE(prog_fd_, 0);
    skel_->bss->slot = 0;
  }

  // Ids of slot 0 of both members as the engine reports them (the active bank).
  std::vector<uint32_t> engine_slot0_ids() {
    std::vector<uint32_t> ids;
    for (const char* m : {"grpx", "grpy"}) {
      auto slots = engine_->slots(m);
      EXPECT_TRUE(slots.ok()) << slots.error().message();
      if (!slots.ok()) continue;
      for (const core::SlotInfo& s : *slots) {
        if (s.slot == core::array_slot(0)) ids.push_back(s.map_id);
      }
    }
    return ids;
  }

  // The bank word programs read, from the pin.
  uint32_t kernel_bank() {
    auto fd = kernel::open_pinned(engine_->pins().bank("grp"));
    EXPECT_TRUE(fd.ok()) << fd.error().message();
    if (!fd.ok()) return 99;
    const uint32_t key = 0;
    uint32_t bank = 99;
    auto found = kernel::lookup_elem(fd->get(), &key, &bank);
    EXPECT_TRUE(found.ok() && *found);
    return bank;
  }

  // What a program would find for key 0 in `slot` of `member` right now, read from the
  // kernel alone: bank word -> that bank's pinned outer map -> inner map id -> key 0.
  // Returns the entry's action, or nullopt when the slot is empty.
  std::optional<uint32_t> kernel_view_action(const std::string& member, uint32_t slot) {
    const uint32_t bank = kernel_bank();
    EXPECT_LE(bank, 1u);
    if (bank > 1) return std::nullopt;
    auto outer = kernel::open_pinned(engine_->pins().member(member, static_cast<int>(bank)));
    EXPECT_TRUE(outer.ok()) << outer.error().message();
    if (!outer.ok()) return std::nullopt;
    uint32_t id = 0;
    auto found = kernel::lookup_elem(outer->get(), &slot, &id);
    EXPECT_TRUE(found.ok()) << found.error().message();
    if (!found.ok() || !*found) return std::nullopt;
    auto inner = kernel::map_fd_by_id(id);
    EXPECT_TRUE(inner.ok()) << inner.error().message();
    if (!inner.ok()) return std::nullopt;
    const uint32_t key = 0;
    pd_test_value v{};
    auto hit = kernel::lookup_elem(inner->get(), &key, &v);
    EXPECT_TRUE(hit.ok() && *hit);
    return v.action;
  }

  std::optional<PrivateBpffs> bpffs_;
  std::unique_ptr<core::Engine> engine_;
  SkelPtr skel_;
  int prog_fd_ = -1;
};

TEST_P(EngineGroupTest, G7_ProgramsNeverSeeAMixedCut) {
  auto first = engine_->push(both(1));
  ASSERT_TRUE(first.ok()) << first.error().message();
  auto verdict = run_xdp(prog_fd_, 1);
  ASSERT_TRUE(verdict.ok()) << verdict.error().message();
  ASSERT_EQ(skel_->bss->group_ok, 1u) << "after the first commit both members must be found";
  ASSERT_EQ(skel_->bss->misses, 0u);

  std::set<uint32_t> installed;  // every inner map id the group ever held
  std::vector<uint32_t> previous = engine_slot0_ids();
  ASSERT_EQ(previous.size(), 2u);
  installed.insert(previous.begin(), previous.end());
  std::vector<uint32_t> current = previous;
  {
    ProgramLoad load(prog_fd_, kThreads, kRepeat);
    for (uint32_t gen = 2; gen <= kGenerations + 1; ++gen) {
      // Each generation is looked at by at least one whole call before it is replaced.
      ASSERT_TRUE(load.wait_for_full_call()) << "program threads stalled: " << load.error();
      auto report = engine_->push(both(gen));
      ASSERT_TRUE(report.ok()) << "generation " << gen << ": " << report.error().message();
      auto records = engine_->drain();
      ASSERT_TRUE(records.ok()) << "generation " << gen << ": " << records.error().message();
      // The two maps of the previous generation left the data plane.
      ASSERT_EQ(records->size(), 2u) << "generation " << gen;
      for (const core::DrainRecord& r : *records) {
        EXPECT_EQ(r.installed_by, gen - 1);
        EXPECT_EQ(r.replaced_by, gen);
      }
      // The data plane's view (through the bank word) is the whole new generation.
      ASSERT_EQ(kernel_view_action("grpx", 0), gen);
      ASSERT_EQ(kernel_view_action("grpy", 0), gen);
      previous = current;
      current = engine_slot0_ids();
      ASSERT_EQ(current.size(), 2u);
      installed.insert(current.begin(), current.end());
    }
    load.stop();
    ASSERT_EQ(load.error(), "");
    EXPECT_EQ(skel_->bss->runs, load.runs() + 1);
  }
  EXPECT_EQ(skel_->bss->mismatches, 0u) << "a run saw grpx and grpy from different generations";
  EXPECT_EQ(skel_->bss->misses, 0u) << "a run found a member slot empty";
  EXPECT_GT(skel_->bss->group_ok, 0u);
  EXPECT_EQ(skel_->bss->group_ok, skel_->bss->runs);

  // The engine's view is the kernel's: the bank word selects the bank whose slot 0 holds the
  // current generation.
  const uint32_t bank = kernel_bank();
  ASSERT_LE(bank, 1u);
  const core::PinPaths& pins = engine_->pins();
  EXPECT_EQ(pinned_slot0(pins.member("grpx", static_cast<int>(bank))), current[0]);
  EXPECT_EQ(pinned_slot0(pins.member("grpy", static_cast<int>(bank))), current[1]);
  // The inactive bank still references the previous generation: the engine drained those
  // maps and closed its fds, but it rewrites the inactive bank only at the next commit.
  const int inactive = 1 - static_cast<int>(bank);
  EXPECT_EQ(pinned_slot0(pins.member("grpx", inactive)), previous[0]);
  EXPECT_EQ(pinned_slot0(pins.member("grpy", inactive)), previous[1]);

  // No leak: of the 2 * (kGenerations + 1) inner maps the group held, only the current ones
  // and the previous ones (kept alive by the inactive bank, see above) may stay. The kernel
  // frees the others asynchronously (last reference, grace period, kworker): poll.
  const std::set<uint32_t> expected = {current[0], current[1], previous[0], previous[1]};
  std::set<uint32_t> live;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    live = live_group_inner_maps(installed);
    if (live == expected || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(live, expected) << live.size() << " of the group's " << installed.size()
                            << " inner maps are still alive";
  EXPECT_EQ(installed.size(), 2u * (kGenerations + 1));
}

// A generation that changes other slots (here only slot 1 of grpx) still flips the bank, so
// the newly active bank must carry every unchanged slot over from the old one. Were it to keep
// the contents it had two generations ago, grpx and grpy would still agree with each other
// (check_group could not tell), but programs would go back in time: the kernel view catches it.
TEST_P(EngineGroupTest, G7_UnchangedSlotsFollowTheFlip) {
  auto only_x_slot1 = [](uint32_t action) {
    return generation({replace_slot("grpx", 1, {Entry{u32_bytes(0), value_bytes(action, 0)}})},
                      "x1 " + std::to_string(action));
  };
  auto first = engine_->push(both(1));
  ASSERT_TRUE(first.ok()) << first.error().message();

  uint32_t slot0_action = 1;
  std::optional<uint32_t> slot1_action;
  {
    ProgramLoad load(prog_fd_, kThreads, kRepeat);
    for (uint32_t gen = 2; gen <= 60; ++gen) {
      ASSERT_TRUE(load.wait_for_full_call()) << "program threads stalled: " << load.error();
      const bool slot0 = gen % 3 == 0;
      auto report = engine_->push(slot0 ? both(gen) : only_x_slot1(gen));
      ASSERT_TRUE(report.ok()) << "generation " << gen << ": " << report.error().message();
      auto records = engine_->drain();
      ASSERT_TRUE(records.ok()) << records.error().message();
      // Only what the generation replaced left the data plane.
      const size_t replaced = slot0 ? 2 : (slot1_action ? 1 : 0);
      ASSERT_EQ(records->size(), replaced) << "generation " << gen;
      if (slot0)
        slot0_action = gen;
      else
        slot1_action = gen;
      ASSERT_EQ(kernel_view_action("grpx", 0), slot0_action) << "generation " << gen;
      ASSERT_EQ(kernel_view_action("grpy", 0), slot0_action) << "generation " << gen;
      ASSERT_EQ(kernel_view_action("grpx", 1), slot1_action) << "generation " << gen;
      ASSERT_EQ(kernel_view_action("grpy", 1), std::nullopt) << "generation " << gen;
    }
    load.stop();
    ASSERT_EQ(load.error(), "");
  }
  EXPECT_EQ(skel_->bss->mismatches, 0u);
  EXPECT_EQ(skel_->bss->misses, 0u);
  EXPECT_GT(skel_->bss->group_ok, 0u);
}

// G4/G7: when the explicit barrier after a flip fails (injected: the kernel cannot be made to
// fail it), the commit says so in its report and nothing the flip replaced is drained; the
// next commit, which waits successfully, settles them and the drain reads them out then.
TEST_P(EngineGroupTest, G4_G7_AFailedBarrierHoldsBackTheDrainUntilALaterCommitWaits) {
  ASSERT_TRUE(engine_->push(both(1)).ok());
  ASSERT_TRUE(engine_->drain().ok());
  engine_->fail_next_barrier_for_test(EIO);
  auto failed = engine_->push(both(2));
  ASSERT_TRUE(failed.ok()) << failed.error().message();
  ASSERT_TRUE(failed->barrier_failed.has_value()) << "a failed barrier went unreported";
  EXPECT_EQ(failed->barrier_failed->code, ErrorCode::kInternal);
  EXPECT_NE(failed->barrier_failed->message().find("barrier"), std::string::npos)
      << failed->barrier_failed->message();
  EXPECT_EQ(kernel_view_action("grpx", 0), 2u) << "the flip is live";
  auto held = engine_->drain();
  ASSERT_TRUE(held.ok()) << held.error().message();
  EXPECT_EQ(held->size(), 0u) << "maps replaced under a failed barrier were drained";

  auto next = engine_->push(both(3));
  ASSERT_TRUE(next.ok()) << next.error().message();
  EXPECT_FALSE(next->barrier_failed.has_value());
  auto settled = engine_->drain();
  ASSERT_TRUE(settled.ok()) << settled.error().message();
  EXPECT_EQ(settled->size(), 4u) << "generation 1's and 2's maps, drained once a commit waited";
}

// The committer does not acknowledge a generation whose barrier failed: INTERNAL with the
// errno, saying the generation is live; the next push is acknowledged as usual.
TEST_P(EngineGroupTest, G4_G7_APushWhoseBarrierFailedIsNotAcknowledged) {
  core::Engine* engine = engine_.get();
  core::Committer committer(std::move(engine_), core::CommitterOptions{8});
  auto push = [&](core::Generation gen) {
    std::promise<Result<core::PushResult>> done;
    committer.push(core::PushRequest{std::move(gen), 0, ""},
                   [&](Result<core::PushResult> r) { done.set_value(std::move(r)); });
    return done.get_future().get();
  };
  ASSERT_TRUE(push(both(1)).ok());
  engine->fail_next_barrier_for_test(EIO);
  Result<core::PushResult> failed = push(both(2));
  ASSERT_FALSE(failed.ok()) << "a generation was acked though its barrier failed";
  EXPECT_EQ(failed.error().code, ErrorCode::kInternal);
  for (const char* part : {"generation 2 is live but not acknowledged", "barrier",
                           "Input/output error", "drained after the next successful commit"}) {
    EXPECT_NE(failed.error().message().find(part), std::string::npos) << failed.error().message();
  }
  Result<core::PushResult> next = push(both(3));
  ASSERT_TRUE(next.ok()) << next.error().message();
  EXPECT_EQ(next->generation, 3u);
  committer.stop();
}

// With no later push, the idle committer waits an explicit barrier of its own: the retry of the
// unacknowledged push then gets its generation (not a second commit), and what it replaced is
// drained.
TEST_P(EngineGroupTest, G4_G7_G9_AnIdleCommitterSettlesAFailedBarrierAndReplaysItsRetry) {
  core::Engine* engine = engine_.get();
  core::Committer committer(std::move(engine_), core::CommitterOptions{8});
  auto push = [&](core::Generation gen, std::string id) {
    std::promise<Result<core::PushResult>> done;
    committer.push(core::PushRequest{std::move(gen), 0, std::move(id)},
                   [&](Result<core::PushResult> r) { done.set_value(std::move(r)); });
    return done.get_future().get();
  };
  ASSERT_TRUE(push(both(1), "r1").ok());
  engine->fail_next_barrier_for_test(EIO);
  ASSERT_FALSE(push(both(2), "r2").ok());
  Result<core::PushResult> retry = Error{};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < deadline) {
    retry = push(both(2), "r2");
    if (retry.ok()) break;
    EXPECT_EQ(retry.error().code, ErrorCode::kUnavailable) << retry.error().message();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(retry.ok()) << retry.error().message();
  EXPECT_TRUE(retry->replayed);
  EXPECT_EQ(retry->generation, 2u);
  EXPECT_EQ(committer.view()->generation, 2u) << "the retry committed again";
  committer.stop();
}

std::string param_name(const ::testing::TestParamInfo<BarrierMode>& info) {
  return strategy_name(info.param);
}

INSTANTIATE_TEST_SUITE_P(Strategies, EngineGroupTest,
                         ::testing::Values(BarrierMode::kBatch, BarrierMode::kConcurrent),
                         param_name);

// The control: the same two maps used without the bank flip (the bank word stays A, and
// grpx_a / grpy_a are written with one raw outer-map update each, as two plain maps would be).
// Between the two updates at least one whole call of check_group runs, so every one of its
// runs sees the new grpx and the old grpy: check_group must report mismatches. Without this,
// mismatches == 0 above could just mean the check never looks.
class GroupMixControlTest : public BpfTest {};

TEST_F(GroupMixControlTest, G7_SeparateWritesShowAMixedCut) {
  SkelPtr skel = load_skeleton({});  // libbpf creates the group maps; the bank word is 0 (A)
  ASSERT_NE(skel, nullptr);
  const int x = bpf_map__fd(skel->maps.grpx_a);
  const int y = bpf_map__fd(skel->maps.grpy_a);
  const int prog = bpf_program__fd(skel->progs.check_group);
  skel->bss->slot = 0;

  const uint32_t zero = 0;
  auto make_inner = [&](uint32_t action) -> Result<kernel::UniqueFd> {
    kernel::MapSpec spec;
    spec.type = BPF_MAP_TYPE_ARRAY;
    spec.name = "ctl";
    spec.key_size = 4;
    spec.value_size = sizeof(pd_test_value);
    spec.max_entries = PD_TEST_INNER_MAX;
    POLICYD_ASSIGN_OR_RETURN(kernel::UniqueFd fd, kernel::create_map(spec));
    pd_test_value v{};
    v.action = action;
    POLICYD_TRY(kernel::update_elem(fd.get(), &zero, &v));
    return fd;
  };
  auto install = [&](int outer, const kernel::UniqueFd& inner) {
    const auto value = static_cast<uint32_t>(inner.get());
    return kernel::update_elem(outer, &zero, &value);
  };

  auto x0 = make_inner(0);
  auto y0 = make_inner(0);
  ASSERT_TRUE(x0.ok() && y0.ok());
  ASSERT_TRUE(install(x, *x0).ok());
  ASSERT_TRUE(install(y, *y0).ok());
  auto verdict = run_xdp(prog, 1);
  ASSERT_TRUE(verdict.ok()) << verdict.error().message();
  ASSERT_EQ(skel->bss->group_ok, 1u);

  constexpr uint32_t kRounds = 20;
  ProgramLoad load(prog, kThreads, kRepeat);
  for (uint32_t gen = 1; gen <= kRounds; ++gen) {
    auto xn = make_inner(gen);
    auto yn = make_inner(gen);
    ASSERT_TRUE(xn.ok() && yn.ok());
    Status st = install(x, *xn);
    ASSERT_TRUE(st.ok()) << st.error().message();
    ASSERT_TRUE(load.wait_for_full_call()) << "program threads stalled: " << load.error();
    st = install(y, *yn);
    ASSERT_TRUE(st.ok()) << st.error().message();
  }
  load.stop();
  ASSERT_EQ(load.error(), "");
  EXPECT_EQ(skel->bss->misses, 0u);
  EXPECT_GT(skel->bss->mismatches, 0u) << "check_group cannot detect a mixed cut";
  EXPECT_GE(skel->bss->mismatches, uint64_t{kRounds} * kRepeat);
}

}  // namespace
}  // namespace policyd::test
