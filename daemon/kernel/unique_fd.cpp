// The one place in policyd that calls close() on a descriptor it owns.
#include "kernel/unique_fd.h"

#include <unistd.h>

namespace policyd::kernel {

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

}  // namespace policyd::kernel
