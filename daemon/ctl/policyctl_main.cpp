// policyctl: the command-line client of policyd's gRPC API. Pushes policy files (encoded to raw
// bytes here, with the schemas GetState reports), shows state, history and counters, dumps
// slots, watches events, rolls back and reloads. Exit codes: 0 ok, 1 the server refused or
// could not be reached, 2 bad usage, 3 a local file or parse error.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ctl/json.h"
#include "ctl/policy_file.h"
#include "policyd/v1/policyd.grpc.pb.h"
#include "schema/schema.h"
#include "schema/status_name.h"
#include "util/hex.h"

namespace policyd::ctl {
namespace {

namespace pb = policyd::v1;
using schema::Bytes;
using schema::Field;
using schema::FieldType;
using schema::Layout;

constexpr int kExitOk = 0;
constexpr int kExitServer = 1;
constexpr int kExitUsage = 2;
constexpr int kExitLocal = 3;

constexpr const char* kDefaultSocket = "/run/policyd/policyd.sock";
constexpr double kDefaultTimeout = 30;
// Pushes whose serialized request is larger go over PushGenerationStream, in messages of at
// most kStreamChunkBytes: both well under gRPC's default 4 MiB receive limit.
constexpr size_t kUnaryPushMaxBytes = 3u << 20;
constexpr size_t kStreamChunkBytes = 2u << 20;

constexpr const char* kUsage =
    R"(usage: policyctl [--socket PATH] [--json] [--timeout SECONDS] COMMAND [ARGS]

Commands:
  push FILE [--expect GEN] [--label L] [--request-id ID]
                          commit the policy file FILE ("-" for stdin) as one generation
  status                  current generation, barrier strategy, kernel and maps
  generations             recent generations, newest first
  rollback [GEN]          re-commit the state of generation GEN (default: the previous one)
  counters [--map M]      counter totals: drained from replaced inner maps and live
  dump MAP SLOT           entries of the inner map in one slot
  watch                   print events (committed, drained, reloaded) until interrupted
  reload                  re-read the daemon's configuration file

Options:
  --socket PATH           the daemon's unix socket (default $POLICYD_SOCKET, else
                          /run/policyd/policyd.sock)
  --json                  machine-readable output
  --timeout SECONDS       deadline of each call (default 30; watch has none)
  -h, --help              this help; `policyctl COMMAND --help` for one command

Exit status: 0 success, 1 the daemon refused or could not be reached, 2 bad usage,
3 the policy file could not be read or parsed.
)";

// One subcommand: its options, positional arity and help.
struct CommandSpec {
  std::string name;
  std::set<std::string> value_options;  // "--expect", ...
  size_t min_args = 0;
  size_t max_args = 0;
  std::string help;
};

const std::vector<CommandSpec>& commands() {
  static const std::vector<CommandSpec> kCommands = {
      {"push",
       {"--expect", "--label", "--request-id"},
       1,
       1,
       R"(usage: policyctl push FILE [--expect GEN] [--label L] [--request-id ID]

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
)"},
      {"status",
       {},
       0,
       0,
       R"(usage: policyctl status [--json]

Current generation and label, barrier strategy, kernel, barriers paid, and per outer map its
type, slots, live slots, inner map type and key/value sizes. --json prints the whole
GetState response, schemas (field layouts) included.
)"},
      {"generations",
       {},
       0,
       0,
       R"(usage: policyctl generations [--json]

The generations the daemon keeps in its history, newest first; `*` marks the current one.
)"},
      {"rollback",
       {"--expect", "--request-id"},
       0,
       1,
       R"(usage: policyctl rollback [GEN] [--expect GEN] [--request-id ID]

Re-commits the data-plane state of generation GEN (default: the one before the current) as a
new generation.

  --expect GEN       fail with FAILED_PRECONDITION unless the current generation is GEN
  --request-id ID    idempotency key
)"},
      {"counters",
       {"--map"},
       0,
       0,
       R"(usage: policyctl counters [--map M] [--json]

Counter fields per map, slot and field: the total drained from replaced inner maps and the
total in the live inner map. --json prints
  {"counters": [{"map": ..., "slot": ..., "field": ..., "drained": N, "live": N}, ...]}
)"},
      {"dump",
       {},
       2,
       2,
       R"(usage: policyctl dump MAP SLOT [--json]

Prints the entries of the inner map live in one slot, decoded with the map's schema.
SLOT is an index for array_of_maps maps; for hash_of_maps maps either the raw slot key in
hex or its typed fields, as in `ifindex=3` or `a=1,b=2`.
)"},
      {"watch",
       {},
       0,
       0,
       R"(usage: policyctl watch [--json]

Prints one line per event (generations committed under a barrier, inner maps drained,
configuration reloaded) until interrupted. --json prints one JSON object per line.
)"},
      {"reload",
       {},
       0,
       0,
       R"(usage: policyctl reload [--json]

Asks the daemon to re-read its configuration file (like SIGHUP). New maps are created;
incompatible changes refuse the whole reload and the old configuration keeps running.
)"},
  };
  return kCommands;
}

