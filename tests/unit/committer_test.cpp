// The committer's own logic on a fake engine, without root: acceptance order and group commit
// (G9, G3), expected_generation inside a batch, request-id replay and the retry of a push that
// went live unacknowledged, a refused batch retried one by one (G2), a hash map's occupancy,
// history eviction and rollback diffs (G6, G9), and start-up recovery against a real SQLite
// record (G8). The kernel's side of each is covered by the kernel and e2e suites; here the
// fake records exactly what the committer asked of it.
#include "core/committer.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <set>
#include <thread>

#include "core/state_store.h"
#include "fake_engine.h"
#include "record_write_lock.h"

namespace policyd::core {
namespace {

using namespace std::chrono_literals;

using testing::FakeDataPlane;
using testing::FakeEngine;

OuterMapConfig map_config(const std::string& name, OuterKind kind, uint32_t slots) {
  OuterMapConfig m;
  m.name = name;
  m.kind = kind;
  m.slots = slots;
  m.slot_key_size = 4;
  m.inner.type = BPF_MAP_TYPE_HASH;
  m.inner.key_size = 4;
  m.inner.value_size = 8;
  m.inner.max_entries = 16;
  m.inner.counters = {CounterField{"hits", 0, 8}};
  return m;
}

std::vector<OuterMapConfig> acl_maps() {
  return {map_config("acl", OuterKind::kArray, 16), map_config("tenants", OuterKind::kHash, 2)};
}

Bytes slot(uint32_t index) { return array_slot(index); }

// Slot `index` of `map` holds one entry tagged `tag`.
SlotChange put(const std::string& map, uint32_t index, uint8_t tag) {
  return SlotChange{map, slot(index), false, {Entry{{tag, 0, 0, 0}, {tag, 0, 0, 0, 0, 0, 0, 0}}}};
}
SlotChange del(const std::string& map, uint32_t index) {
  return SlotChange{map, slot(index), true, {}};
}

PushRequest request(const std::string& label, std::vector<SlotChange> changes,
                    std::string request_id = "", uint64_t expected = 0) {
  PushRequest r;
  r.generation.label = label;
  r.generation.changes = std::move(changes);
  r.request_id = std::move(request_id);
  r.expected_generation = expected;
  return r;
}

std::future<Result<PushResult>> push_async(Committer& c, PushRequest r) {
  auto done = std::make_shared<std::promise<Result<PushResult>>>();
  auto result = done->get_future();
  c.push(std::move(r), [done](Result<PushResult> res) { done->set_value(std::move(res)); });
  return result;
}

Result<PushResult> push(Committer& c, PushRequest r) { return push_async(c, std::move(r)).get(); }

Result<PushResult> rollback(Committer& c, uint64_t to) {
  std::promise<Result<PushResult>> done;
  auto result = done.get_future();
  c.rollback(to, 0, "", [&](Result<PushResult> res) { done.set_value(std::move(res)); });
  return result.get();
}

// Polls `cond` for up to 5 s.
template <class F>
bool eventually(F cond) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// Pushes `r` again until a push of it succeeds, for as long as eventually() waits; the last
// result either way.
Result<PushResult> retry_until_ok(Committer& c, const PushRequest& r) {
  Result<PushResult> last = Error{};
  eventually([&] {
    last = push(c, r);
    return last.ok();
  });
  return last;
}

uint8_t tag_of(const testing::FakeInner& inner) { return inner.entries.at(0).key.at(0); }

class CommitterLogicTest : public ::testing::Test {
 protected:
  void SetUp() override { start(); }

  void start(CommitterOptions options = {}) {
    auto engine = std::make_unique<FakeEngine>(acl_maps());
    fake_ = engine.get();
    committer_ = std::make_unique<Committer>(std::move(engine), options);
  }

