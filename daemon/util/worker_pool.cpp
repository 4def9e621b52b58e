// WorkerPool implementation: one queue, a condition variable, a per-batch countdown; run_all()
// starts a thread for every queued task that no idle thread will take, up to the limit.
#include "util/worker_pool.h"

#include <latch>
#include <system_error>

namespace policyd::util {

WorkerPool::WorkerPool(size_t threads) : max_threads_(threads == 0 ? 1 : threads) {}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

size_t WorkerPool::started() const {
  std::lock_guard lock(mu_);
  return threads_.size();
}

void WorkerPool::run_all(std::vector<std::function<void()>> tasks) {
  if (tasks.empty()) return;
  std::latch done(static_cast<std::ptrdiff_t>(tasks.size()));
  bool run_here = false;
  {
    std::lock_guard lock(mu_);
    for (auto& task : tasks) queue_.push_back({std::move(task), &done});
    // A new thread counts as idle from the start: it takes a queued task as soon as it runs.
    while (threads_.size() < max_threads_ && queue_.size() > idle_) {
      try {
        threads_.emplace_back([this] { worker_loop(); });
      } catch (const std::system_error&) {
        break;  // no more threads: the ones there are (or this one) do the work
      }
      ++idle_;
    }
    run_here = threads_.empty();
  }
  cv_.notify_all();
  while (run_here) {
    Task task;
    {
      std::lock_guard lock(mu_);
      if (queue_.empty()) break;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task.fn();
    task.done->count_down();
  }
  done.wait();
}

void WorkerPool::worker_loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping and drained
    Task task = std::move(queue_.front());
    queue_.pop_front();
    --idle_;
    lock.unlock();
    task.fn();
    task.fn = nullptr;  // its captures go before the caller may return
    lock.lock();
    // Idle again before the batch can end: a caller that returns from run_all() and starts
    // the next batch finds this thread available instead of starting another one.
    ++idle_;
    lock.unlock();
    task.done->count_down();
    lock.lock();
  }
}

}  // namespace policyd::util