struct GlobalOptions {
  std::string socket;
  bool json = false;
  double timeout = kDefaultTimeout;
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

// Prints the failure, returns its exit code.
int report(const Failure& f) {
  std::cerr << "policyctl: " << f.message << "\n";
  return f.exit_code;
}

Failure usage_error(const std::string& message) {
  return {kExitUsage, message + " (see policyctl --help)"};
}

const char* code_name(grpc::StatusCode code) { return schema::status_code_name(code); }

Failure rpc_failure(const grpc::Status& status) {
  return {kExitServer, std::string(code_name(status.error_code())) + ": " + status.error_message()};
}

// ---------------------------------------------------------------------------------------------
// Command line.

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

// `--name value` or `--name=value`: the value and how many arguments were consumed.
std::optional<std::string> take_value(const std::vector<std::string>& argv, size_t& i,
                                      const std::string& name, Failure& failure) {
  const std::string& arg = argv[i];
  if (arg.size() > name.size() && arg[name.size()] == '=') return arg.substr(name.size() + 1);
  if (i + 1 >= argv.size()) {
    failure = usage_error(name + " needs a value");
    return std::nullopt;
  }
  return argv[++i];
}

// Splits "--name=value" to "--name".
std::string option_name(const std::string& arg) { return arg.substr(0, arg.find('=')); }

bool apply_global(const std::string& name, const std::string& value, GlobalOptions& global,
                  Failure& failure) {
  if (name == "--socket") {
    if (value.empty()) {
      failure = usage_error("--socket needs a path");
      return false;
    }
    global.socket = value;
  } else if (name == "--timeout") {
    char* end = nullptr;
    const double t = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0' || !std::isfinite(t) || t <= 0) {
      failure = usage_error("--timeout: \"" + value + "\" is not a positive number of seconds");
      return false;
    }
    global.timeout = t;
  }
  return true;
}

// Parses argv (without argv[0]). Returns nullopt with `failure` set on bad usage; an
// Invocation without spec means general help was asked for.
std::optional<Invocation> parse_command_line(const std::vector<std::string>& argv,
                                             GlobalOptions& global, Failure& failure) {
  static const std::set<std::string> kGlobalValues = {"--socket", "--timeout"};
  Invocation inv;
  bool options_done = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    const bool is_option = !options_done && arg.size() > 1 && arg[0] == '-';
    if (!is_option) {
      if (!options_done && arg == "--") continue;
      if (!inv.spec) {
        for (const CommandSpec& c : commands()) {
          if (c.name == arg) inv.spec = &c;
        }
        if (!inv.spec) {
          if (arg == "help") {
            // `policyctl help [COMMAND]`
            inv.help = true;
            if (i + 1 < argv.size()) {
              for (const CommandSpec& c : commands()) {
                if (c.name == argv[i + 1]) inv.spec = &c;
              }
            }
            return inv;
          }
          failure = usage_error("unknown command \"" + arg + "\"");
          return std::nullopt;
        }
        continue;
      }
      inv.args.push_back(arg);
      continue;
    }
    if (arg == "--") {
      options_done = true;
      continue;
    }
    const std::string name = option_name(arg);
    if (arg == "-h" || arg == "--help") {
      inv.help = true;
    } else if (arg == "--json") {
      global.json = true;
    } else if (kGlobalValues.count(name)) {
      std::optional<std::string> v = take_value(argv, i, name, failure);
      if (!v || !apply_global(name, *v, global, failure)) return std::nullopt;
    } else if (inv.spec && inv.spec->value_options.count(name)) {
      std::optional<std::string> v = take_value(argv, i, name, failure);
      if (!v) return std::nullopt;
      inv.options[name] = *v;
    } else {
      failure = usage_error("unknown option \"" + arg + "\"" +
                            (inv.spec ? " for " + inv.spec->name : std::string()));
      return std::nullopt;
    }
  }
  if (inv.help) return inv;
  if (!inv.spec) {
    failure = usage_error("no command given");
    return std::nullopt;
  }
  if (inv.args.size() < inv.spec->min_args || inv.args.size() > inv.spec->max_args) {
    const std::string& help = inv.spec->help;
    failure = {kExitUsage, inv.spec->name + ": wrong number of arguments (" +
                               help.substr(0, help.find('\n')) + ")"};
    return std::nullopt;
  }
  return inv;
}