  // Holds the committer in a commit of its own, then accepts `pushes` and waits until all are
  // built: they are waiting for the committer together, as one batch.
  std::vector<std::future<Result<PushResult>>> queue_behind_a_busy_committer(
      std::vector<PushRequest> pushes) {
    fake_->close_gate();
    busy_ = push_async(*committer_, request("busy", {put("acl", 15, 99)}));
    fake_->wait_at_gate();
    std::vector<std::future<Result<PushResult>>> out;
    for (PushRequest& r : pushes) out.push_back(push_async(*committer_, std::move(r)));
    const size_t n = out.size();
    EXPECT_TRUE(eventually([&] { return committer_->queue_depth().built == n; }));
    return out;
  }
  void release() {
    fake_->open_gate();
    ASSERT_TRUE(busy_.get().ok());
  }

  FakeEngine* fake_ = nullptr;
  std::unique_ptr<Committer> committer_;
  std::future<Result<PushResult>> busy_;
};

TEST_F(CommitterLogicTest,
       G3_G9_PushesQueuedBehindABusyCommitterCommitAsOneBatchInAcceptanceOrder) {
  std::vector<PushRequest> pushes;
  for (uint8_t i = 0; i < 6; ++i) {
    pushes.push_back(request("p" + std::to_string(i), {put("acl", i % 3, i)}));
  }
  auto results = queue_behind_a_busy_committer(std::move(pushes));
  release();
  for (size_t i = 0; i < results.size(); ++i) {
    Result<PushResult> r = results[i].get();
    ASSERT_TRUE(r.ok()) << r.error().message();
    EXPECT_EQ(r->generation, 2 + i) << "generations follow acceptance order";
    EXPECT_EQ(r->batch_size, 6u);
  }
  auto calls = fake_->calls();
  ASSERT_EQ(calls.size(), 2u) << "one commit for the busy push, one for the six behind it";
  EXPECT_EQ(calls[1].labels, (std::vector<std::string>{"p0", "p1", "p2", "p3", "p4", "p5"}));
  // Later pushes of a batch win per slot: slot 0 ends with p3's contents, slot 2 with p5's.
  EXPECT_EQ(tag_of(*fake_->live("acl", slot(0))), 3);
  EXPECT_EQ(tag_of(*fake_->live("acl", slot(2))), 5);
  EXPECT_EQ(committer_->view()->generation, 7u);
}

TEST_F(CommitterLogicTest, G9_ExpectedGenerationCountsTheEarlierPushesOfItsOwnBatch) {
  // Current is 1 (the busy push) when the batch commits: "a" becomes 2, so "b" expecting 2 is
  // right and "c" expecting 1 is stale, though 1 was current when it was accepted.
  auto results = queue_behind_a_busy_committer({request("a", {put("acl", 0, 1)}),
                                                request("b", {put("acl", 1, 2)}, "", 2),
                                                request("c", {put("acl", 2, 3)}, "", 1)});
  release();
  Result<PushResult> a = results[0].get(), b = results[1].get(), c = results[2].get();
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok()) << b.error().message();
  EXPECT_EQ(b->generation, 3u);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(c.error().message().find("expected generation 1, but the current generation is 3"),
            std::string::npos)
      << c.error().message();
  EXPECT_EQ(fake_->calls().back().labels, (std::vector<std::string>{"a", "b"}));
  EXPECT_FALSE(fake_->live("acl", slot(2))) << "the stale push changed nothing";
}

TEST_F(CommitterLogicTest, G9_ARetriedRequestIdIsReplayedAndCommitsOnce) {
  Result<PushResult> first = push(*committer_, request("once", {put("acl", 0, 1)}, "req-1"));
  ASSERT_TRUE(first.ok());
  Result<PushResult> again = push(*committer_, request("once", {put("acl", 0, 1)}, "req-1"));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->replayed);
  EXPECT_EQ(again->generation, first->generation);
  EXPECT_EQ(fake_->calls().size(), 1u);
  EXPECT_EQ(fake_->built_labels().size(), 1u) << "a replay is not even built";
}

