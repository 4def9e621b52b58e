// policyctl: the command-line client of policyd's gRPC API. Pushes policy files
// (encoded to raw bytes here, with the schemas GetState reports), shows state,
// history and counters, dumps slots, watches events, rolls back and reloads.
// Exit codes: 0 ok, 1 the server refused or could not be reached, 2 bad usage,
// 3 a local file or parse error. The commands are in commands.cpp's table, one
// file per command group.
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "ctl/cli.h"
#include "ctl/client.h"
#include "ctl/command_line.h"
#include "ctl/commands.h"

namespace policyd::ctl {
namespace {

constexpr const char* kDefaultSocket = "/run/policyd/policyd.sock";

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
    std::cout << (inv->spec ? inv->spec->help : usage_text());
    return kExitOk;
  }
  // Before the channel exists: threads gRPC starts inherit the mask.
  if (inv->spec->blocks_interrupts) block_interrupts();
  Client client(global);
  return inv->spec->handler(client, global, *inv);
}

}  // namespace
}  // namespace policyd::ctl

int main(int argc, char** argv) { return policyd::ctl::run(argc, argv); }