// An option holding a generation number; `what` names it in the message.
std::optional<uint64_t> generation_option(const Invocation& inv, const std::string& name,
                                          Failure& failure) {
  auto it = inv.options.find(name);
  if (it == inv.options.end()) return 0;
  std::optional<uint64_t> v = parse_u64(it->second);
  if (!v) failure = usage_error(name + ": \"" + it->second + "\" is not a generation number");
  return v;
}

// ---------------------------------------------------------------------------------------------
// Output helpers.

std::string format_time(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  const time_t secs = static_cast<time_t>(unix_ms / 1000);
  struct tm tm {};
  gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(unix_ms % 1000));
  return buf;
}

std::string or_dash(const std::string& s) { return s.empty() ? "-" : s; }

template <typename Range>
std::string join_list(const Range& items, const std::string& sep = ", ") {
  std::ostringstream out;
  bool first = true;
  for (const auto& item : items) {
    if (!first) out << sep;
    out << item;
    first = false;
  }
  return out.str();
}

// Left-aligned columns separated by two spaces; no trailing blanks.
void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line += std::string(width[c] - row[c].size() + 2, ' ');
    }
    std::cout << line << "\n";
  }
}

// The protobuf JSON mapping (64-bit integers as strings, bytes as base64), on one line.
std::string to_json(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options).ok()) return "{}";
  return out;
}

std::string slot_text(const pb::SlotRef& slot) {
  switch (slot.slot_case()) {
    case pb::SlotRef::kIndex:
      return std::to_string(slot.index());
    case pb::SlotRef::kKey:
      return "0x" + util::to_hex(Bytes(slot.key().begin(), slot.key().end()));
    case pb::SlotRef::kFields: {
      std::vector<std::string> parts;
      for (const auto& [k, v] : slot.fields().values()) parts.push_back(k + "=" + v);
      std::sort(parts.begin(), parts.end());
      return join_list(parts, ",");
    }
    default:
      return "-";
  }
}

// ---------------------------------------------------------------------------------------------
// Connection.

class Client {
 public:
  explicit Client(const GlobalOptions& global) : global_(global) {
    grpc::ChannelArguments args;
    // Dumps of large inner maps exceed gRPC's default 4 MiB receive limit.
    args.SetMaxReceiveMessageSize(-1);
    channel_ = grpc::CreateCustomChannel("unix:" + global.socket,
                                         grpc::InsecureChannelCredentials(), args);
    stub_ = pb::Policy::NewStub(channel_);
  }

  pb::Policy::Stub& stub() { return *stub_; }

  // A context with the call deadline.
  std::unique_ptr<grpc::ClientContext> context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::microseconds(static_cast<int64_t>(global_.timeout * 1e6)));
    return ctx;
  }

  grpc::Status get_state(pb::GetStateResponse& state) {
    auto ctx = context();
    return stub_->GetState(ctx.get(), pb::GetStateRequest(), &state);
  }

 private:
  const GlobalOptions& global_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::Policy::Stub> stub_;
};

// ---------------------------------------------------------------------------------------------
// Commands. Each returns an exit code, printing its failure.

