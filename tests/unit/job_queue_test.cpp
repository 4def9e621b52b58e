// util::JobQueue: jobs run in arrival order on at most N threads, threads start only when
// needed, the waiting bound refuses the next job, and destruction runs what was accepted.
#include "util/job_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

namespace policyd::util {
namespace {

TEST(JobQueueTest, OneThreadRunsJobsInArrivalOrder) {
  std::mutex mu;
  std::vector<int> order;
  {
    JobQueue q(1, 0);
    for (int i = 0; i < 100; ++i) {
      ASSERT_TRUE(q.try_run([&, i] {
        std::lock_guard lock(mu);
        order.push_back(i);
      }));
    }
  }  // the destructor runs every accepted job
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
}

TEST(JobQueueTest, G6_TheWaitingBoundRefusesTheNextJobAndFreesAsJobsStart) {
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> running{0}, ran{0};
  JobQueue q(2, 3);
  auto blocker = [&] {
    running.fetch_add(1);
    released.wait();
    ran.fetch_add(1);
  };
  ASSERT_TRUE(q.try_run(blocker));
  ASSERT_TRUE(q.try_run(blocker));
  while (running.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  // Both threads are busy: three may wait, the fourth is refused.
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(q.try_run([&] { ran.fetch_add(1); })) << i;
  EXPECT_FALSE(q.try_run([&] { ran.fetch_add(1000); }));
  EXPECT_EQ(q.max_waiting(), 3u);
  release.set_value();
  while (ran.load() < 5) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(q.try_run([&] { ran.fetch_add(1); }));  // room again
  while (ran.load() < 6) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(ran.load(), 6);
}

TEST(JobQueueTest, G6_ThreadsStartOnlyWhenNoneIsIdle) {
  JobQueue q(4, 0);
  std::mutex mu;
  std::vector<std::thread::id> threads;
  for (int i = 0; i < 20; ++i) {
    std::promise<void> done;
    std::future<void> f = done.get_future();
    ASSERT_TRUE(q.try_run([&] {
      {
        std::lock_guard lock(mu);
        threads.push_back(std::this_thread::get_id());
      }
      done.set_value();
    }));
    f.wait();
    // The job's thread counts as idle again once it waits for the next job.
    while (q.idle_threads() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // One job at a time never needs a second thread.
  for (const auto& id : threads) EXPECT_EQ(id, threads.front());
}

}  // namespace
}  // namespace policyd::util