TEST_F(CommitterLogicTest, G9_ARetryWhileTheFirstIsInFlightWaitsForItsResult) {
  auto results = queue_behind_a_busy_committer({request("x", {put("acl", 0, 1)}, "req-x")});
  auto retry = push_async(*committer_, request("x", {put("acl", 0, 1)}, "req-x"));
  release();
  Result<PushResult> a = results[0].get(), b = retry.get();
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(a->replayed);
  EXPECT_TRUE(b->replayed);
  EXPECT_EQ(a->generation, b->generation);
  EXPECT_EQ(fake_->calls().size(), 2u);
}

TEST_F(CommitterLogicTest, G9_AFailedPushForgetsItsRequestIdSoItsRetryCommits) {
  fake_->fail_build_of("flaky", Error{ErrorCode::kInternal, ENOMEM, "create inner map"});
  Result<PushResult> failed = push(*committer_, request("flaky", {put("acl", 0, 1)}, "req-f"));
  ASSERT_FALSE(failed.ok());
  Result<PushResult> retry = push(*committer_, request("fixed", {put("acl", 0, 1)}, "req-f"));
  ASSERT_TRUE(retry.ok()) << retry.error().message();
  EXPECT_FALSE(retry->replayed);
  EXPECT_EQ(retry->generation, 1u);
}

TEST_F(CommitterLogicTest, G4_G9_APushLiveWithoutAnAckIsNeverCommittedTwiceByItsRetry) {
  fake_->refuse_barriers(true);  // the idle path's explicit barrier cannot settle it meanwhile
  fake_->fail_next_barrier(Error{ErrorCode::kInternal, EIO, "explicit barrier"});
  Result<PushResult> unacked = push(*committer_, request("g", {put("acl", 0, 1)}, "req-g"));
  ASSERT_FALSE(unacked.ok());
  EXPECT_NE(unacked.error().message().find("generation 1 is live but not acknowledged"),
            std::string::npos)
      << unacked.error().message();

  // No barrier has waited since: the retry is refused, and nothing is committed again.
  Result<PushResult> early = push(*committer_, request("g", {put("acl", 0, 1)}, "req-g"));
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.error().code, ErrorCode::kUnavailable);
  EXPECT_NE(early.error().message().find("its generation 1 is live but not acknowledged yet"),
            std::string::npos)
      << early.error().message();
  EXPECT_EQ(fake_->calls().size(), 1u);

  // A push that writes no slot (it deletes an empty one) waits for no grace period.
  ASSERT_TRUE(push(*committer_, request("noop", {del("acl", 9)})).ok());
  Result<PushResult> still = push(*committer_, request("g", {put("acl", 0, 1)}, "req-g"));
  ASSERT_FALSE(still.ok());
  EXPECT_EQ(still.error().code, ErrorCode::kUnavailable);

  // Another push writes a slot, so its barrier waits: generation 1 is past a grace period now.
  ASSERT_TRUE(push(*committer_, request("h", {put("acl", 1, 2)})).ok());
  Result<PushResult> settled = push(*committer_, request("g", {put("acl", 0, 1)}, "req-g"));
  ASSERT_TRUE(settled.ok()) << settled.error().message();
  EXPECT_TRUE(settled->replayed);
  EXPECT_EQ(settled->generation, 1u);
  EXPECT_EQ(settled->batch_size, 1u);
  EXPECT_EQ(fake_->calls().size(), 3u);
}