// When gRPC refused a message for its size ("Received message larger than max (524024 vs.
// 262144)"), the receiver's limit (a guess when the text does not say).
std::optional<size_t> message_limit(const grpc::Status& status) {
  if (status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) return std::nullopt;
  const std::string& msg = status.error_message();
  if (msg.find("larger than max") == std::string::npos) return std::nullopt;
  const size_t vs = msg.find("vs. ");
  std::optional<uint64_t> limit;
  if (vs != std::string::npos) {
    const size_t start = vs + 4;
    size_t end = start;
    while (end < msg.size() && std::isdigit(static_cast<unsigned char>(msg[end]))) ++end;
    limit = parse_u64(msg.substr(start, end - start));
  }
  return limit && *limit > 0 ? static_cast<size_t>(*limit) : size_t{64} << 10;
}

int cmd_push(Client& client, const GlobalOptions& global, const Invocation& inv) {
  const std::string& path = inv.args[0];
  std::string text;
  std::string file_name = path;
  if (path == "-") {
    file_name = "<stdin>";
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::ifstream in(path, std::ios::binary);
    if (!in) return report({kExitLocal, "cannot read " + path + ": " + std::strerror(errno)});
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (in.bad()) return report({kExitLocal, "cannot read " + path + ": " + std::strerror(errno)});
  }
  Failure failure;
  const std::optional<uint64_t> expect = generation_option(inv, "--expect", failure);
  if (!expect) return report(failure);

  pb::GetStateResponse state;
  if (grpc::Status st = client.get_state(state); !st.ok()) return report(rpc_failure(st));
  Result<pb::PushGenerationRequest> parsed = parse_policy_file(text, file_name, state);
  if (!parsed.ok()) return report({kExitLocal, parsed.error().message()});
  pb::PushGenerationRequest& request = *parsed;
  if (auto it = inv.options.find("--label"); it != inv.options.end()) {
    request.set_label(it->second);
  }
  request.set_expected_generation(*expect);
  if (auto it = inv.options.find("--request-id"); it != inv.options.end()) {
    request.set_request_id(it->second);
  }

  // Unary up to kUnaryPushMaxBytes, else streamed. The daemon's message limit is configurable
  // (limits.max_message_bytes) and not reported, so a push gRPC refused for its size alone
  // (nothing was committed) is sent again as a stream of messages under the limit it names.
  pb::PushGenerationResponse response;
  grpc::Status status;
  bool unary = request.ByteSizeLong() <= kUnaryPushMaxBytes;
  size_t chunk_bytes = kStreamChunkBytes;
  for (int attempt = 0; attempt < 3; ++attempt) {
    response.Clear();
    auto ctx = client.context();
    if (unary) {
      status = client.stub().PushGeneration(ctx.get(), request, &response);
    } else {
      std::unique_ptr<grpc::ClientWriter<pb::PushGenerationRequest>> writer =
          client.stub().PushGenerationStream(ctx.get(), &response);
      for (const pb::PushGenerationRequest& part : split_push_request(request, chunk_bytes)) {
        if (!writer->Write(part)) break;  // the call ended; Finish says why
      }
      writer->WritesDone();
      status = writer->Finish();
    }
    const std::optional<size_t> limit = message_limit(status);
    if (!limit) break;
    const size_t next = std::max<size_t>(*limit / 4 * 3, 1024);
    if (!unary && next >= chunk_bytes) break;
    unary = false;
    chunk_bytes = next;
  }
  if (!status.ok()) return report(rpc_failure(status));

  if (global.json) {
    std::cout << to_json(response) << "\n";
    return kExitOk;
  }
  std::cout << "generation " << response.generation() << " committed";
  if (!request.label().empty()) std::cout << " (label " << request.label() << ")";
  if (response.batch_size() > 1) {
    std::cout << ", one barrier for " << response.batch_size() << " generations";
  }
  if (response.replayed()) std::cout << "; replayed: request id already committed";
  std::cout << "\n";
  return kExitOk;
}

