// Unit tests for api/status: the one table from policyd error codes to gRPC status codes, and
// the message a client sees.
#include "api/status.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

namespace policyd::api {
namespace {

TEST(StatusTest, EveryErrorCodeHasItsStatus) {
  const std::pair<ErrorCode, grpc::StatusCode> table[] = {
      {ErrorCode::kInvalidArgument, grpc::StatusCode::INVALID_ARGUMENT},
      {ErrorCode::kFailedPrecondition, grpc::StatusCode::FAILED_PRECONDITION},
      {ErrorCode::kResourceExhausted, grpc::StatusCode::RESOURCE_EXHAUSTED},
      {ErrorCode::kPermissionDenied, grpc::StatusCode::PERMISSION_DENIED},
      {ErrorCode::kNotFound, grpc::StatusCode::NOT_FOUND},
      {ErrorCode::kUnavailable, grpc::StatusCode::UNAVAILABLE},
      {ErrorCode::kInternal, grpc::StatusCode::INTERNAL},
  };
  for (auto [code, status] : table) {
    EXPECT_EQ(to_grpc_code(code), status) << to_string(code);
    grpc::Status s = to_grpc_status(Error{code, 0, "what failed"});
    EXPECT_EQ(s.error_code(), status);
    EXPECT_EQ(s.error_message(), "what failed");
  }
}

TEST(StatusTest, MessageCarriesErrnoText) {
  grpc::Status s = to_grpc_status(sys_error(EBADF, "update outer map \"acl\""));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(s.error_message(), std::string("update outer map \"acl\": ") + std::strerror(EBADF));
  // The code follows the error's code, not a guess from the errno.
  EXPECT_EQ(to_grpc_status(sys_error(EPERM, "x")).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST(StatusTest, OkStatusIsOk) {
  EXPECT_TRUE(to_grpc_status(Status{}).ok());
  EXPECT_EQ(to_grpc_status(Status(invalid_argument("x"))).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

}  // namespace
}  // namespace policyd::api
