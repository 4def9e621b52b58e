// Unit tests for util/: Error formatting and codes, Result/Status and the propagation macros,
// and WorkerPool's promise that a batch runs concurrently (the committer relies on it to
// overlap the grace-period waits of single outer-map updates).
#include "util/result.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "util/worker_pool.h"

namespace policyd {
namespace {

TEST(ErrorTest, MessageWithoutErrnoIsTheContext) {
  Error e = invalid_argument("map \"acl\" slot 3: key size 4, want 8");
  EXPECT_EQ(e.code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(e.sys_errno, 0);
  EXPECT_EQ(e.message(), "map \"acl\" slot 3: key size 4, want 8");
}

TEST(ErrorTest, MessageWithErrnoAppendsStrerror) {
  Error e = sys_error(ENOENT, "open pinned map /sys/fs/bpf/x");
  EXPECT_EQ(e.message(), std::string("open pinned map /sys/fs/bpf/x: ") + std::strerror(ENOENT));
}

TEST(ErrorTest, SysErrorMapsErrnoToCode) {
  EXPECT_EQ(sys_error(EPERM, "x").code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(sys_error(EACCES, "x").code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(sys_error(E2BIG, "x").code, ErrorCode::kResourceExhausted);
  EXPECT_EQ(sys_error(ENOSPC, "x").code, ErrorCode::kResourceExhausted);
  EXPECT_EQ(sys_error(ENOMEM, "x").code, ErrorCode::kResourceExhausted);
  EXPECT_EQ(sys_error(EINVAL, "x").code, ErrorCode::kInternal);
  EXPECT_EQ(sys_error(EINVAL, "x").sys_errno, EINVAL);
  EXPECT_EQ(failed_precondition("stale").code, ErrorCode::kFailedPrecondition);
}

TEST(ErrorTest, WrapPrependsOuterContextAndKeepsCodeAndErrno) {
  const Error inner = sys_error(E2BIG, "batch update");
  Error copy = inner.wrap("commit gen 4");
  EXPECT_EQ(copy.context, "commit gen 4: batch update");
  EXPECT_EQ(copy.code, ErrorCode::kResourceExhausted);
  EXPECT_EQ(copy.sys_errno, E2BIG);
  EXPECT_EQ(inner.context, "batch update");  // the const& overload leaves the source alone

  Error moved = sys_error(E2BIG, "batch update").wrap("slot 7").wrap("commit gen 4");
  EXPECT_EQ(moved.context, "commit gen 4: slot 7: batch update");
  EXPECT_EQ(moved.message(),
            "commit gen 4: slot 7: batch update: " + std::string(std::strerror(E2BIG)));
}

TEST(ErrorTest, EveryCodeHasADistinctName) {
  const ErrorCode codes[] = {ErrorCode::kInvalidArgument,   ErrorCode::kFailedPrecondition,
                             ErrorCode::kResourceExhausted, ErrorCode::kPermissionDenied,
                             ErrorCode::kNotFound,          ErrorCode::kUnavailable,
                             ErrorCode::kInternal};
  std::vector<std::string> names;
  for (ErrorCode c : codes) {
    std::string name = to_string(c);
    EXPECT_NE(name, "unknown");
    for (const auto& seen : names) EXPECT_NE(seen, name);
    names.push_back(name);
  }
  EXPECT_STREQ(to_string(ErrorCode::kNotFound), "not found");
}

TEST(ResultTest, HoldsValueOrError) {
  Result<int> ok = 42;
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(static_cast<bool>(ok));
  EXPECT_EQ(*ok, 42);
  EXPECT_EQ(ok.value(), 42);

  Result<int> bad = invalid_argument("nope");
  ASSERT_FALSE(bad.ok());
  EXPECT_FALSE(static_cast<bool>(bad));
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(bad.error().context, "nope");
}

TEST(ResultTest, MovesOutMoveOnlyValues) {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(7);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r->get(), 7);
  std::unique_ptr<int> p = std::move(r).value();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 7);
}

TEST(StatusTest, DefaultIsOkAndErrorIsNot) {
  Status ok;
  EXPECT_TRUE(ok.ok());
  Status bad = sys_error(EPERM, "freeze");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kPermissionDenied);
  Error taken = std::move(bad).error();
  EXPECT_EQ(taken.context, "freeze");
}

Result<int> parse_positive(int v) {
  if (v <= 0) return invalid_argument("value " + std::to_string(v) + " is not positive");
  return v;
}

Status check_positive(int v) {
  POLICYD_TRY(parse_positive(v));
  return {};
}

Result<int> doubled(int v) {
  POLICYD_ASSIGN_OR_RETURN(int x, parse_positive(v));
  POLICYD_ASSIGN_OR_RETURN(int y, parse_positive(x));  // two on one scope: distinct temporaries
  return x + y;
}

TEST(ResultMacrosTest, TryPropagatesTheError) {
  EXPECT_TRUE(check_positive(3).ok());
  Status st = check_positive(-1);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().context, "value -1 is not positive");
}

TEST(ResultMacrosTest, AssignOrReturnBindsOrPropagates) {
  Result<int> good = doubled(5);
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, 10);
  Result<int> bad = doubled(0);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
}