int cmd_status(Client& client, const GlobalOptions& global, const Invocation&) {
  pb::GetStateResponse state;
  if (grpc::Status st = client.get_state(state); !st.ok()) return report(rpc_failure(st));
  if (global.json) {
    std::cout << to_json(state) << "\n";
    return kExitOk;
  }
  std::string generation = std::to_string(state.generation());
  if (!state.label().empty()) generation += " (" + state.label() + ")";
  print_table({
      {"generation", generation},
      {"committed", std::to_string(state.generations_committed()) + " generations, " +
                        std::to_string(state.barriers()) + " barriers since start"},
      {"barrier", or_dash(state.barrier_strategy())},
      {"kernel", or_dash(state.kernel())},
  });
  if (state.maps().empty()) return kExitOk;
  std::cout << "\n";
  std::vector<std::vector<std::string>> rows = {{"MAP", "TYPE", "SLOTS", "LIVE", "INNER", "MAX",
                                                 "KEY", "VALUE", "SLOT_KEY", "DRAIN", "GROUP"}};
  for (const pb::MapState& m : state.maps()) {
    const bool hash = m.type() == "hash_of_maps";
    rows.push_back({m.name(), m.type(), std::to_string(m.slots()),
                    std::to_string(m.live_slots_size()), or_dash(m.inner_type()),
                    std::to_string(m.inner_max_entries()), std::to_string(m.key_size()),
                    std::to_string(m.value_size()), hash ? std::to_string(m.slot_key_size()) : "-",
                    or_dash(m.drain()), or_dash(m.group())});
  }
  print_table(rows);
  return kExitOk;
}

int cmd_generations(Client& client, const GlobalOptions& global, const Invocation&) {
  pb::ListGenerationsResponse response;
  auto ctx = client.context();
  grpc::Status st =
      client.stub().ListGenerations(ctx.get(), pb::ListGenerationsRequest(), &response);
  if (!st.ok()) return report(rpc_failure(st));
  if (global.json) {
    std::cout << to_json(response) << "\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {
      {"", "GEN", "LABEL", "COMMITTED", "CHANGES", "ENTRIES", "REQUEST_ID"}};
  for (const pb::GenerationInfo& g : response.generations()) {
    rows.push_back({g.generation() == response.current() ? "*" : " ",
                    std::to_string(g.generation()), or_dash(g.label()),
                    format_time(g.committed_unix_ms()), std::to_string(g.changes()),
                    std::to_string(g.entries()), or_dash(g.request_id())});
  }
  print_table(rows);
  return kExitOk;
}

int cmd_rollback(Client& client, const GlobalOptions& global, const Invocation& inv) {
  pb::RollbackRequest request;
  if (!inv.args.empty()) {
    std::optional<uint64_t> gen = parse_u64(inv.args[0]);
    if (!gen) return report(usage_error("rollback: \"" + inv.args[0] + "\" is not a generation"));
    request.set_generation(*gen);
  }
  Failure failure;
  const std::optional<uint64_t> expect = generation_option(inv, "--expect", failure);
  if (!expect) return report(failure);
  request.set_expected_generation(*expect);
  if (auto it = inv.options.find("--request-id"); it != inv.options.end()) {
    request.set_request_id(it->second);
  }
  pb::RollbackResponse response;
  auto ctx = client.context();
  grpc::Status st = client.stub().Rollback(ctx.get(), request, &response);
  if (!st.ok()) return report(rpc_failure(st));
  if (global.json) {
    std::cout << to_json(response) << "\n";
    return kExitOk;
  }
  std::cout << "generation " << response.generation() << " committed: restores generation "
            << response.restored() << "\n";
  return kExitOk;
}

uint64_t saturating_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

int cmd_counters(Client& client, const GlobalOptions& global, const Invocation& inv) {
  pb::GetCountersRequest request;
  if (auto it = inv.options.find("--map"); it != inv.options.end()) request.set_map(it->second);
  pb::GetCountersResponse response;
  auto ctx = client.context();
  grpc::Status st = client.stub().GetCounters(ctx.get(), request, &response);
  if (!st.ok()) return report(rpc_failure(st));
  if (global.json) {
    JsonWriter w;
    w.begin_object().key("counters").begin_array();
    for (const pb::CounterValue& c : response.counters()) {
      w.begin_object()
          .key("map")
          .value(c.map())
          .key("slot")
          .value(c.slot())
          .key("field")
          .value(c.field())
          .key("drained")
          .value(c.drained())
          .key("live")
          .value(c.live())
          .end_object();
    }
    w.end_array().end_object();
    std::cout << w.str() << "\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {
      {"MAP", "SLOT", "FIELD", "DRAINED", "LIVE", "TOTAL"}};
  for (const pb::CounterValue& c : response.counters()) {
    rows.push_back({c.map(), c.slot(), c.field(), std::to_string(c.drained()),
                    std::to_string(c.live()),
                    std::to_string(saturating_add(c.drained(), c.live()))});
  }
  print_table(rows);
  return kExitOk;
}

