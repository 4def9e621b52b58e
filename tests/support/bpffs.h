// Kernel-test prerequisites: a private bpffs mount for pins, and the rule for tests that need
// the bpf syscall (skip with a stated reason when it is not permitted, unless CI demands that
// they run: POLICYD_REQUIRE_PRIVILEGED=1 turns the skip into a failure).
#pragma once

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "util/result.h"

namespace policyd::test {

// A bpffs instance mounted on a fresh temporary directory: a test's pins never meet the
// host's /sys/fs/bpf or another test's, and disappear with the object. Needs CAP_SYS_ADMIN.
class PrivateBpffs {
 public:
  [[nodiscard]] static Result<PrivateBpffs> create();

  ~PrivateBpffs();
  PrivateBpffs(PrivateBpffs&& other) noexcept;
  PrivateBpffs& operator=(PrivateBpffs&& other) noexcept;
  PrivateBpffs(const PrivateBpffs&) = delete;
  PrivateBpffs& operator=(const PrivateBpffs&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }
  // path() + "/" + name.
  [[nodiscard]] std::string join(std::string_view name) const;

 private:
  explicit PrivateBpffs(std::string path) : path_(std::move(path)) {}
  // Lazily unmounts (pins still held open by fds stay valid) and removes the directory.
  void reset();

  std::string path_;
};

// True when the environment says privileged tests must run (POLICYD_REQUIRE_PRIVILEGED=1).
[[nodiscard]] bool privileged_required();

// Skips the current test when the bpf syscall is not permitted (EPERM), or fails it when
// privileged_required(); fails it on any other bpf error. Like GTEST_SKIP it only returns
// from itself: use POLICYD_REQUIRE_BPF() or BpfTest, which also stop the caller.
void require_bpf();

// A fixture whose tests run only where the bpf syscall works (see require_bpf()).
class BpfTest : public ::testing::Test {
 protected:
  void SetUp() override;
};

// A BpfTest with a private bpffs mounted for each test (bpffs_), unmounted after it.
class BpffsTest : public BpfTest {
 protected:
  void SetUp() override;
  std::optional<PrivateBpffs> bpffs_;
};

}  // namespace policyd::test

// require_bpf(), then returns from the calling test function if it skipped or failed.
#define POLICYD_REQUIRE_BPF()                                                       \
  do {                                                                              \
    ::policyd::test::require_bpf();                                                 \
    if (::testing::Test::IsSkipped() || ::testing::Test::HasFatalFailure()) return; \
  } while (0)
