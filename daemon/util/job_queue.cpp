// JobQueue implementation: one deque and a condition variable; try_run() starts a thread when
// no started one is idle, up to the limit.
#include "util/job_queue.h"

#include <system_error>

namespace policyd::util {

JobQueue::JobQueue(size_t threads, size_t max_waiting)
    : max_threads_(threads == 0 ? 1 : threads), max_waiting_(max_waiting) {}

JobQueue::~JobQueue() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

bool JobQueue::try_run(std::function<void()> job) {
  {
    std::lock_guard lock(mu_);
    if (stopping_ || (max_waiting_ != 0 && jobs_.size() >= max_waiting_)) return false;
    if (idle_ <= jobs_.size() && threads_.size() < max_threads_) {
      try {
        threads_.emplace_back([this] { loop(); });
        ++idle_;  // counts as idle from the start: it takes a job as soon as it runs
      } catch (const std::system_error&) {
        if (threads_.empty()) return false;  // nobody would ever run it
      }
    }
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
  return true;
}

void JobQueue::loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
    if (jobs_.empty()) return;  // stopping and every accepted job run
    std::function<void()> job = std::move(jobs_.front());
    jobs_.pop_front();
    --idle_;
    lock.unlock();
    job();
    job = nullptr;  // its captures go before the next job
    lock.lock();
    ++idle_;
  }
}

size_t JobQueue::idle_threads() const {
  std::lock_guard lock(mu_);
  return idle_;
}

}  // namespace policyd::util
