// Runs a callable when its scope ends, however it ends: a failed ASSERT returns early, and a
// test that holds a thread (a committer job, a reader loop) must still release and join it, so
// that the failure is reported instead of ending in std::terminate or a hang.
#pragma once

#include <utility>

namespace policyd::test {

template <typename F>
class ScopeExit {
 public:
  explicit ScopeExit(F f) : f_(std::move(f)) {}
  ~ScopeExit() { f_(); }
  ScopeExit(const ScopeExit&) = delete;
  ScopeExit& operator=(const ScopeExit&) = delete;

 private:
  F f_;
};

}  // namespace policyd::test
