// History and RequestLedger: the committer's bookkeeping above the kernel, without root.
// Rollback plans from deltas, the history bound, and request-id replay (G9).
#include "core/history.h"

#include <gtest/gtest.h>

#include "core/request_ledger.h"

namespace policyd::core {
namespace {

SlotContents contents(uint8_t tag) {
  return std::make_shared<const SlotData>(
      SlotData{{Entry{{tag, 0, 0, 0}, {tag}}}, Digest(32, static_cast<char>(tag))});
}

SlotKey slot(uint8_t index) { return {"acl", Bytes{index, 0, 0, 0}}; }

// Commits generation `id` changing `changes` into `state` and `history`.
void commit(History& history, SlotState& state, uint64_t id,
            std::vector<std::pair<SlotKey, SlotContents>> changes) {
  auto rec = std::make_shared<GenerationRecord>();
  rec->id = id;
  rec->changed = apply_changes(state, std::move(changes));
  history.push(rec);
}

TEST(HistoryTest, G9_ApplyChangesRecordsWhatEachSlotHeldBefore) {
  SlotState state;
  auto d1 = apply_changes(state, {{slot(0), contents(1)}});
  ASSERT_EQ(d1.size(), 1u);
  EXPECT_EQ(d1[0].before, nullptr);
  auto d2 = apply_changes(state, {{slot(0), contents(2)}, {slot(1), contents(3)}});
  EXPECT_EQ(d2[0].before->digest, contents(1)->digest);
  auto d3 = apply_changes(state, {{slot(0), nullptr}});
  EXPECT_EQ(d3[0].before->digest, contents(2)->digest);
  EXPECT_EQ(state.size(), 1u);
  EXPECT_EQ(state.count(slot(0)), 0u);
}

TEST(HistoryTest, G9_RollbackPlanRestoresEverySlotTheLaterGenerationsChanged) {
  History history(16);
  SlotState state;
  commit(history, state, 1, {{slot(0), contents(1)}, {slot(1), contents(1)}});
  commit(history, state, 2, {{slot(0), contents(2)}, {slot(2), contents(2)}});
  commit(history, state, 3, {{slot(0), contents(3)}, {slot(1), nullptr}});
  auto plan = history.rollback_to(1, state);
  ASSERT_TRUE(plan.ok()) << plan.error().message();
  std::map<SlotKey, SlotContents> want(plan->changes.begin(), plan->changes.end());
  ASSERT_EQ(want.size(), 3u);
  EXPECT_EQ(want.at(slot(0))->digest, contents(1)->digest);  // 3 -> 2 -> 1
  EXPECT_EQ(want.at(slot(1))->digest, contents(1)->digest);  // deleted by 3, back
  EXPECT_EQ(want.at(slot(2)), nullptr);                      // added by 2, removed
  // Rolling back to 2 touches only what 3 changed.
  auto to2 = history.rollback_to(2, state);
  ASSERT_TRUE(to2.ok());
  EXPECT_EQ(to2->changes.size(), 2u);
}

TEST(HistoryTest, G9_RollbackToTheCurrentStateIsEmptyAndAnUnknownGenerationIsNotFound) {
  History history(16);
  SlotState state;
  commit(history, state, 1, {{slot(0), contents(1)}});
  commit(history, state, 2, {{slot(0), contents(2)}});
  commit(history, state, 3, {{slot(0), contents(1)}});  // back to what 1 had
  auto same = history.rollback_to(1, state);
  ASSERT_TRUE(same.ok());
  EXPECT_TRUE(same->changes.empty());
  auto missing = history.rollback_to(7, state);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
}

TEST(HistoryTest, G9_TheBoundEvictsTheOldestAndAppliesAtOnce) {
  History history(3);
  SlotState state;
  for (uint64_t id = 1; id <= 5; ++id) commit(history, state, id, {{slot(0), contents(id)}});
  ASSERT_EQ(history.records().size(), 3u);
  EXPECT_EQ(history.newest().id, 5u);
  EXPECT_EQ(history.oldest_id(), 3u);
  EXPECT_EQ(history.previous_id(), 4u);
  EXPECT_FALSE(history.rollback_to(2, state).ok());
  history.set_limit(1);
  EXPECT_EQ(history.records().size(), 1u);
  EXPECT_EQ(history.previous_id(), 0u);
}

TEST(RequestLedgerTest, G9_ARetryGetsTheOriginalResultMarkedReplayed) {
  RequestLedger ledger(8);
  PushCallback first = [](Result<PushResult>) {};
  ASSERT_TRUE(ledger.claim("r1", first));
  // A retry while the first is in flight waits for it.
  Result<PushResult> waited = Error{};
  PushCallback retry = [&](Result<PushResult> r) { waited = std::move(r); };
  EXPECT_FALSE(ledger.claim("r1", retry));
  PushResult done;
  done.generation = 7;
  auto waiters = ledger.finish("r1", done);
  ASSERT_EQ(waiters.size(), 1u);
  waiters[0](done);
  ASSERT_TRUE(waited.ok());
  EXPECT_EQ(waited->generation, 7u);
  // A retry after it finished is answered at once, replayed.
  Result<PushResult> later = Error{};
  PushCallback again = [&](Result<PushResult> r) { later = std::move(r); };
  EXPECT_FALSE(ledger.claim("r1", again));
  ASSERT_TRUE(later.ok());
  EXPECT_EQ(later->generation, 7u);
  EXPECT_TRUE(later->replayed);
}

TEST(RequestLedgerTest, G9_AFailedPushForgetsItsIdSoItCanBeRetried) {
  RequestLedger ledger(8);
  PushCallback cb = [](Result<PushResult>) {};
  ASSERT_TRUE(ledger.claim("r", cb));
  (void)ledger.finish("r", Error{ErrorCode::kInvalidArgument, 0, "bad"});
  EXPECT_TRUE(ledger.claim("r", cb)) << "a failed id must run again";
}

TEST(RequestLedgerTest, G9_AnUnsettledIdRefusesRetriesUntilSettledThenReplaysItsGeneration) {
  RequestLedger ledger(8);
  Result<PushResult> first = PushResult{}, waiter = PushResult{}, retry = PushResult{};
  PushCallback cb = [&](Result<PushResult> x) { first = std::move(x); };
  PushCallback wait = [&](Result<PushResult> x) { waiter = std::move(x); };
  ASSERT_TRUE(ledger.claim("u", cb));
  ASSERT_FALSE(ledger.claim("u", wait)) << "in flight: the retry waits";
  const Error live{ErrorCode::kInternal, EIO, "barrier failed"};
  PushResult result;
  result.generation = 7;
  result.batch_size = 3;
  result.restored = 5;  // a rollback's
  auto waiters = ledger.finish_unsettled("u", result, live);
  ASSERT_EQ(waiters.size(), 1u);
  for (PushCallback& w : waiters) w(live);
  EXPECT_FALSE(waiter.ok());

  PushCallback later = [&](Result<PushResult> x) { retry = std::move(x); };
  EXPECT_FALSE(ledger.claim("u", later)) << "an unsettled id must not run again";
  ASSERT_FALSE(retry.ok());
  EXPECT_EQ(retry.error().code, ErrorCode::kUnavailable);
  EXPECT_NE(retry.error().message().find("generation 7"), std::string::npos);

  ledger.settle("u");
  EXPECT_FALSE(ledger.claim("u", later));
  ASSERT_TRUE(retry.ok());
  EXPECT_TRUE(retry->replayed);
  EXPECT_EQ(retry->generation, 7u);
  EXPECT_EQ(retry->batch_size, 3u);
  EXPECT_EQ(retry->restored, 5u);
}

TEST(RequestLedgerTest, G6_OnlyTheLastRememberedIdsAreKept) {
  RequestLedger ledger(3);
  PushCallback cb = [](Result<PushResult>) {};
  for (int i = 0; i < 5; ++i) {
    const std::string id = "r" + std::to_string(i);
    ASSERT_TRUE(ledger.claim(id, cb));
    (void)ledger.finish(id, PushResult{});
  }
  EXPECT_EQ(ledger.size(), 3u);
  EXPECT_TRUE(ledger.claim("r0", cb)) << "the oldest id should have been forgotten";
  Result<PushResult> r = Error{};
  PushCallback keep = [&](Result<PushResult> x) { r = std::move(x); };
  EXPECT_FALSE(ledger.claim("r4", keep));
  EXPECT_TRUE(r.ok());
}

TEST(RequestLedgerTest, G9_IdsFromTheRecordAnswerRetriesAfterARestart) {
  RequestLedger ledger(2);
  ledger.remember_recorded("new", 9);  // loaded newest first
  ledger.remember_recorded("old", 8);
  ledger.remember_recorded("older", 7);  // beyond the bound: not kept
  EXPECT_EQ(ledger.size(), 2u);
  Result<PushResult> r = Error{};
  PushCallback cb = [&](Result<PushResult> x) { r = std::move(x); };
  EXPECT_FALSE(ledger.claim("old", cb));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->generation, 8u);
  PushCallback fresh = [](Result<PushResult>) {};
  EXPECT_TRUE(ledger.claim("older", fresh));
}

}  // namespace
}  // namespace policyd::core
