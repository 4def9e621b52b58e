// WorkerPool implementation: one queue, a condition variable, a per-batch countdown.
#include "util/worker_pool.h"

#include <latch>
#include <memory>

namespace policyd::util {

WorkerPool::WorkerPool(size_t threads) {
  if (threads == 0) threads = 1;
  threads_.reserve(threads);
  for (size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { worker_loop(); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void WorkerPool::run_all(std::vector<std::function<void()>> tasks) {
  if (tasks.empty()) return;
  std::latch done(static_cast<std::ptrdiff_t>(tasks.size()));
  {
    std::lock_guard lock(mu_);
    for (auto& task : tasks) {
      queue_.emplace_back([&done, t = std::move(task)] {
        t();
        done.count_down();
      });
    }
  }
  cv_.notify_all();
  done.wait();
}

void WorkerPool::worker_loop() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

}  // namespace policyd::util
