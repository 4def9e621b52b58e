// policyctl watch: one line per daemon event until SIGINT or SIGTERM, which a waiter thread
// takes with sigwait and turns into cancelling the stream.
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ctl/client.h"
#include "ctl/commands.h"
#include "ctl/output.h"

namespace policyd::ctl {
namespace {

// SIGINT and SIGTERM: what ends a watch.
sigset_t interrupt_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

std::string format_ms(double ms) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f ms", ms);
  return buf;
}

std::string event_text(const v1::Event& event) {
  std::string line = format_time(event.unix_ms()) + " ";
  switch (event.kind_case()) {
    case v1::Event::kCommitted: {
      const v1::Committed& c = event.committed();
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
    case v1::Event::kDrained: {
      const v1::Drained& d = event.drained();
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
    case v1::Event::kReloaded: {
      line += "reloaded configuration: " + reload_summary(event.reloaded());
      break;
    }
    default:
      line += "unknown event";
      break;
  }
  return line;
}

}  // namespace

void block_interrupts() {
  const sigset_t set = interrupt_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int cmd_watch(Client& client, const GlobalOptions& global, const Invocation&) {
  // SIGINT and SIGTERM are blocked in every thread (block_interrupts() ran before gRPC started any)
  // and taken here by sigwait, so an interrupt cancels the call and the command ends cleanly.
  grpc::ClientContext ctx;  // no deadline: runs until interrupted
  std::atomic<bool> interrupted{false};
  std::atomic<bool> finished{false};
  std::thread waiter([&ctx, &interrupted, &finished] {
    const sigset_t set = interrupt_signals();
    int sig = 0;
    if (sigwait(&set, &sig) == 0 && !finished) {
      interrupted = true;
      ctx.TryCancel();
    }
  });

  std::unique_ptr<grpc::ClientReader<v1::Event>> reader =
      client.stub().WatchEvents(&ctx, v1::WatchEventsRequest());
  v1::Event event;
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

}  // namespace policyd::ctl
