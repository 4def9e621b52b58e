// The command table (every command once: synopsis, summary, options, arity, help, handler) and
// the usage text built from it.
#include "ctl/commands.h"

namespace policyd::ctl {
namespace {

constexpr const char* kUsageHead =
    R"(usage: policyctl [--socket PATH] [--json] [--timeout SECONDS] COMMAND [ARGS]

Commands:
)";

constexpr const char* kUsageTail = R"(
Options:
  --socket PATH           the daemon's unix socket (default $POLICYD_SOCKET, else
                          /run/policyd/policyd.sock)
  --json                  machine-readable output
  --timeout SECONDS       deadline of each call (default 30; watch has none)
  -h, --help              this help; `policyctl COMMAND --help` for one command

Exit status: 0 success, 1 the daemon refused or could not be reached, 2 bad usage,
3 the policy file could not be read or parsed.
)";

// Summaries start in this column of `policyctl --help`; a longer synopsis gets its own line.
constexpr size_t kSummaryColumn = 26;
constexpr size_t kIndent = 2;
constexpr size_t kMinGap = 2;

std::string usage_line(const CommandSpec& c) {
  std::string line = std::string(kIndent, ' ') + c.synopsis;
  if (line.size() + kMinGap <= kSummaryColumn) {
    line += std::string(kSummaryColumn - line.size(), ' ');
  } else {
    line += "\n" + std::string(kSummaryColumn, ' ');
  }
  return line + c.summary + "\n";
}

}  // namespace

const std::vector<CommandSpec>& commands() {
  static const std::vector<CommandSpec> kCommands = {
      {
          .name = "push",
          .synopsis = "push FILE [--expect GEN] [--label L] [--request-id ID]",
          .summary = "commit the policy file FILE (\"-\" for stdin) as one generation",
          .value_options = {"--expect", "--label", "--request-id"},
          .min_args = 1,
          .max_args = 1,
          .help = R"(usage: policyctl push FILE [--expect GEN] [--label L] [--request-id ID]

Reads the policy file FILE ("-" for stdin), encodes its keys, values and slots with the
schemas the daemon reports, and commits it as one generation. Returns after the barrier:
no running program still uses an inner map the generation replaced.

  --expect GEN       fail with FAILED_PRECONDITION unless the current generation is GEN
  --label L          label of the generation (overrides the file's label)
  --request-id ID    idempotency key: a retry with the same id commits nothing twice

Policy file:
  label: v42
  changes:
    - map: acl
      slot: 0                 # array index; for hash maps a mapping of slot_key fields
      entries:                # the complete contents of the new inner map
        - {key: {prefix: 10.0.0.0/8}, value: {action: 1}}
        - {key_hex: "18000000c0a80100", value_hex: "020000000000000000000000"}
    - {map: acl, slot: 3, delete: true}
Typed keys give every key field. Value fields left out are zero (counters always start at
zero); an entry without value or value_hex has an all-zero value. Errors name
file:line:column and the field path.
)",
          .handler = cmd_push,
      },
      {
          .name = "status",
          .synopsis = "status",
          .summary = "current generation, barrier strategy, kernel and maps",
          .value_options = {},
          .min_args = 0,
          .max_args = 0,
          .help = R"(usage: policyctl status [--json]

Current generation and label, barrier strategy, kernel, barriers paid, and per outer map its
type, slots, live slots, inner map type and key/value sizes. --json prints the whole
GetState response, schemas (field layouts) included.
)",
          .handler = cmd_status,
      },
      {
          .name = "generations",
          .synopsis = "generations",
          .summary = "recent generations, newest first",
          .value_options = {},
          .min_args = 0,
          .max_args = 0,
          .help = R"(usage: policyctl generations [--json]

The generations the daemon keeps in its history, newest first; `*` marks the current one.
)",
          .handler = cmd_generations,
      },
      {
          .name = "rollback",
          .synopsis = "rollback [GEN]",
          .summary = "re-commit the state of generation GEN (default: the previous one)",
          .value_options = {"--expect", "--request-id"},
          .min_args = 0,
          .max_args = 1,
          .help = R"(usage: policyctl rollback [GEN] [--expect GEN] [--request-id ID]

Re-commits the data-plane state of generation GEN (default: the one before the current) as a
new generation.

  --expect GEN       fail with FAILED_PRECONDITION unless the current generation is GEN
  --request-id ID    idempotency key
)",
          .handler = cmd_rollback,
      },
      {
          .name = "counters",
          .synopsis = "counters [--map M]",
          .summary = "counter totals: drained from replaced inner maps and live",
          .value_options = {"--map"},
          .min_args = 0,
          .max_args = 0,
          .help = R"(usage: policyctl counters [--map M] [--json]

Counter fields per map, slot and field: the total drained from replaced inner maps and the
total in the live inner map. --json prints
  {"counters": [{"map": ..., "slot": ..., "field": ..., "drained": N, "live": N}, ...]}
)",
          .handler = cmd_counters,
      },
      {
          .name = "dump",
          .synopsis = "dump MAP SLOT",
          .summary = "entries of the inner map in one slot",
          .value_options = {},
          .min_args = 2,
          .max_args = 2,
          .help = R"(usage: policyctl dump MAP SLOT [--json]

Prints the entries of the inner map live in one slot, decoded with the map's schema.
SLOT is an index for array_of_maps maps; for hash_of_maps maps either the raw slot key in
hex or its typed fields, as in `ifindex=3` or `a=1,b=2`.
)",
          .handler = cmd_dump,
      },
      {
          .name = "watch",
          .synopsis = "watch",
          .summary = "print events (committed, drained, reloaded) until interrupted",
          .value_options = {},
          .min_args = 0,
          .max_args = 0,
          .help = R"(usage: policyctl watch [--json]

Prints one line per event (generations committed under a barrier, inner maps drained,
configuration reloaded) until interrupted. --json prints one JSON object per line.
)",
          .handler = cmd_watch,
          .blocks_interrupts = true,
      },
      {
          .name = "reload",
          .synopsis = "reload",
          .summary = "re-read the daemon's configuration file",
          .value_options = {},
          .min_args = 0,
          .max_args = 0,
          .help = R"(usage: policyctl reload [--json]

Asks the daemon to re-read its configuration file (like SIGHUP). New maps are created;
incompatible changes refuse the whole reload and the old configuration keeps running.
)",
          .handler = cmd_reload,
      },
  };
  return kCommands;
}

const CommandSpec* find_command(const std::string& name) {
  for (const CommandSpec& c : commands()) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

std::string usage_text() {
  std::string text = kUsageHead;
  for (const CommandSpec& c : commands()) text += usage_line(c);
  return text + kUsageTail;
}

}  // namespace policyd::ctl
