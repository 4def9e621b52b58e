// JobQueue: fire-and-forget jobs run in order of arrival by up to a fixed number of threads,
// with a bound on the jobs waiting. The API runs reloads (one thread) and reads of live kernel
// state (a few threads) on them, off gRPC's threads and off the committer. Jobs must not
// throw. Threads start when a job finds none idle; the destructor runs every job accepted,
// then joins.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace policyd::util {

class JobQueue {
 public:
  // `max_waiting` 0: unbounded.
  JobQueue(size_t threads, size_t max_waiting);
  ~JobQueue();
  JobQueue(const JobQueue&) = delete;
  JobQueue& operator=(const JobQueue&) = delete;

  // False (and `job` dropped) when max_waiting jobs are waiting already, or no thread could be
  // started to run it.
  [[nodiscard]] bool try_run(std::function<void()> job);

  [[nodiscard]] size_t max_waiting() const { return max_waiting_; }
  // Threads waiting for a job (a job that finished is counted once its thread waits again).
  [[nodiscard]] size_t idle_threads() const;

 private:
  void loop();

  const size_t max_threads_;
  const size_t max_waiting_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  size_t idle_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace policyd::util
