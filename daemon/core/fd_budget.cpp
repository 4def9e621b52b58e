// FD budget: the soft RLIMIT_NOFILE, the fds policyd owns (counted by UniqueFd) and the fds
// promised to builds in flight decide whether a build may start.
#include "core/fd_budget.h"

#include <dirent.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <utility>

#include "kernel/unique_fd.h"

namespace policyd::core {
namespace {

std::atomic<size_t> g_reserved{0};
std::atomic<size_t> g_connections{0};

// What the quick estimate adds to the fds policyd owns: gRPC's own, and the connections the
// API may hold, counted up to a quarter of the soft limit (beyond that, near the limit, the
// precise count decides anyway; a low limit would otherwise starve the inner-map pool).
uint64_t unowned_reserve(const FdLimit& limit) {
  return kUnownedFdReserve +
         std::min<uint64_t>(g_connections.load(std::memory_order_relaxed), limit.soft / 4);
}

uint64_t as_count(rlim_t limit) {
  return limit == RLIM_INFINITY ? UINT64_MAX : static_cast<uint64_t>(limit);
}

FdLimit current_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return {UINT64_MAX, UINT64_MAX};
  return {as_count(rl.rlim_cur), as_count(rl.rlim_max)};
}

// Every open descriptor of the process. Costs about 10-30 ms at 1,000 fds and 80-150 ms at
// 20,000 on a loaded 2-vCPU machine, which is why only a build near the limit pays it.
size_t count_open_fds() {
  size_t n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) return kernel::UniqueFd::owned_count() + unowned_reserve(current_limit());
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  return n > 0 ? n - 1 : 0;  // the directory's own fd
}

std::string limit_text(const FdLimit& limit) {
  std::string text = "RLIMIT_NOFILE " + std::to_string(limit.soft);
  if (limit.hard != limit.soft) text += " (hard " + std::to_string(limit.hard) + ")";
  return text;
}

}  // namespace

Result<FdLimit> raise_fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return sys_error(errno, "getrlimit(RLIMIT_NOFILE)");
  const rlim_t before = rl.rlim_cur;
  if (rl.rlim_cur != rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) {
      return sys_error(errno, "raise the soft RLIMIT_NOFILE to the hard limit " +
                                  std::to_string(as_count(rl.rlim_max)));
    }
  }
  const FdLimit now{as_count(rl.rlim_cur), as_count(rl.rlim_max)};
  spdlog::info("RLIMIT_NOFILE: soft {} -> {}, hard {} (one fd per live inner map)",
               as_count(before), now.soft, now.hard);
  return now;
}

FdReservation::FdReservation(size_t count) : count_(count) {
  g_reserved.fetch_add(count_, std::memory_order_relaxed);
}

FdReservation::~FdReservation() { g_reserved.fetch_sub(count_, std::memory_order_relaxed); }

FdReservation::FdReservation(FdReservation&& other) noexcept
    : count_(std::exchange(other.count_, 0)) {}

FdReservation& FdReservation::operator=(FdReservation&& other) noexcept {
  if (this != &other) {
    g_reserved.fetch_sub(count_, std::memory_order_relaxed);
    count_ = std::exchange(other.count_, 0);
  }
  return *this;
}

void set_connection_fd_reserve(size_t connections) {
  g_connections.store(connections, std::memory_order_relaxed);
}

Result<FdReservation> reserve_fds(size_t needed, const std::string& what) {
  if (needed == 0) return FdReservation();
  const FdLimit limit = current_limit();
  const size_t reserved = g_reserved.load(std::memory_order_relaxed);
  const uint64_t estimate = kernel::UniqueFd::owned_count() + unowned_reserve(limit) + reserved;
  if (estimate + needed <= limit.soft) return FdReservation(needed);
  // Near the limit the estimate's reserve may be too generous: count what is really open.
  const uint64_t in_use = count_open_fds() + reserved + kFdHeadroom;
  if (in_use + needed <= limit.soft) return FdReservation(needed);
  const uint64_t remain = limit.soft - std::min<uint64_t>(in_use, limit.soft);
  return Error{ErrorCode::kResourceExhausted, 0,
               what + " needs " + std::to_string(needed) + " new inner-map fds; " +
                   std::to_string(remain) + " of " + limit_text(limit) +
                   " remain (raise LimitNOFILE= in the unit, or push fewer slots at once)"};
}

Result<FdReservation> reserve_spare_fds(size_t needed, size_t spare) {
  const FdLimit limit = current_limit();
  const size_t reserved = g_reserved.load(std::memory_order_relaxed);
  const uint64_t estimate = kernel::UniqueFd::owned_count() + unowned_reserve(limit) + reserved;
  const uint64_t keep = std::max<uint64_t>(spare, limit.soft / 4);
  if (limit.soft >= keep && estimate + needed <= limit.soft - keep) return FdReservation(needed);
  return Error{ErrorCode::kResourceExhausted, 0,
               std::to_string(needed) + " spare fd(s) not available below " + limit_text(limit) +
                   " (keeping " + std::to_string(keep) + " free)"};
}

Error name_fd_exhaustion(Error error) {
  if (error.sys_errno != EMFILE && error.sys_errno != ENFILE) return error;
  error.code = ErrorCode::kResourceExhausted;
  error.context += " (" + limit_text(current_limit()) + "; raise LimitNOFILE= in the unit)";
  return error;
}

}  // namespace policyd::core
