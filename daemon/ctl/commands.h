// The command table: every policyctl command once, with what it takes, its help and its
// handler. Dispatch, argument checks and the usage text all read this table.
#pragma once

#include <cstddef>
#include <set>
#include <string>
#include <vector>

#include "ctl/cli.h"

namespace policyd::ctl {

class Client;

// Runs one command; prints its output or its failure and returns the exit code.
using Handler = int (*)(Client& client, const GlobalOptions& global, const Invocation& inv);

struct CommandSpec {
  std::string name;
  std::string synopsis;                 // in `policyctl --help`, e.g. "rollback [GEN]"
  std::string summary;                  // one line next to the synopsis
  std::set<std::string> value_options;  // "--expect", ...
  size_t min_args = 0;
  size_t max_args = 0;
  std::string help;  // `policyctl COMMAND --help`; its first line is the command's usage line
  Handler handler = nullptr;
  // SIGINT and SIGTERM must be blocked before the channel starts gRPC's threads (watch).
  bool blocks_interrupts = false;
};

[[nodiscard]] const std::vector<CommandSpec>& commands();
// The command named `name`, or nullptr.
[[nodiscard]] const CommandSpec* find_command(const std::string& name);
// `policyctl --help`: global usage, one line per command of the table, options, exit codes.
[[nodiscard]] std::string usage_text();

// Handlers, one file per command group.
// push.cpp
int cmd_push(Client& client, const GlobalOptions& global, const Invocation& inv);
// status_dump.cpp
int cmd_status(Client& client, const GlobalOptions& global, const Invocation& inv);
int cmd_dump(Client& client, const GlobalOptions& global, const Invocation& inv);
// generations.cpp
int cmd_generations(Client& client, const GlobalOptions& global, const Invocation& inv);
int cmd_rollback(Client& client, const GlobalOptions& global, const Invocation& inv);
// counters.cpp
int cmd_counters(Client& client, const GlobalOptions& global, const Invocation& inv);
// watch.cpp
int cmd_watch(Client& client, const GlobalOptions& global, const Invocation& inv);
// reload.cpp
int cmd_reload(Client& client, const GlobalOptions& global, const Invocation& inv);

// Blocks SIGINT and SIGTERM in the calling thread and the threads it starts later (watch.cpp).
void block_interrupts();

}  // namespace policyd::ctl