TEST_F(CommitterLogicTest, G4_G9_AnIdleCommitterSettlesAnUnacknowledgedPushWithABarrier) {
  ASSERT_TRUE(push(*committer_, request("base", {put("acl", 0, 1)})).ok());
  fake_->refuse_barriers(true);
  fake_->fail_next_barrier(Error{ErrorCode::kInternal, EIO, "explicit barrier"});
  ASSERT_FALSE(push(*committer_, request("g", {put("acl", 0, 2)}, "req-g")).ok());
  EXPECT_EQ(fake_->drained(), 0u) << "what the unacknowledged push replaced is held back";
  Result<PushResult> early = push(*committer_, request("g", {put("acl", 0, 2)}, "req-g"));
  ASSERT_FALSE(early.ok());

  // No other push comes: the idle committer's explicit barrier settles it.
  fake_->refuse_barriers(false);
  Result<PushResult> settled =
      retry_until_ok(*committer_, request("g", {put("acl", 0, 2)}, "req-g"));
  ASSERT_TRUE(settled.ok()) << settled.error().message();
  EXPECT_TRUE(settled->replayed);
  EXPECT_EQ(settled->generation, 2u);
  EXPECT_GE(fake_->barriers(), 1u);
  EXPECT_EQ(fake_->drained(), 1u) << "and what it replaced is drained after that barrier";
  EXPECT_EQ(fake_->calls().size(), 2u);
}

TEST_F(CommitterLogicTest, G2_ARefusedBatchIsRetriedOneByOneAndOnlyTheRefusedPushFails) {
  fake_->refuse_label("bad", Error{ErrorCode::kInternal, EPERM, "update outer map \"acl\""});
  auto results = queue_behind_a_busy_committer({request("good1", {put("acl", 0, 1)}),
                                                request("bad", {put("acl", 1, 2)}),
                                                request("good2", {put("acl", 2, 3)})});
  release();
  Result<PushResult> g1 = results[0].get(), bad = results[1].get(), g2 = results[2].get();
  ASSERT_TRUE(g1.ok());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().sys_errno, EPERM);
  ASSERT_TRUE(g2.ok());
  EXPECT_EQ(g1->batch_size, 1u) << "retried alone";
  EXPECT_EQ(g2->generation, g1->generation + 1) << "no id is used up by the refused push";
  auto calls = fake_->calls();
  ASSERT_EQ(calls.size(), 5u);  // busy, the refused batch, then good1, bad, good2 alone
  EXPECT_TRUE(calls[1].refused);
  EXPECT_EQ(calls[1].labels, (std::vector<std::string>{"good1", "bad", "good2"}));
  EXPECT_TRUE(calls[3].refused);
  EXPECT_FALSE(fake_->live("acl", slot(1)));
  EXPECT_TRUE(fake_->live("acl", slot(2)));
}

TEST_F(CommitterLogicTest, G2_AGenerationThatOverfillsAHashMapIsRefusedAloneBeforeTheEngine) {
  // "tenants" holds 2 slots: the batch's third new slot does not fit.
  auto results = queue_behind_a_busy_committer(
      {request("t1", {put("tenants", 1, 1)}), request("t2", {put("tenants", 2, 2)}),
       request("t3", {put("tenants", 3, 3)}), request("t1-again", {put("tenants", 1, 4)})});
  release();
  ASSERT_TRUE(results[0].get().ok());
  ASSERT_TRUE(results[1].get().ok());
  Result<PushResult> full = results[2].get();
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.error().code, ErrorCode::kResourceExhausted);
  EXPECT_NE(full.error().message().find("holds at most 2 slots"), std::string::npos);
  ASSERT_TRUE(results[3].get().ok()) << "replacing a slot in use needs no new one";
  EXPECT_EQ(fake_->calls().back().labels, (std::vector<std::string>{"t1", "t2", "t1-again"}));
}

TEST_F(CommitterLogicTest, G6_G9_HistoryKeepsTheLastGenerationsAndAnEvictedOneCannotBeRestored) {
  committer_.reset();
  start(CommitterOptions{3, 4096});
  for (uint8_t i = 1; i <= 5; ++i) {
    ASSERT_TRUE(push(*committer_, request("g" + std::to_string(i), {put("acl", 0, i)})).ok());
  }
  auto view = committer_->view();
  ASSERT_EQ(view->history.size(), 3u);
  EXPECT_EQ(view->history.front()->id, 5u);
  EXPECT_EQ(view->history.back()->id, 3u);
  Result<PushResult> gone = rollback(*committer_, 2);
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.error().code, ErrorCode::kNotFound);
  Result<PushResult> kept = rollback(*committer_, 3);
  ASSERT_TRUE(kept.ok()) << kept.error().message();
  EXPECT_EQ(kept->restored, 3u);
  EXPECT_EQ(tag_of(*fake_->live("acl", slot(0))), 3);
}