// A barrier whose wait gives up after a deadline, so that a pool that does not run the
// batch concurrently makes the test fail instead of hang.
class TimedBarrier {
 public:
  explicit TimedBarrier(int parties) : parties_(parties) {}

  // True when all parties arrived before the deadline.
  bool arrive_and_wait(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    if (++arrived_ == parties_) cv_.notify_all();
    bool all = cv_.wait_for(lock, timeout, [this] { return arrived_ >= parties_ || gave_up_; });
    if (!all || arrived_ < parties_) {
      gave_up_ = true;  // let the others fail fast instead of each waiting out the timeout
      cv_.notify_all();
      return false;
    }
    return true;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int parties_;
  int arrived_ = 0;
  bool gave_up_ = false;
};

TEST(WorkerPoolTest, RunsABatchConcurrently) {
  constexpr int kTasks = 8;
  util::WorkerPool pool(kTasks);
  EXPECT_EQ(pool.size(), static_cast<size_t>(kTasks));
  TimedBarrier barrier(kTasks);
  std::atomic<int> met{0};
  std::vector<std::function<void()>> tasks;
  tasks.reserve(kTasks);
  for (int i = 0; i < kTasks; ++i) {
    tasks.emplace_back([&] {
      if (barrier.arrive_and_wait(std::chrono::seconds(10))) met.fetch_add(1);
    });
  }
  pool.run_all(std::move(tasks));
  EXPECT_EQ(met.load(), kTasks) << "tasks of one batch did not all run at the same time";
}

TEST(WorkerPoolTest, RunsEveryTaskExactlyOnceWithMoreTasksThanThreads) {
  util::WorkerPool pool(3);
  std::vector<std::atomic<int>> counts(100);
  std::vector<std::function<void()>> tasks;
  tasks.reserve(counts.size());
  for (auto& c : counts) tasks.emplace_back([&c] { c.fetch_add(1); });
  pool.run_all(std::move(tasks));
  for (size_t i = 0; i < counts.size(); ++i) EXPECT_EQ(counts[i].load(), 1) << "task " << i;
}

TEST(WorkerPoolTest, EmptyBatchReturnsAndZeroThreadsMeansOne) {
  util::WorkerPool pool(0);
  EXPECT_EQ(pool.size(), 1u);
  pool.run_all({});
  std::atomic<int> ran{0};
  pool.run_all({[&] { ran.fetch_add(1); }, [&] { ran.fetch_add(1); }});
  EXPECT_EQ(ran.load(), 2);
}

TEST(WorkerPoolTest, BatchesFromSeveralCallersEachCompleteFully) {
  util::WorkerPool pool(4);
  constexpr int kCallers = 4;
  constexpr int kPerBatch = 50;
  std::vector<std::atomic<int>> done(kCallers);
  std::vector<std::thread> callers;
  callers.reserve(kCallers);
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      std::vector<std::function<void()>> tasks;
      tasks.reserve(kPerBatch);
      for (int i = 0; i < kPerBatch; ++i) tasks.emplace_back([&, c] { done[c].fetch_add(1); });
      pool.run_all(std::move(tasks));
      // run_all returned: every task of this caller's batch must have finished.
      EXPECT_EQ(done[c].load(), kPerBatch);
    });
  }
  for (auto& t : callers) t.join();
}

}  // namespace
}  // namespace policyd
