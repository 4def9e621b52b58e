// policyctl counters: per map, slot and field, the totals drained from replaced inner maps
// and the live inner map's.
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "ctl/client.h"
#include "ctl/commands.h"
#include "ctl/json.h"
#include "ctl/output.h"

namespace policyd::ctl {
namespace {

uint64_t saturating_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

}  // namespace

int cmd_counters(Client& client, const GlobalOptions& global, const Invocation& inv) {
  v1::GetCountersRequest request;
  if (auto it = inv.options.find("--map"); it != inv.options.end()) request.set_map(it->second);
  v1::GetCountersResponse response;
  auto ctx = client.context();
  grpc::Status st = client.stub().GetCounters(ctx.get(), request, &response);
  if (!st.ok()) return report(rpc_failure(st));
  if (global.json) {
    JsonWriter w;
    w.begin_object().key("counters").begin_array();
    for (const v1::CounterValue& c : response.counters()) {
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
  for (const v1::CounterValue& c : response.counters()) {
    rows.push_back({c.map(), c.slot(), c.field(), std::to_string(c.drained()),
                    std::to_string(c.live()),
                    std::to_string(saturating_add(c.drained(), c.live()))});
  }
  print_table(rows);
  return kExitOk;
}

}  // namespace policyd::ctl
