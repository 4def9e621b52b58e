// Failures and the small parsers the commands share.
#include "ctl/cli.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <iostream>

#include "schema/status_name.h"

namespace policyd::ctl {

int report(const Failure& f) {
  std::cerr << "policyctl: " << f.message << "\n";
  return f.exit_code;
}

Failure usage_error(const std::string& message) {
  return {kExitUsage, message + " (see policyctl --help)"};
}

Failure rpc_failure(const grpc::Status& status) {
  return {kExitServer, std::string(schema::status_code_name(status.error_code())) + ": " +
                           status.error_message()};
}

std::optional<uint64_t> parse_u64(const std::string& text) {
  if (text.empty() || !std::all_of(text.begin(), text.end(), [](char c) {
        return std::isdigit(static_cast<unsigned char>(c));
      })) {
    return std::nullopt;
  }
  errno = 0;
  const unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
  if (errno == ERANGE) return std::nullopt;
  return static_cast<uint64_t>(v);
}

std::optional<uint64_t> generation_option(const Invocation& inv, const std::string& name,
                                          Failure& failure) {
  auto it = inv.options.find(name);
  if (it == inv.options.end()) return 0;
  std::optional<uint64_t> v = parse_u64(it->second);
  if (!v) failure = usage_error(name + ": \"" + it->second + "\" is not a generation number");
  return v;
}

}  // namespace policyd::ctl