// Layouts of one map for decoding dumps and encoding slots.
struct DumpLayouts {
  Layout key;
  Layout value;
  Layout slot_key;
};

// SLOT argument of `dump`: an index, raw hex, or k=v[,k=v] typed slot fields.
std::optional<pb::SlotRef> parse_slot_arg(const pb::MapState& map, const Layout& slot_key,
                                          const std::string& text, Failure& failure) {
  pb::SlotRef slot;
  if (map.type() == "array_of_maps") {
    std::optional<uint64_t> index = parse_u64(text);
    if (!index || *index > UINT32_MAX) {
      failure = usage_error("dump: slot \"" + text + "\" of " + map.name() +
                            " is not an index (a non-negative integer)");
      return std::nullopt;
    }
    slot.set_index(static_cast<uint32_t>(*index));
    return slot;
  }
  Result<Bytes> key = invalid_argument("");
  if (text.find('=') != std::string::npos) {
    std::map<std::string, std::string> values;
    std::stringstream parts(text);
    std::string part;
    while (std::getline(parts, part, ',')) {
      const size_t eq = part.find('=');
      if (eq == std::string::npos || eq == 0) {
        failure = usage_error("dump: \"" + part + "\" is not field=value");
        return std::nullopt;
      }
      values[part.substr(0, eq)] = part.substr(eq + 1);
    }
    if (slot_key.fields.empty()) {
      failure =
          usage_error("dump: " + map.name() + " has no slot_key schema; give the slot in hex");
      return std::nullopt;
    }
    key = schema::encode(slot_key, values, /*require_all=*/true);
  } else {
    key = util::from_hex(text);
    if (key.ok() && key->size() != map.slot_key_size()) {
      key = invalid_argument("expected " + std::to_string(map.slot_key_size()) +
                             " bytes of hex, got " + std::to_string(key->size()));
    }
  }
  if (!key.ok()) {
    failure = usage_error("dump: slot \"" + text + "\": " + key.error().message());
    return std::nullopt;
  }
  slot.set_key(std::string(key->begin(), key->end()));
  return slot;
}

// Fields in layout order: [(name, text)].
std::vector<std::pair<std::string, std::string>> decoded_fields(const Layout& layout,
                                                                const std::string& raw) {
  std::vector<std::pair<std::string, std::string>> out;
  const Bytes bytes(raw.begin(), raw.end());
  if (layout.fields.empty() || bytes.size() != layout.size) return out;
  const std::map<std::string, std::string> values = schema::decode(layout, bytes);
  for (const Field& f : layout.fields) {
    if (auto it = values.find(f.name); f.type != FieldType::kPad && it != values.end()) {
      out.emplace_back(f.name, it->second);
    }
  }
  return out;
}

std::string describe(const Layout& layout, const std::string& raw) {
  const auto fields = decoded_fields(layout, raw);
  if (fields.empty()) return "0x" + util::to_hex(Bytes(raw.begin(), raw.end()));
  std::vector<std::string> parts;
  for (const auto& [name, text] : fields) parts.push_back(name + "=" + text);
  return join_list(parts, " ");
}

void write_fields(JsonWriter& w, const Layout& layout, const std::string& raw) {
  w.begin_object();
  for (const auto& [name, text] : decoded_fields(layout, raw)) w.key(name).value(text);
  w.end_object();
}

