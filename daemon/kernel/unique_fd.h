// UniqueFd: the only owner of a file descriptor in policyd. Move-only, no implicit int.
// It also counts the descriptors policyd owns, so that the fd budget (core/fd_budget.h) knows
// how many are in use without scanning /proc/self/fd.
#pragma once

#include <cstddef>
#include <utility>

namespace policyd::kernel {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {
    if (fd_ >= 0) count_opened();
  }
  ~UniqueFd() { reset(); }

  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }

  [[nodiscard]] int get() const { return fd_; }
  [[nodiscard]] bool valid() const { return fd_ >= 0; }
  // Gives up ownership without closing (the descriptor is no longer counted).
  [[nodiscard]] int release();
  // Closes the current fd (if any) and takes `fd`.
  void reset(int fd = -1);

  // Descriptors owned by UniqueFds right now, across all threads.
  [[nodiscard]] static size_t owned_count();

 private:
  static void count_opened();
  int fd_ = -1;
};

}  // namespace policyd::kernel