TEST_F(CommitterLogicTest, G9_ARollbackCommitsOnlyTheSlotsThatDifferFromTheTarget) {
  ASSERT_TRUE(
      push(*committer_, request("one", {put("acl", 0, 1), put("acl", 1, 1), put("acl", 2, 1)}))
          .ok());
  ASSERT_TRUE(
      push(*committer_, request("two", {put("acl", 1, 2), del("acl", 2), put("acl", 3, 2)})).ok());
  const uint32_t untouched = fake_->live("acl", slot(0))->id;
  Result<PushResult> r = rollback(*committer_, 1);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->generation, 3u);
  EXPECT_EQ(r->restored, 1u);
  const auto changes = fake_->calls().back().changes;
  ASSERT_EQ(changes.size(), 3u) << "slots 1, 2 and 3 differ; slot 0 does not";
  for (const BuiltChange& c : changes) EXPECT_NE(c.slot, slot(0));
  EXPECT_EQ(fake_->live("acl", slot(0))->id, untouched);
  EXPECT_EQ(tag_of(*fake_->live("acl", slot(1))), 1);
  EXPECT_EQ(tag_of(*fake_->live("acl", slot(2))), 1);
  EXPECT_FALSE(fake_->live("acl", slot(3)));
  EXPECT_EQ(committer_->view()->history.front()->label, "rollback to 1");

  Result<PushResult> again = rollback(*committer_, 1);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(fake_->calls().size(), 3u) << "nothing to change: nothing committed";
}

TEST_F(CommitterLogicTest, G4_StopFinishesEveryAcceptedPushAndRefusesLaterOnes) {
  auto results = queue_behind_a_busy_committer(
      {request("a", {put("acl", 0, 1)}), request("b", {put("acl", 1, 2)})});
  std::thread stopper([&] { committer_->stop(); });
  ASSERT_TRUE(eventually([&] { return !committer_->state_snapshot().ok(); }))
      << "stop() refuses new work at once, before the busy commit ends";
  fake_->open_gate();
  stopper.join();
  EXPECT_TRUE(busy_.get().ok());
  for (auto& r : results) EXPECT_TRUE(r.get().ok());
  Result<PushResult> late = push(*committer_, request("late", {put("acl", 2, 3)}));
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().code, ErrorCode::kUnavailable);
}

// ---- recovery (G8), on a real record ----------------------------------------------------------

class CommitterRecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/policyd-committer-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    committer_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Starts a committer on the record in dir_ and `plane` (what the pins hold).
  Result<std::unique_ptr<Committer>> open(std::shared_ptr<FakeDataPlane> plane,
                                          const std::string& pin_dir = "/fake/pins",
                                          CommitterOptions options = {}) {
    auto engine = std::make_unique<FakeEngine>(acl_maps(), std::move(plane), pin_dir);
    fake_ = engine.get();
    POLICYD_ASSIGN_OR_RETURN(std::unique_ptr<StateStore> store, StateStore::open(dir_));
    return Committer::open(std::move(engine), std::move(store), options);
  }
  void start(std::shared_ptr<FakeDataPlane> plane, CommitterOptions options = {}) {
    auto c = open(std::move(plane), "/fake/pins", options);
    ASSERT_TRUE(c.ok()) << c.error().message();
    committer_ = std::move(c).value();
  }
  // Two generations with request ids, then a clean stop: the pins hold generation 2.
  void run_first_daemon() {
    start(plane_);
    ASSERT_TRUE(push(*committer_, request("one", {put("acl", 0, 1), put("acl", 1, 1)}, "r1")).ok());
    ASSERT_TRUE(push(*committer_, request("two", {put("acl", 1, 2)}, "r2")).ok());
    committer_.reset();
  }

  std::string dir_;
  std::shared_ptr<FakeDataPlane> plane_ = std::make_shared<FakeDataPlane>();
  FakeEngine* fake_ = nullptr;
  std::unique_ptr<Committer> committer_;
};

