// Unit tests for util/result: Error formatting and codes, Result/Status and the propagation
// macros.
#include "util/result.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

namespace policyd {
namespace {

TEST(ErrorTest, MessageWithoutErrnoIsTheContext) {
  Error e = invalid_argument("map \"acl\" slot 3: key size 4, want 8");
  EXPECT_EQ(e.code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(e.sys_errno, 0);
  EXPECT_EQ(e.message(), "map \"acl\" slot 3: key size 4, want 8");
}

TEST(ErrorTest, MessageWithErrnoAppendsStrerror) {
  Error e = sys_error(ENOENT, "open pinned map /sys/fs/bpf/x");
  EXPECT_EQ(e.message(), std::string("open pinned map /sys/fs/bpf/x: ") + std::strerror(ENOENT));
}

TEST(ErrorTest, SysErrorMapsErrnoToCode) {
  EXPECT_EQ(sys_error(EPERM, "x").code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(sys_error(EACCES, "x").code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(sys_error(E2BIG, "x").code, ErrorCode::kResourceExhausted);
  EXPECT_EQ(sys_error(ENOSPC, "x").code, ErrorCode::kResourceExhausted);
  EXPECT_EQ(sys_error(ENOMEM, "x").code, ErrorCode::kResourceExhausted);
  EXPECT_EQ(sys_error(EINVAL, "x").code, ErrorCode::kInternal);
  EXPECT_EQ(sys_error(EINVAL, "x").sys_errno, EINVAL);
  EXPECT_EQ(failed_precondition("stale").code, ErrorCode::kFailedPrecondition);
}

TEST(ErrorTest, WrapPrependsOuterContextAndKeepsCodeAndErrno) {
  const Error inner = sys_error(E2BIG, "batch update");
  Error copy = inner.wrap("commit gen 4");
  EXPECT_EQ(copy.context, "commit gen 4: batch update");
  EXPECT_EQ(copy.code, ErrorCode::kResourceExhausted);
  EXPECT_EQ(copy.sys_errno, E2BIG);
  EXPECT_EQ(inner.context, "batch update");  // the const& overload leaves the source alone

  Error moved = sys_error(E2BIG, "batch update").wrap("slot 7").wrap("commit gen 4");
  EXPECT_EQ(moved.context, "commit gen 4: slot 7: batch update");
  EXPECT_EQ(moved.message(),
            "commit gen 4: slot 7: batch update: " + std::string(std::strerror(E2BIG)));
}

TEST(ErrorTest, EveryCodeHasADistinctName) {
  const ErrorCode codes[] = {ErrorCode::kInvalidArgument,   ErrorCode::kFailedPrecondition,
                             ErrorCode::kResourceExhausted, ErrorCode::kPermissionDenied,
                             ErrorCode::kNotFound,          ErrorCode::kUnavailable,
                             ErrorCode::kInternal};
  std::vector<std::string> names;
  for (ErrorCode c : codes) {
    std::string name = to_string(c);
    EXPECT_NE(name, "unknown");
    for (const auto& seen : names) EXPECT_NE(seen, name);
    names.push_back(name);
  }
  EXPECT_STREQ(to_string(ErrorCode::kNotFound), "not found");
}

TEST(ResultTest, HoldsValueOrError) {
  Result<int> ok = 42;
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(static_cast<bool>(ok));
  EXPECT_EQ(*ok, 42);
  EXPECT_EQ(ok.value(), 42);

  Result<int> bad = invalid_argument("nope");
  ASSERT_FALSE(bad.ok());
  EXPECT_FALSE(static_cast<bool>(bad));
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(bad.error().context, "nope");
}

TEST(ResultTest, MovesOutMoveOnlyValues) {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(7);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r->get(), 7);
  std::unique_ptr<int> p = std::move(r).value();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 7);
}

TEST(StatusTest, DefaultIsOkAndErrorIsNot) {
  Status ok;
  EXPECT_TRUE(ok.ok());
  Status bad = sys_error(EPERM, "freeze");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kPermissionDenied);
  Error taken = std::move(bad).error();
  EXPECT_EQ(taken.context, "freeze");
}

Result<int> parse_positive(int v) {
  if (v <= 0) return invalid_argument("value " + std::to_string(v) + " is not positive");
  return v;
}

Status check_positive(int v) {
  POLICYD_TRY(parse_positive(v));
  return {};
}

Result<int> doubled(int v) {
  POLICYD_ASSIGN_OR_RETURN(int x, parse_positive(v));
  POLICYD_ASSIGN_OR_RETURN(int y, parse_positive(x));  // two on one scope: distinct temporaries
  return x + y;
}

TEST(ResultMacrosTest, TryPropagatesTheError) {
  EXPECT_TRUE(check_positive(3).ok());
  Status st = check_positive(-1);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().context, "value -1 is not positive");
}

TEST(ResultMacrosTest, AssignOrReturnBindsOrPropagates) {
  Result<int> good = doubled(5);
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, 10);
  Result<int> bad = doubled(0);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace policyd
