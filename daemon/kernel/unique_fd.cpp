// The one place in policyd that calls close() on a descriptor it owns, and the count of the
// descriptors owned.
#include "kernel/unique_fd.h"

#include <unistd.h>

#include <atomic>

namespace policyd::kernel {
namespace {

std::atomic<size_t> g_owned{0};

}  // namespace

void UniqueFd::count_opened() { g_owned.fetch_add(1, std::memory_order_relaxed); }

int UniqueFd::release() {
  if (fd_ >= 0) g_owned.fetch_sub(1, std::memory_order_relaxed);
  return std::exchange(fd_, -1);
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) {
    ::close(fd_);
    g_owned.fetch_sub(1, std::memory_order_relaxed);
  }
  fd_ = fd;
  if (fd_ >= 0) count_opened();
}

size_t UniqueFd::owned_count() { return g_owned.load(std::memory_order_relaxed); }

}  // namespace policyd::kernel
