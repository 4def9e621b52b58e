// Unit tests for util/worker_pool: WorkerPool's promise that a batch runs concurrently (the
// committer relies on it to overlap the grace-period waits of single outer-map updates), that
// every task runs once, that batches of several callers each complete, and (G6) that its
// threads start only when a batch needs them and are reused by later batches.
#include "util/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
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

// Threads of this process, from /proc/self/task.
size_t process_threads() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

// `n` tasks that all meet before any returns: they can only finish if they run at once.
std::vector<std::function<void()>> meeting_tasks(int n, TimedBarrier& barrier,
                                                 std::atomic<int>& met) {
  std::vector<std::function<void()>> tasks;
  for (int i = 0; i < n; ++i) {
    tasks.emplace_back([&] {
      if (barrier.arrive_and_wait(std::chrono::seconds(10))) met.fetch_add(1);
    });
  }
  return tasks;
}

TEST(WorkerPoolTest, G6_StartsThreadsOnlyWhenABatchNeedsThemAndReusesThem) {
  // ThreadSanitizer starts a helper thread of its own at the process's first pthread_create:
  // let that happen before counting.
  std::thread([] {}).join();
  const size_t before = process_threads();
  util::WorkerPool pool(64);
  EXPECT_EQ(pool.size(), 64u);
  EXPECT_EQ(pool.started(), 0u) << "a pool starts no thread before its first batch";
  EXPECT_EQ(process_threads(), before);

  TimedBarrier three(3);
  std::atomic<int> met{0};
  pool.run_all(meeting_tasks(3, three, met));
  EXPECT_EQ(met.load(), 3) << "a lazily started batch still runs concurrently";
  EXPECT_EQ(pool.started(), 3u);

  // The same width again: the idle threads take it, none is started.
  for (int round = 0; round < 20; ++round) {
    TimedBarrier again(3);
    met = 0;
    pool.run_all(meeting_tasks(3, again, met));
    ASSERT_EQ(met.load(), 3);
    ASSERT_EQ(pool.started(), 3u) << "round " << round;
  }

  // A wider batch starts only the difference.
  TimedBarrier five(5);
  met = 0;
  pool.run_all(meeting_tasks(5, five, met));
  EXPECT_EQ(met.load(), 5);
  EXPECT_EQ(pool.started(), 5u);
  EXPECT_EQ(process_threads(), before + 5);
}

TEST(WorkerPoolTest, G6_NeverStartsMoreThreadsThanItsSize) {
  util::WorkerPool pool(2);
  std::atomic<int> ran{0};
  std::vector<std::function<void()>> tasks;
  for (int i = 0; i < 50; ++i) tasks.emplace_back([&] { ran.fetch_add(1); });
  pool.run_all(std::move(tasks));
  EXPECT_EQ(ran.load(), 50);
  EXPECT_LE(pool.started(), 2u);
}

}  // namespace
}  // namespace policyd
