// WorkerPool: a fixed set of threads that runs a batch of tasks concurrently and waits for
// all of them. The committer uses it so that blocking outer-map writes overlap their RCU waits;
// the builder uses it to fill inner maps in parallel. Tasks must not throw.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
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

  [[nodiscard]] size_t size() const { return threads_.size(); }

  // Runs every task, at most size() at a time, and returns when all have finished.
  // Safe to call from several threads; never call it from inside a task.
  void run_all(std::vector<std::function<void()>> tasks);

 private:
  void worker_loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace policyd::util
