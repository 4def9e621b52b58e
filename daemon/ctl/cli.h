// What every policyctl command shares: exit codes, the global options, the parsed command line,
// and failures (a message and an exit code) with the one way they are printed.
#pragma once

#include <grpcpp/support/status.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace policyd::ctl {

inline constexpr int kExitOk = 0;
inline constexpr int kExitServer = 1;  // the daemon refused or could not be reached
inline constexpr int kExitUsage = 2;
inline constexpr int kExitLocal = 3;  // the policy file could not be read or parsed

struct CommandSpec;

struct GlobalOptions {
  std::string socket;
  bool json = false;
  double timeout = 30;  // seconds, per call
};

// The parsed command line of one subcommand.
struct Invocation {
  const CommandSpec* spec = nullptr;
  std::map<std::string, std::string> options;
  std::vector<std::string> args;
  bool help = false;
};

// A failure to report: the message (without the "policyctl: " prefix) and the exit code.
struct Failure {
  int exit_code = kExitServer;
  std::string message;
};

// Prints the failure to stderr, returns its exit code.
[[nodiscard]] int report(const Failure& f);
// Bad usage: the message points at --help.
[[nodiscard]] Failure usage_error(const std::string& message);
// A refused or failed call: the gRPC code name and the server's text.
[[nodiscard]] Failure rpc_failure(const grpc::Status& status);

// A non-negative decimal number, nothing else.
[[nodiscard]] std::optional<uint64_t> parse_u64(const std::string& text);
// The generation number given to option `name` (0 when absent); nullopt with `failure` set when
// it is not a number.
[[nodiscard]] std::optional<uint64_t> generation_option(const Invocation& inv,
                                                        const std::string& name, Failure& failure);

}  // namespace policyd::ctl