TEST_F(CommitterRecoveryTest, G8_ARestartOnPinsThatMatchTheRecordTouchesNothingAndKeepsIds) {
  run_first_daemon();
  start(plane_);
  EXPECT_TRUE(fake_->calls().empty()) << "no commit and no restore";
  auto view = committer_->view();
  EXPECT_EQ(view->generation, 2u);
  EXPECT_EQ(view->label, "two");
  ASSERT_EQ(view->history.size(), 2u);
  Result<PushResult> replay = push(*committer_, request("one", {}, "r1"));
  ASSERT_TRUE(replay.ok()) << replay.error().message();
  EXPECT_TRUE(replay->replayed);
  EXPECT_EQ(replay->generation, 1u);
  Result<PushResult> next = push(*committer_, request("three", {put("acl", 2, 3)}));
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->generation, 3u);
}

TEST_F(CommitterRecoveryTest, G8_AnEmptyDataPlaneGetsTheRecordedGenerationUnderItsOwnId) {
  run_first_daemon();
  start(std::make_shared<FakeDataPlane>());  // a reboot: the bpffs is empty
  auto calls = fake_->calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_TRUE(calls[0].restore);
  EXPECT_EQ(calls[0].id, 2u) << "re-committed as generation 2, not as a new one";
  EXPECT_EQ(calls[0].changes.size(), 2u);
  EXPECT_EQ(tag_of(*fake_->live("acl", slot(0))), 1);
  EXPECT_EQ(tag_of(*fake_->live("acl", slot(1))), 2);
  EXPECT_EQ(committer_->view()->generation, 2u);
}

TEST_F(CommitterRecoveryTest, G8_OnlySlotsThatDifferFromTheRecordAreRepaired) {
  run_first_daemon();
  // A crash mid-commit, say: slot 1 holds another inner map, slot 5 a stray one, slot 0 is
  // the recorded map itself.
  const uint32_t slot0 = plane_->slots.at({"acl", slot(0)}).id;
  plane_->slots.at({"acl", slot(1)}).id = plane_->next_id++;
  plane_->slots[{"acl", slot(5)}] = testing::FakeInner{plane_->next_id++, 0, {}, {}};
  start(plane_);
  auto calls = fake_->calls();
  ASSERT_EQ(calls.size(), 1u);
  ASSERT_TRUE(calls[0].restore);
  std::set<Bytes> repaired;
  for (const BuiltChange& c : calls[0].changes) repaired.insert(c.slot);
  EXPECT_EQ(repaired, (std::set<Bytes>{slot(1), slot(5)}));
  EXPECT_EQ(fake_->live("acl", slot(0))->id, slot0) << "the matching slot is not touched";
  EXPECT_FALSE(fake_->live("acl", slot(5)));
  EXPECT_EQ(tag_of(*fake_->live("acl", slot(1))), 2);
}

TEST_F(CommitterRecoveryTest, G8_ARecordOfAnotherPinDirIsRefusedAndNothingIsTouched) {
  run_first_daemon();
  const auto before = plane_->slots;
  Result<std::unique_ptr<Committer>> other = open(plane_, "/elsewhere");  // its fake is gone
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(other.error().message().find("records the maps of pin_dir /fake/pins"),
            std::string::npos)
      << other.error().message();
  ASSERT_EQ(plane_->slots.size(), before.size());
  for (const auto& [key, inner] : before) EXPECT_EQ(plane_->slots.at(key).id, inner.id);
}

