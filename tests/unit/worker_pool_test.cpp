// Unit tests for util/worker_pool: WorkerPool's promise that a batch runs concurrently (the
// committer relies on it to overlap the grace-period waits of single outer-map updates), that
// every task runs once, and that batches of several callers each complete.
#include "util/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace policyd {
namespace {

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