int cmd_dump(Client& client, const GlobalOptions& global, const Invocation& inv) {
  const std::string& map_name = inv.args[0];
  pb::GetStateResponse state;
  if (grpc::Status st = client.get_state(state); !st.ok()) return report(rpc_failure(st));
  const pb::MapState* map = nullptr;
  std::vector<std::string> known;
  for (const pb::MapState& m : state.maps()) {
    known.push_back(m.name());
    if (m.name() == map_name) map = &m;
  }
  if (!map) {
    return report(usage_error("dump: unknown map \"" + map_name +
                              "\" (maps: " + (known.empty() ? "none" : join_list(known)) + ")"));
  }
  // Decoding is best effort: a layout that does not rebuild prints raw hex instead.
  auto layout = [](const auto& fields, uint32_t size) {
    Result<Layout> l = layout_from_state(fields, size);
    return l.ok() ? std::move(l).value() : Layout{{}, size};
  };
  const DumpLayouts layouts{layout(map->key_layout(), map->key_size()),
                            layout(map->value_layout(), map->value_size()),
                            layout(map->slot_key_layout(), map->slot_key_size())};
  Failure failure;
  std::optional<pb::SlotRef> slot = parse_slot_arg(*map, layouts.slot_key, inv.args[1], failure);
  if (!slot) return report(failure);

  pb::DumpSlotRequest request;
  request.set_map(map->name());
  *request.mutable_slot() = *slot;
  pb::DumpSlotResponse response;
  auto ctx = client.context();
  grpc::Status st = client.stub().DumpSlot(ctx.get(), request, &response);
  if (!st.ok()) return report(rpc_failure(st));

  const auto hex = [](const std::string& raw) {
    return util::to_hex(Bytes(raw.begin(), raw.end()));
  };
  if (global.json) {
    JsonWriter w;
    w.begin_object()
        .key("map")
        .value(map->name())
        .key("slot")
        .value(slot_text(*slot))
        .key("map_id")
        .value(response.map_id())
        .key("generation")
        .value(response.generation())
        .key("entries")
        .begin_array();
    for (const pb::DumpedEntry& e : response.entries()) {
      w.begin_object().key("key").value(hex(e.key())).key("value").value(hex(e.value()));
      w.key("key_fields");
      write_fields(w, layouts.key, e.key());
      w.key("value_fields");
      write_fields(w, layouts.value, e.value());
      if (!e.per_cpu_values().empty()) {
        w.key("per_cpu_values").begin_array();
        for (const std::string& v : e.per_cpu_values()) w.value(hex(v));
        w.end_array();
      }
      w.end_object();
    }
    w.end_array().end_object();
    std::cout << w.str() << "\n";
    return kExitOk;
  }
  std::cout << map->name() << " slot " << slot_text(*slot) << ": inner map id " << response.map_id()
            << ", generation " << response.generation() << ", " << response.entries_size()
            << (response.entries_size() == 1 ? " entry" : " entries") << "\n";
  for (const pb::DumpedEntry& e : response.entries()) {
    if (e.per_cpu_values().empty()) {
      std::cout << describe(layouts.key, e.key()) << " -> " << describe(layouts.value, e.value())
                << "\n";
      continue;
    }
    std::cout << describe(layouts.key, e.key()) << "\n";
    for (int cpu = 0; cpu < e.per_cpu_values_size(); ++cpu) {
      std::cout << "  cpu" << cpu << ": " << describe(layouts.value, e.per_cpu_values(cpu)) << "\n";
    }
  }
  return kExitOk;
}

std::string format_ms(double ms) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f ms", ms);
  return buf;
}

std::string event_text(const pb::Event& event) {
  std::string line = format_time(event.unix_ms()) + " ";
  switch (event.kind_case()) {
    case pb::Event::kCommitted: {
      const pb::Committed& c = event.committed();
      line += c.generations_size() == 1 ? "committed generation " : "committed generations ";
      line += join_list(c.generations());
      std::vector<std::string> labels;
      for (const std::string& l : c.labels()) labels.push_back(or_dash(l));
      if (std::any_of(labels.begin(), labels.end(), [](const auto& l) { return l != "-"; })) {
        line += " (" + join_list(labels) + ")";
      }
      line += ": " + std::to_string(c.slots_written()) +
              (c.slots_written() == 1 ? " slot" : " slots") + ", build " + format_ms(c.build_ms()) +
              ", swap " + format_ms(c.swap_ms()) + ", barrier " + format_ms(c.barrier_ms());
      break;
    }
    case pb::Event::kDrained: {
      const pb::Drained& d = event.drained();
      line += "drained " + d.map() + " slot " + d.slot() + ": inner map id " +
              std::to_string(d.map_id()) + " of generation " + std::to_string(d.installed_by()) +
              ", replaced by " + std::to_string(d.replaced_by()) + ", " +
              std::to_string(d.entries()) + (d.entries() == 1 ? " entry" : " entries");
      std::map<std::string, uint64_t> counters(d.counters().begin(), d.counters().end());
      for (const auto& [field, total] : counters) {
        line += ", " + field + "=" + std::to_string(total);
      }
      break;
    }
    case pb::Event::kReloaded: {
      const pb::Reloaded& r = event.reloaded();
      auto names = [](const auto& list) {
        return list.empty() ? std::string("-") : join_list(list);
      };
      line += "reloaded configuration: added " + names(r.added_maps()) + "; kept " +
              names(r.kept_maps()) + "; removed " + names(r.removed_maps());
      break;
    }
    default:
      line += "unknown event";
      break;
  }
  return line;
}

