// The file-descriptor budget (DESIGN.md, Scale; G1 a refused push changes nothing, G6 bounded
// resources): policyd keeps one fd per live inner map, raises its soft RLIMIT_NOFILE to the
// hard limit at start, and refuses a push whose new inner maps would not fit in what remains,
// whole and before any map is created, with RESOURCE_EXHAUSTED naming the limit.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "daemon_fixture.h"

namespace policyd::e2e {
namespace {

using grpc::StatusCode;

constexpr uint32_t kBigSlots = 4096;

// The default maps plus "big": 4,096 slots of 1-entry hash inner maps, one fd each when full.
DaemonOptions big_map_options(uint64_t soft, uint64_t hard) {
  DaemonOptions o;
  o.maps_yaml += R"(  - name: big
    type: array_of_maps
    slots: 4096
    drain: none
    inner:
      type: hash
      max_entries: 1
      key:   [{name: id, type: u32}]
      value: [{name: v, type: u32}]
)";
  o.max_entries_per_push = kBigSlots;
  o.max_message_bytes = 4 * 1024 * 1024;
  o.log_level = "info";
  o.nofile = {{soft, hard}};
  return o;
}

// Replaces big's slots [first, first + count) with one entry each, valued `value`.
v1::PushGenerationRequest fill_big(uint32_t first, uint32_t count, uint32_t value,
                                   const std::string& label) {
  v1::PushGenerationRequest req;
  req.set_label(label);
  for (uint32_t i = first; i < first + count; ++i) {
    add_change(req, "big", index_slot(i), {raw_entry(u32le(i), u32le(value))});
  }
  return req;
}

// Started with soft = hard = 256: there is nothing to raise, and ~150 fds remain for inner maps.
class FdBudgetLowLimitTest : public DaemonTest {
 protected:
  DaemonOptions daemon_options() const override { return big_map_options(256, 256); }
};

TEST_F(FdBudgetLowLimitTest, G1_G6_PushNeedingMoreFdsThanRemainIsRefusedWholeAndChangesNothing) {
  push_ok(fill_big(0, 64, 1, "base"));
  const v1::GetStateResponse before = get_state();
  const KernelSnapshot kernel_before = snapshot();
  ASSERT_EQ(kernel_before.at("big").size(), 64u);

  // 300 new inner maps: more than the whole limit minus what the daemon already holds.
  grpc::Status s = push(fill_big(64, 300, 2, "too-many-fds"));
  EXPECT_TRUE(has_error(s, StatusCode::RESOURCE_EXHAUSTED,
                        {"needs 300 new inner-map fds", "RLIMIT_NOFILE 256", "LimitNOFILE="}))
      << describe(s);

  ASSERT_TRUE(daemon().running()) << "policyd died";
  const v1::GetStateResponse after = get_state();
  EXPECT_EQ(after.generation(), before.generation()) << "the generation moved";
  EXPECT_EQ(after.label(), "base");
  EXPECT_EQ(after.generations_committed(), before.generations_committed());
  EXPECT_EQ(snapshot(), kernel_before) << "the data plane changed";
  std::optional<KernelSlot> slot64 = kernel_slot("big", 64u);
  EXPECT_FALSE(slot64.has_value()) << "slot 64 was written by the refused push";

  // A push that fits still works, and replacing slots that are already full too.
  EXPECT_EQ(push_ok(fill_big(64, 32, 3, "fits")), before.generation() + 1);
  EXPECT_EQ(push_ok(fill_big(0, 64, 4, "replace")), before.generation() + 2);
  std::optional<KernelSlot> slot70 = kernel_slot("big", 70u);
  ASSERT_TRUE(slot70.has_value());
  EXPECT_EQ(slot70->entries, (std::map<Bytes, Bytes>{{u32le(70), u32le(3)}}));
  EXPECT_EQ(snapshot().at("big").size(), 96u);
}

// A restart under a limit too low for the pinned slots refuses to start, naming the limit, and
// touches nothing: started again with enough fds, the daemon adopts the very same inner maps.
TEST_F(FdBudgetLowLimitTest, G6_RestartThatCannotAdoptEverySlotRefusesToStartAndNamesTheLimit) {
  push_ok(fill_big(0, 150, 1, "base"));
  const v1::GetStateResponse before = get_state();
  const KernelSnapshot kernel_before = snapshot();
  stop_daemon_expect_clean();

  DaemonOptions low = daemon().options();
  low.nofile = {{160, 160}};
  ASSERT_TRUE(daemon().rewrite_config(low).ok());
  Status refused = daemon().start();
  ASSERT_FALSE(refused.ok()) << "policyd started with 150 inner maps to adopt under 160 fds";
  EXPECT_TRUE(contains_all(refused.error().message(),
                           {"adopting the 150 slots of map \"big\" needs 150 new inner-map fds",
                            "RLIMIT_NOFILE 160", "LimitNOFILE="}))
      << refused.error().message();
  EXPECT_EQ(snapshot(), kernel_before) << "the refused start changed the data plane";

  DaemonOptions enough = daemon().options();
  enough.nofile = {{256, 256}};
  ASSERT_TRUE(daemon().rewrite_config(enough).ok());
  restart_daemon();
  EXPECT_EQ(snapshot(), kernel_before) << "adoption wrote slots";
  const v1::GetStateResponse after = get_state();
  EXPECT_EQ(after.generation(), before.generation());
  EXPECT_EQ(after.label(), "base");
}

// systemd's default: soft 1,024, hard higher. The daemon lifts the soft limit and holds 4,096
// inner maps after one push.
class FdBudgetSystemdLimitTest : public DaemonTest {
 protected:
  DaemonOptions daemon_options() const override { return big_map_options(1024, 20000); }
};

TEST_F(FdBudgetSystemdLimitTest, G6_SoftLimitIsRaisedToTheHardLimitAnd4096SlotsFillInOnePush) {
  const std::pair<std::string, std::string> limit = open_files_limit(daemon().pid());
  EXPECT_EQ(limit.first, "20000") << "the soft RLIMIT_NOFILE was not raised";
  EXPECT_EQ(limit.second, "20000");
  EXPECT_TRUE(contains_all(daemon().log(), {"RLIMIT_NOFILE: soft 1024 -> 20000"}))
      << "the raise is not logged";

  v1::PushGenerationResponse resp;
  grpc::Status s = push(fill_big(0, kBigSlots, 1, "fill"), &resp);
  ASSERT_TRUE(s.ok()) << describe(s);
  EXPECT_EQ(snapshot().at("big").size(), kBigSlots);
  std::optional<KernelSlot> last = kernel_slot("big", kBigSlots - 1);
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->entries, (std::map<Bytes, Bytes>{{u32le(kBigSlots - 1), u32le(1)}}));
}

}  // namespace
}  // namespace policyd::e2e
