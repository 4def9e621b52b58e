// The file-descriptor budget (DESIGN.md, Scale): policyd keeps one fd per live inner map, so a
// generation that creates N inner maps needs N more descriptors until the maps it replaces are
// drained. reserve_fds() refuses such work whole, before any map is created, when the soft
// RLIMIT_NOFILE would not allow it; raise_fd_limit() lifts the soft limit at start.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "util/result.h"

namespace policyd::core {

// Descriptors kept free for what policyd does not own through UniqueFd: connections handed to
// gRPC at accept, gRPC's epoll and wakeup fds, log and state files. Only a quick estimate uses
// it; near the limit the budget counts /proc/self/fd instead.
inline constexpr size_t kUnownedFdReserve = 64;
// The API's connections are not owned through UniqueFd either: the quick estimate keeps
// kUnownedFdReserve plus this many free, at most a quarter of the soft limit. The daemon sets it
// to api.max_connections at start and at every reload. Thread-safe.
void set_connection_fd_reserve(size_t connections);
// Kept free even by the precise count: state files and a new connection or two must still open.
inline constexpr size_t kFdHeadroom = 16;

struct FdLimit {
  uint64_t soft = 0;
  uint64_t hard = 0;
};

// Raises the soft RLIMIT_NOFILE to the hard limit (systemd starts services at a soft 1,024)
// and logs both. Returns the limits now in force.
[[nodiscard]] Result<FdLimit> raise_fd_limit();

// Descriptors promised to a build that has not opened them all yet; concurrent builds count
// each other's promises. Move-only; releases its promise when destroyed.
class FdReservation {
 public:
  FdReservation() = default;
  explicit FdReservation(size_t count);
  ~FdReservation();
  FdReservation(FdReservation&& other) noexcept;
  FdReservation& operator=(FdReservation&& other) noexcept;
  FdReservation(const FdReservation&) = delete;
  FdReservation& operator=(const FdReservation&) = delete;

 private:
  size_t count_ = 0;
};

// Reserves `needed` descriptors for `what` ("this generation", "adopting pinned map x"), or
// fails with kResourceExhausted naming the need, what remains and the limit. Cheap: it counts
// the fds policyd owns; it reads /proc/self/fd only when that estimate says no.
[[nodiscard]] Result<FdReservation> reserve_fds(size_t needed, const std::string& what);

// Reserves `needed` descriptors for work that can wait (the inner-map pool's refill): only when
// the quick estimate leaves at least max(spare, a quarter of the soft limit) free besides. It
// never counts /proc/self/fd; refused, it fails with kResourceExhausted.
[[nodiscard]] Result<FdReservation> reserve_spare_fds(size_t needed, size_t spare);

// An error from a syscall that ran out of descriptors (EMFILE, ENFILE) becomes
// kResourceExhausted naming the limit; any other error is returned unchanged.
[[nodiscard]] Error name_fd_exhaustion(Error error);

}  // namespace policyd::core
