// The one table from policyd errors to gRPC status codes (the codes the header of
// proto/policyd/v1/policyd.proto documents). Every RPC handler turns a failed Result into a
// grpc::Status here and nowhere else.
#pragma once

#include <grpcpp/support/status.h>

#include "util/result.h"

namespace policyd::api {

[[nodiscard]] grpc::StatusCode to_grpc_code(ErrorCode code);

// The code from the table; the message is error.message() (context, then the errno text).
[[nodiscard]] grpc::Status to_grpc_status(const Error& error);

// grpc::Status::OK for success.
[[nodiscard]] grpc::Status to_grpc_status(const Status& status);

}  // namespace policyd::api
