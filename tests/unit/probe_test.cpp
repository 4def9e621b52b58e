// Unit tests for kernel/probe's pure part: reading major and minor from a kernel release string
// (the probe itself needs a kernel and runs in tests/kernel).
#include "kernel/probe.h"

#include <gtest/gtest.h>

namespace policyd::kernel {
namespace {

TEST(ParseKernelRelease, ReadsMajorAndMinor) {
  int major = 0, minor = 0;
  ASSERT_TRUE(parse_kernel_release("6.18.44-fc-v657", &major, &minor));
  EXPECT_EQ(major, 6);
  EXPECT_EQ(minor, 18);
  EXPECT_FALSE(parse_kernel_release("linux", &major, &minor));
}

}  // namespace
}  // namespace policyd::kernel
