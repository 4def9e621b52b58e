// policyctl's command-line parser. Options may come before or after the command; `--` ends
// them; `--name=value` and `--name value` are the same.
#include "ctl/command_line.h"

#include <cmath>
#include <cstdlib>
#include <set>

#include "ctl/commands.h"

namespace policyd::ctl {
namespace {

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

// The option at argv[i]: a global one or one of the command's; `i` moves past its value.
bool take_option(const std::vector<std::string>& argv, size_t& i, Invocation& inv,
                 GlobalOptions& global, Failure& failure) {
  static const std::set<std::string> kGlobalValues = {"--socket", "--timeout"};
  const std::string& arg = argv[i];
  const std::string name = option_name(arg);
  if (arg == "-h" || arg == "--help") {
    inv.help = true;
  } else if (arg == "--json") {
    global.json = true;
  } else if (kGlobalValues.count(name)) {
    std::optional<std::string> v = take_value(argv, i, name, failure);
    return v && apply_global(name, *v, global, failure);
  } else if (inv.spec && inv.spec->value_options.count(name)) {
    std::optional<std::string> v = take_value(argv, i, name, failure);
    if (!v) return false;
    inv.options[name] = *v;
  } else {
    failure = usage_error("unknown option \"" + arg + "\"" +
                          (inv.spec ? " for " + inv.spec->name : std::string()));
    return false;
  }
  return true;
}

// A command was given, with as many positional arguments as its row of the table allows.
bool check_arguments(const Invocation& inv, Failure& failure) {
  if (!inv.spec) {
    failure = usage_error("no command given");
    return false;
  }
  if (inv.args.size() < inv.spec->min_args || inv.args.size() > inv.spec->max_args) {
    const std::string& help = inv.spec->help;
    failure = {kExitUsage, inv.spec->name + ": wrong number of arguments (" +
                               help.substr(0, help.find('\n')) + ")"};
    return false;
  }
  return true;
}

}  // namespace

std::optional<Invocation> parse_command_line(const std::vector<std::string>& argv,
                                             GlobalOptions& global, Failure& failure) {
  Invocation inv;
  bool options_done = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    const bool is_option = !options_done && arg.size() > 1 && arg[0] == '-';
    if (!is_option) {
      if (!options_done && arg == "--") continue;
      if (inv.spec) {
        inv.args.push_back(arg);
        continue;
      }
      inv.spec = find_command(arg);
      if (inv.spec) continue;
      if (arg == "help") {
        // `policyctl help [COMMAND]`
        inv.help = true;
        if (i + 1 < argv.size()) inv.spec = find_command(argv[i + 1]);
        return inv;
      }
      failure = usage_error("unknown command \"" + arg + "\"");
      return std::nullopt;
    }
    if (arg == "--") {
      options_done = true;
      continue;
    }
    if (!take_option(argv, i, inv, global, failure)) return std::nullopt;
  }
  if (inv.help) return inv;
  if (!check_arguments(inv, failure)) return std::nullopt;
  return inv;
}

}  // namespace policyd::ctl
