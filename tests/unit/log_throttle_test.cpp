// util::LogThrottle: one line per second per key with the count, and a bounded set of keys.
#include "util/log_throttle.h"

#include <gtest/gtest.h>

#include <string>

namespace policyd::util {
namespace {

using std::chrono::milliseconds;

TEST(LogThrottleTest, G6_OneLinePerSecondPerKeyWithTheCountSinceTheLast) {
  LogThrottle t;
  const LogThrottle::Clock::time_point t0{};
  EXPECT_EQ(t.occurred("uid 7", t0), 1u) << "the first occurrence is logged";
  for (int i = 1; i < 100; ++i) {
    EXPECT_EQ(t.occurred("uid 7", t0 + milliseconds(i)), 0u) << i;
  }
  EXPECT_EQ(t.occurred("uid 8", t0 + milliseconds(100)), 1u) << "another key is not held back";
  EXPECT_EQ(t.occurred("uid 7", t0 + milliseconds(1000)), 100u)
      << "99 quiet ones and this one, after a second";
  EXPECT_EQ(t.occurred("uid 7", t0 + milliseconds(1500)), 0u);
  EXPECT_EQ(t.occurred("uid 7", t0 + milliseconds(2000)), 2u);
}

TEST(LogThrottleTest, G6_ManyKeysAreBoundedAndQuietOnesAreForgottenFirst) {
  LogThrottle t;
  const LogThrottle::Clock::time_point t0{};
  for (size_t k = 0; k < LogThrottle::kMaxKeys; ++k) {
    ASSERT_EQ(t.occurred(std::to_string(k), t0), 1u);
  }
  EXPECT_EQ(t.occurred("one too many", t0 + milliseconds(10)), 0u)
      << "a full table within the second keeps quiet rather than grow";
  EXPECT_EQ(t.occurred("later", t0 + milliseconds(1000)), 1u)
      << "a second on, the quiet keys are forgotten and a new one is logged";
  EXPECT_EQ(t.occurred("0", t0 + milliseconds(1001)), 1u) << "a forgotten key logs anew";
}

}  // namespace
}  // namespace policyd::util
