// policyctl's command line: global options anywhere, one command from the table, its options
// and positional arguments.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "ctl/cli.h"

namespace policyd::ctl {

// Parses argv (without argv[0]) into `global` and the returned Invocation. Returns nullopt with
// `failure` set on bad usage; an Invocation without spec means general help was asked for.
[[nodiscard]] std::optional<Invocation> parse_command_line(const std::vector<std::string>& argv,
                                                           GlobalOptions& global, Failure& failure);

}  // namespace policyd::ctl