int cmd_watch(Client& client, const GlobalOptions& global, const Invocation&) {
  // SIGINT and SIGTERM are blocked in every thread (run() did so before gRPC started any) and
  // taken here by sigwait, so an interrupt cancels the call and the command ends cleanly.
  grpc::ClientContext ctx;  // no deadline: runs until interrupted
  std::atomic<bool> interrupted{false};
  std::atomic<bool> finished{false};
  std::thread waiter([&ctx, &interrupted, &finished] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int sig = 0;
    if (sigwait(&set, &sig) == 0 && !finished) {
      interrupted = true;
      ctx.TryCancel();
    }
  });

  std::unique_ptr<grpc::ClientReader<pb::Event>> reader =
      client.stub().WatchEvents(&ctx, pb::WatchEventsRequest());
  pb::Event event;
  while (reader->Read(&event)) {
    std::cout << (global.json ? to_json(event) : event_text(event)) << std::endl;  // flush
  }
  grpc::Status st = reader->Finish();
  // The waiter must be done with ctx before it goes: wake it if the stream ended by itself.
  finished = true;
  pthread_kill(waiter.native_handle(), SIGTERM);
  waiter.join();
  if (interrupted) return kExitOk;
  if (!st.ok()) return report(rpc_failure(st));
  return kExitOk;
}

int cmd_reload(Client& client, const GlobalOptions& global, const Invocation&) {
  pb::ReloadConfigResponse response;
  auto ctx = client.context();
  grpc::Status st = client.stub().ReloadConfig(ctx.get(), pb::ReloadConfigRequest(), &response);
  if (!st.ok()) return report(rpc_failure(st));
  if (global.json) {
    std::cout << to_json(response) << "\n";
    return kExitOk;
  }
  auto names = [](const auto& list) { return list.empty() ? std::string("-") : join_list(list); };
  std::cout << "configuration reloaded: added " << names(response.added_maps()) << "; kept "
            << names(response.kept_maps()) << "; removed " << names(response.removed_maps())
            << "\n";
  return kExitOk;
}

int run(int argc, char** argv) {
  GlobalOptions global;
  if (const char* env = std::getenv("POLICYD_SOCKET"); env && *env) {
    global.socket = env;
  } else {
    global.socket = kDefaultSocket;
  }
  Failure failure;
  std::optional<Invocation> inv =
      parse_command_line(std::vector<std::string>(argv + 1, argv + argc), global, failure);
  if (!inv) return report(failure);
  if (inv->help) {
    std::cout << (inv->spec ? inv->spec->help : kUsage);
    return kExitOk;
  }

  using Handler = int (*)(Client&, const GlobalOptions&, const Invocation&);
  static const std::map<std::string, Handler> kHandlers = {
      {"push", cmd_push},         {"status", cmd_status},     {"generations", cmd_generations},
      {"rollback", cmd_rollback}, {"counters", cmd_counters}, {"dump", cmd_dump},
      {"watch", cmd_watch},       {"reload", cmd_reload},
  };
  if (inv->spec->name == "watch") {
    // Before the channel exists: threads gRPC starts inherit the mask.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
  }
  Client client(global);
  return kHandlers.at(inv->spec->name)(client, global, *inv);
}

}  // namespace
}  // namespace policyd::ctl

int main(int argc, char** argv) { return policyd::ctl::run(argc, argv); }
