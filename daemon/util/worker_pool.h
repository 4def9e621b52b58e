// WorkerPool: up to a fixed number of threads that run a batch of tasks concurrently and wait
// for all of them. The committer uses it so that blocking outer-map writes overlap their RCU
// waits; the builder uses it to fill inner maps in parallel. Tasks must not throw.
//
// Threads start lazily: a batch starts as many as it has tasks that no idle thread can take,
// up to size(), and they stay for later batches. A pool sized for 64 concurrent outer-map
// writes costs no thread until a round needs them (with batch calls a round has one call per
// outer map, so most never start).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <latch>
#include <mutex>
#include <thread>
#include <vector>

namespace policyd::util {

class WorkerPool {
 public:
  explicit WorkerPool(size_t threads);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // The most tasks that run at the same time.
  [[nodiscard]] size_t size() const { return max_threads_; }
  // Threads started so far (never more than size()).
  [[nodiscard]] size_t started() const;

  // Runs every task, at most size() at a time, and returns when all have finished.
  // Safe to call from several threads; never call it from inside a task. If not even one
  // thread can be started, the tasks run one after another on the calling thread.
  void run_all(std::vector<std::function<void()>> tasks);

 private:
  struct Task {
    std::function<void()> fn;
    std::latch* done = nullptr;  // the batch's countdown
  };
  void worker_loop();

  const size_t max_threads_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  size_t idle_ = 0;  // started threads not running a task (they take queued ones first)
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace policyd::util