TEST_F(CommitterRecoveryTest, G8_WithoutARecordThePinsAreAdoptedAsTheyAreAndRecorded) {
  plane_->slots[{"acl", slot(4)}] =
      testing::FakeInner{plane_->next_id++, 0, {Entry{{7, 0, 0, 0}, {7, 0, 0, 0, 0, 0, 0, 0}}}, {}};
  start(plane_);
  EXPECT_TRUE(fake_->calls().empty()) << "adopted, not re-committed";
  auto view = committer_->view();
  ASSERT_EQ(view->history.size(), 1u);
  EXPECT_EQ(view->history.front()->label, "adopted");
  committer_.reset();
  // What was adopted is in the record: after a reboot it is re-created from there.
  start(std::make_shared<FakeDataPlane>());
  auto calls = fake_->calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_TRUE(calls[0].restore);
  EXPECT_EQ(tag_of(*fake_->live("acl", slot(4))), 7);
}

TEST_F(CommitterRecoveryTest, G5_G8_DrainedTotalsAreRecordedAndComeBackAfterARestart) {
  start(plane_);
  ASSERT_TRUE(push(*committer_, request("one", {put("acl", 0, 1)})).ok());
  fake_->add_hits("acl", slot(0), "hits", 41);
  ASSERT_TRUE(push(*committer_, request("two", {put("acl", 0, 2)})).ok());  // drains 41
  fake_->add_hits("acl", slot(0), "hits", 1);
  committer_.reset();  // stop(): the drained total is flushed
  EXPECT_TRUE(plane_->drain_pins.empty()) << "released once the total was durable";
  start(plane_);
  Result<CounterReading> counters = committer_->read_counters("acl");
  ASSERT_TRUE(counters.ok());
  const SlotCounters& c = counters->table.at({"acl", slot(0)});
  EXPECT_EQ(c.drained.at("hits"), 41u);
  EXPECT_EQ(c.live.at("hits"), 1u);
}

// G8: a drained map's pin stays until a durable record carries its totals. The commit whose
// record carries them releases the pins after its acks (the unlinks are not on their path) and
// before its own drain pins the maps it replaced, which its record does not account for.
TEST_F(CommitterRecoveryTest, G5_G8_DrainPinsGoAfterTheAcksOfTheRecordThatCarriesTheirTotals) {
  CommitterOptions options;
  options.idle_flush_delay = std::chrono::hours(1);  // no write between the commits
  start(plane_, options);
  // Returns once the committer has finished everything before it: a push it refuses on its own
  // thread (a stale expected generation), which writes nothing.
  auto committer_idle = [&] {
    Result<PushResult> stale = push(*committer_, request("stale", {put("acl", 2, 9)}, "", 1));
    ASSERT_FALSE(stale.ok());
    EXPECT_NE(stale.error().message().find("expected generation 1"), std::string::npos)
        << stale.error().message();
  };
  ASSERT_TRUE(push(*committer_, request("one", {put("acl", 0, 1)})).ok());
  const uint32_t first = fake_->live("acl", slot(0))->id;
  ASSERT_TRUE(push(*committer_, request("two", {put("acl", 0, 2)})).ok());
  const uint32_t second = fake_->live("acl", slot(0))->id;
  committer_idle();
  ASSERT_EQ(fake_->drained(), 1u);
  EXPECT_EQ(fake_->unreleased_drains(), std::vector<uint32_t>{first}) << "pinned until recorded";

  // "three" records the first map's totals: at its ack that map is still pinned, afterwards
  // it is not, and the second map (which three replaced) is pinned until the next write.
  std::promise<std::vector<uint32_t>> at_ack;
  committer_->push(request("three", {put("acl", 0, 3)}), [&](Result<PushResult> r) {
    EXPECT_TRUE(r.ok());
    at_ack.set_value(fake_->unreleased_drains());
  });
  EXPECT_EQ(at_ack.get_future().get(), std::vector<uint32_t>{first});
  committer_idle();
  ASSERT_EQ(fake_->drained(), 2u);
  EXPECT_EQ(fake_->unreleased_drains(), std::vector<uint32_t>{second})
      << "the pins released were those the record carried, and only those";
}

