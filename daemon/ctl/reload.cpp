// policyctl reload: asks the daemon to re-read its configuration file, like SIGHUP.
#include <iostream>
#include <string>

#include "ctl/client.h"
#include "ctl/commands.h"
#include "ctl/output.h"

namespace policyd::ctl {

int cmd_reload(Client& client, const GlobalOptions& global, const Invocation&) {
  v1::ReloadConfigResponse response;
  auto ctx = client.context();
  grpc::Status st = client.stub().ReloadConfig(ctx.get(), v1::ReloadConfigRequest(), &response);
  if (!st.ok()) return report(rpc_failure(st));
  if (global.json) {
    std::cout << to_json(response) << "\n";
    return kExitOk;
  }
  std::cout << "configuration reloaded: " << reload_summary(response) << "\n";
  return kExitOk;
}

}  // namespace policyd::ctl
