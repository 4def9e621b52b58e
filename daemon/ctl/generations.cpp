// policyctl generations and rollback: the daemon's history, and re-committing an older
// generation's state as a new one.
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "ctl/client.h"
#include "ctl/commands.h"
#include "ctl/output.h"

namespace policyd::ctl {

int cmd_generations(Client& client, const GlobalOptions& global, const Invocation&) {
  v1::ListGenerationsResponse response;
  auto ctx = client.context();
  grpc::Status st =
      client.stub().ListGenerations(ctx.get(), v1::ListGenerationsRequest(), &response);
  if (!st.ok()) return report(rpc_failure(st));
  if (global.json) {
    std::cout << to_json(response) << "\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {
      {"", "GEN", "LABEL", "COMMITTED", "CHANGES", "ENTRIES", "REQUEST_ID"}};
  for (const v1::GenerationInfo& g : response.generations()) {
    rows.push_back({g.generation() == response.current() ? "*" : " ",
                    std::to_string(g.generation()), or_dash(g.label()),
                    format_time(g.committed_unix_ms()), std::to_string(g.changes()),
                    std::to_string(g.entries()), or_dash(g.request_id())});
  }
  print_table(rows);
  return kExitOk;
}

int cmd_rollback(Client& client, const GlobalOptions& global, const Invocation& inv) {
  v1::RollbackRequest request;
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
  v1::RollbackResponse response;
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

}  // namespace policyd::ctl
