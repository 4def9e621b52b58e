// run_xdp(): bpf_prog_test_run_opts with a fixed zero packet.
#include "support/prog_run.h"

#include <bpf/bpf.h>

#include <array>
#include <limits>
#include <string>

namespace policyd::test {

Result<uint32_t> run_xdp(int prog_fd, uint32_t repeat) {
  if (repeat > static_cast<uint32_t>(std::numeric_limits<int>::max())) {
    return invalid_argument("run_xdp: repeat " + std::to_string(repeat) + " is too large");
  }
  std::array<uint8_t, kTestPacketSize> packet{};
  // Plain C++ rather than LIBBPF_OPTS, whose statement expression is a GNU C extension.
  bpf_test_run_opts opts{};
  opts.sz = sizeof(opts);
  opts.data_in = packet.data();
  opts.data_size_in = static_cast<uint32_t>(packet.size());
  opts.repeat = static_cast<int>(repeat);
  // libbpf 1.x returns -errno.
  int rc = bpf_prog_test_run_opts(prog_fd, &opts);
  if (rc < 0) {
    return sys_error(-rc, "BPF_PROG_TEST_RUN on prog fd " + std::to_string(prog_fd) + " (repeat " +
                              std::to_string(repeat) + ")");
  }
  return opts.retval;
}

}  // namespace policyd::test
