// Authorization for the API: what a caller may do. The app implements Authorizer (SO_PEERCRED
// against the allow-lists for unix-socket peers, the client certificate for TLS peers); the
// service asks it once per RPC. Kept free of grpcpp headers (a forward declaration suffices).
#pragma once

#include <string>

namespace grpc {
class CallbackServerContext;
}  // namespace grpc

namespace policyd::api {

// Ordered: write implies read.
enum class Access { kNone, kRead, kWrite };

[[nodiscard]] constexpr bool permits(Access have, Access need) {
  return static_cast<int>(have) >= static_cast<int>(need);
}

// The smaller of two accesses.
[[nodiscard]] constexpr Access lesser(Access a, Access b) { return permits(a, b) ? b : a; }

[[nodiscard]] constexpr const char* to_string(Access access) {
  switch (access) {
    case Access::kNone:
      return "none";
    case Access::kRead:
      return "read";
    case Access::kWrite:
      return "write";
  }
  return "unknown";
}

struct Authorizer {
  virtual ~Authorizer() = default;
  // Called on a gRPC thread at the start of every RPC: must not block. Thread-safe.
  [[nodiscard]] virtual Access access(const grpc::CallbackServerContext& ctx) const = 0;
  // Who the caller is, for refusals and their log line ("uid 1000 gid 1000 pid 42"). The
  // default is gRPC's peer string ("fd:12", "ipv4:..."), which tells an operator little.
  [[nodiscard]] virtual std::string describe(const grpc::CallbackServerContext& ctx) const;
  // Who the caller is for per-caller quotas ("uid 1000"): the same for all its processes and
  // connections. The default is describe().
  [[nodiscard]] virtual std::string owner(const grpc::CallbackServerContext& ctx) const;
};

}  // namespace policyd::api
