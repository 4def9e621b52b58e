// Result<T> and Error: how every layer of policyd reports failure without exceptions.
// An Error carries a code (mapped to a gRPC status in exactly one place, in api/), the errno
// the kernel gave (0 when not a syscall failure) and a human context naming what failed.
#pragma once

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace policyd {

enum class ErrorCode {
  kInvalidArgument,     // bad input: config, generation, policy file
  kFailedPrecondition,  // state does not allow it (stale expected generation, incompatible map)
  kResourceExhausted,   // size limits, full outer map
  kPermissionDenied,    // caller or process lacks the right
  kNotFound,            // a named map, slot or generation does not exist
  kUnavailable,         // shutting down
  kInternal,            // kernel or I/O failure; errno says which
};

const char* to_string(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  int sys_errno = 0;    // errno from the failing syscall, 0 if none
  std::string context;  // what was being done, naming map, slot and entry where known

  // "context: strerror(errno)" or just "context".
  [[nodiscard]] std::string message() const;

  // Prepends an outer context: wrap("commit gen 4") -> "commit gen 4: <context>".
  [[nodiscard]] Error wrap(const std::string& outer) const&;
  [[nodiscard]] Error wrap(const std::string& outer) &&;
};

// Error from a syscall that failed with `err` (a positive errno value).
Error sys_error(int err, std::string context);
Error invalid_argument(std::string context);
Error failed_precondition(std::string context);

// A minimal std::expected stand-in (GCC 12 has no <expected>).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  [[nodiscard]] bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

// Result<void>: success or an Error.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)) {}  // NOLINT: implicit by design

  [[nodiscard]] bool ok() const { return !error_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const& { return *error_; }
  Error&& error() && { return std::move(*error_); }

 private:
  std::optional<Error> error_;
};

using Status = Result<void>;

}  // namespace policyd

// Propagates an error from an expression returning Result<...>; evaluates to nothing.
#define POLICYD_TRY(expr)                                                         \
  do {                                                                            \
    auto policyd_try_result_ = (expr);                                            \
    if (!policyd_try_result_.ok()) return std::move(policyd_try_result_).error(); \
  } while (0)

#define POLICYD_CONCAT_INNER_(a, b) a##b
#define POLICYD_CONCAT_(a, b) POLICYD_CONCAT_INNER_(a, b)

// Declares `lhs` from the value of a Result expression, or returns its error. Expands to
// several statements: never use it as the unbraced body of an if/else/for.
#define POLICYD_ASSIGN_OR_RETURN(lhs, expr) \
  POLICYD_ASSIGN_OR_RETURN_IMPL_(POLICYD_CONCAT_(policyd_result_, __LINE__), lhs, expr)
#define POLICYD_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return std::move(tmp).error();        \
  lhs = std::move(tmp).value()
