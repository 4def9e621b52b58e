// Error -> grpc::Status.
#include "api/status.h"

namespace policyd::api {

grpc::StatusCode to_grpc_code(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case ErrorCode::kFailedPrecondition:
      return grpc::StatusCode::FAILED_PRECONDITION;
    case ErrorCode::kResourceExhausted:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case ErrorCode::kPermissionDenied:
      return grpc::StatusCode::PERMISSION_DENIED;
    case ErrorCode::kNotFound:
      return grpc::StatusCode::NOT_FOUND;
    case ErrorCode::kUnavailable:
      return grpc::StatusCode::UNAVAILABLE;
    case ErrorCode::kInternal:
      return grpc::StatusCode::INTERNAL;
  }
  return grpc::StatusCode::INTERNAL;  // an out-of-range enum value is our bug, not the caller's
}

grpc::Status to_grpc_status(const Error& error) {
  return {to_grpc_code(error.code), error.message()};
}

grpc::Status to_grpc_status(const Status& status) {
  return status.ok() ? grpc::Status::OK : to_grpc_status(status.error());
}

}  // namespace policyd::api
