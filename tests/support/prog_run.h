// Running loaded programs from tests with BPF_PROG_TEST_RUN, which executes them under the
// same RCU rules as real traffic: the way kernel tests observe what the data plane sees.
#pragma once

#include <cstdint>

#include "util/result.h"

namespace policyd::test {

// Size of the all-zero packet run_xdp() feeds to the program (XDP needs at least 14 bytes).
inline constexpr uint32_t kTestPacketSize = 64;

// Runs the XDP program `repeat` times (at least once) on a zeroed kTestPacketSize-byte
// packet and returns the last run's return value (XDP_PASS, XDP_DROP...). Thread-safe:
// several threads may run the same program at once.
[[nodiscard]] Result<uint32_t> run_xdp(int prog_fd, uint32_t repeat = 1);

}  // namespace policyd::test
