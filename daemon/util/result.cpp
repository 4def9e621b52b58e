// Error formatting shared by all layers.
#include "util/result.h"

namespace policyd {

const char* to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return "invalid argument";
    case ErrorCode::kFailedPrecondition:
      return "failed precondition";
    case ErrorCode::kResourceExhausted:
      return "resource exhausted";
    case ErrorCode::kPermissionDenied:
      return "permission denied";
    case ErrorCode::kNotFound:
      return "not found";
    case ErrorCode::kUnavailable:
      return "unavailable";
    case ErrorCode::kInternal:
      return "internal";
  }
  return "unknown";
}

std::string Error::message() const {
  if (sys_errno == 0) return context;
  return context + ": " + std::strerror(sys_errno);
}

Error Error::wrap(const std::string& outer) const& {
  Error e = *this;
  e.context = outer + ": " + e.context;
  return e;
}

Error Error::wrap(const std::string& outer) && {
  context = outer + ": " + context;
  return std::move(*this);
}

Error sys_error(int err, std::string context) {
  ErrorCode code = ErrorCode::kInternal;
  if (err == EPERM || err == EACCES) code = ErrorCode::kPermissionDenied;
  if (err == E2BIG || err == ENOSPC || err == ENOMEM) code = ErrorCode::kResourceExhausted;
  return Error{code, err, std::move(context)};
}

Error invalid_argument(std::string context) {
  return Error{ErrorCode::kInvalidArgument, 0, std::move(context)};
}

Error failed_precondition(std::string context) {
  return Error{ErrorCode::kFailedPrecondition, 0, std::move(context)};
}

}  // namespace policyd
