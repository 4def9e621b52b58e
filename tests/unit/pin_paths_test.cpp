// core/pin_paths: drain-pin names are built and parsed in one place, and parsing inverts
// building even when the map name itself contains '_'.
#include "core/pin_paths.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>

namespace policyd::core {
namespace {

TEST(PinPathsTest, DrainPinLivesUnderTheDrainDirectory) {
  const PinPaths pins("/sys/fs/bpf/policyd");
  EXPECT_EQ(pins.drain_dir(), "/sys/fs/bpf/policyd/_drain");
  EXPECT_EQ(pins.drain_pin("acl", "05000000", 7, 42),
            "/sys/fs/bpf/policyd/_drain/acl_05000000_7_42");
}

TEST(PinPathsTest, ParsingADrainPinNameInvertsBuildingIt) {
  const PinPaths::DrainPin pin{"g_acl_a", "0a0b", 18446744073709551615ull, 4294967295u};
  const std::optional<PinPaths::DrainPin> back =
      PinPaths::parse_drain_pin_name(PinPaths::drain_pin_name(pin));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->map, pin.map);
  EXPECT_EQ(back->slot_hex, pin.slot_hex);
  EXPECT_EQ(back->installed_by, pin.installed_by);
  EXPECT_EQ(back->id, pin.id);
}

TEST(PinPathsTest, NamesWithoutThreeSeparatorsAreNotDrainPins) {
  for (const std::string name : {"", "acl", "acl_00_1", "_00_1_2", "lost+found"}) {
    EXPECT_FALSE(PinPaths::parse_drain_pin_name(name).has_value()) << name;
  }
}

}  // namespace
}  // namespace policyd::core