TEST_F(CommitterRecoveryTest, G8_G9_APushWhoseRecordFailedIsRetriedWithoutASecondCommit) {
  start(plane_);
  RecordWriteLock lock(dir_ + "/state.db");
  ASSERT_TRUE(lock.held()) << lock.error();
  Result<PushResult> unrecorded = push(*committer_, request("one", {put("acl", 0, 1)}, "r1"));
  ASSERT_FALSE(unrecorded.ok());
  EXPECT_NE(unrecorded.error().message().find("generation 1 is live but could not be recorded"),
            std::string::npos)
      << unrecorded.error().message();
  Result<PushResult> early = push(*committer_, request("one", {put("acl", 0, 1)}, "r1"));
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.error().code, ErrorCode::kUnavailable);
  EXPECT_EQ(fake_->calls().size(), 1u);

  lock.release();
  // The idle flush writes the record that failed; the retry then gets generation 1.
  Result<PushResult> settled =
      retry_until_ok(*committer_, request("one", {put("acl", 0, 1)}, "r1"));
  ASSERT_TRUE(settled.ok()) << settled.error().message();
  EXPECT_TRUE(settled->replayed);
  EXPECT_EQ(settled->generation, 1u);
  EXPECT_EQ(fake_->calls().size(), 1u);
  committer_.reset();
  start(plane_);
  EXPECT_EQ(committer_->view()->generation, 1u) << "the record holds generation 1";
  EXPECT_TRUE(fake_->calls().empty());
}

TEST_F(CommitterRecoveryTest, G4_G8_G9_APushWhoseBarrierAndRecordBothFailedSettlesOnlyOnBoth) {
  start(plane_);
  fake_->refuse_barriers(true);
  fake_->fail_next_barrier(Error{ErrorCode::kInternal, EIO, "explicit barrier"});
  {
    RecordWriteLock lock(dir_ + "/state.db");
    ASSERT_TRUE(lock.held()) << lock.error();
    ASSERT_FALSE(push(*committer_, request("one", {put("acl", 0, 1)}, "r1")).ok());
  }
  // The record can catch up now, but no barrier has waited: retries stay refused.
  for (int i = 0; i < 10; ++i) {
    Result<PushResult> r = push(*committer_, request("one", {put("acl", 0, 1)}, "r1"));
    ASSERT_FALSE(r.ok()) << "retry " << i;
    EXPECT_EQ(r.error().code, ErrorCode::kUnavailable);
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
  }
  fake_->refuse_barriers(false);
  Result<PushResult> settled =
      retry_until_ok(*committer_, request("one", {put("acl", 0, 1)}, "r1"));
  ASSERT_TRUE(settled.ok()) << settled.error().message();
  EXPECT_EQ(settled->generation, 1u);
  EXPECT_EQ(fake_->calls().size(), 1u);
  committer_.reset();
  start(plane_);
  EXPECT_EQ(committer_->view()->generation, 1u) << "the record caught up";
}

TEST_F(CommitterRecoveryTest,
       G8_G9_ARestartBeforeTheRecordCaughtUpForgetsThePushSoItsRetryCommits) {
  start(plane_);
  {
    RecordWriteLock lock(dir_ + "/state.db");
    ASSERT_TRUE(lock.held()) << lock.error();
    ASSERT_FALSE(push(*committer_, request("one", {put("acl", 0, 1)}, "r1")).ok());
    committer_.reset();  // stops while the lock is held: its last flush fails too
  }
  // The record still holds generation 0: the restart takes the unrecorded slot back out.
  start(plane_);
  EXPECT_EQ(committer_->view()->generation, 0u);
  EXPECT_FALSE(fake_->live("acl", slot(0)));
  Result<PushResult> retry = push(*committer_, request("one", {put("acl", 0, 1)}, "r1"));
  ASSERT_TRUE(retry.ok()) << retry.error().message();
  EXPECT_FALSE(retry->replayed);
  EXPECT_EQ(retry->generation, 1u);
}

}  // namespace
}  // namespace policyd::core
