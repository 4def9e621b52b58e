// Start-up probe: how does this kernel pay for writes to map-in-map outer maps?
// It decides between one batch call per outer map (the wait is paid once per call) and
// concurrent single updates (each waits, but the waits overlap). See DESIGN.md, Barrier
// strategies and kernel behaviour.
#pragma once

#include <string>

#include "util/result.h"

namespace policyd::kernel {

struct KernelFacts {
  std::string release;  // uname -r
  int major = 0;
  int minor = 0;
  // BPF_MAP_UPDATE_BATCH is accepted on an ARRAY_OF_MAPS (5.19+).
  bool outer_batch_update = false;
  // A batch of 8 took clearly longer than a batch of 1: the kernel waits once per element
  // (5.19 - 6.7) rather than once per call (6.8+).
  bool batch_waits_per_element = false;
  // Medians of the measured calls, in milliseconds.
  double single_update_ms = 0;
  double batch1_ms = 0;
  double batch8_ms = 0;

  // One line for the log: what was measured and what it implies.
  [[nodiscard]] std::string describe() const;
};

// Release and version only (uname), without timing anything.
[[nodiscard]] KernelFacts kernel_release();

// Creates private (unpinned) maps, times a few outer-map writes and frees everything.
// Costs about ten grace periods.
[[nodiscard]] Result<KernelFacts> probe_kernel();

// Parses uname's release into major/minor; false when it does not look like "X.Y...".
bool parse_kernel_release(const std::string& release, int* major, int* minor);

}  // namespace policyd::kernel
