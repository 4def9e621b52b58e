// SlotWriter: plans the syscalls of a round by strategy, runs them concurrently, and reports
// exactly which writes the kernel applied (batch calls stop at the first failing element).
#include "core/slot_writer.h"

#include <cerrno>
#include <map>

#include "kernel/map.h"

namespace policyd::core {

namespace {

// One syscall over one or more writes of a round.
struct Call {
  int outer_fd = -1;
  bool remove = false;
  bool batch = false;
  std::vector<size_t> writes;    // indexes into the round's writes
  Bytes keys;                    // the slots of `writes`, back to back
  std::vector<uint32_t> values;  // their inner map fds (updates)
};

// Batch: one update call and one delete call per outer map. Arrays have no delete batch, so
// their deletes stay single calls in the same round. Concurrent: one call per write.
std::vector<Call> plan_calls(Strategy strategy, const std::vector<OuterWrite>& writes) {
  std::vector<Call> calls;
  auto single = [&](size_t i) {
    Call call;
    call.outer_fd = writes[i].outer_fd;
    call.remove = writes[i].inner_fd < 0;
    call.writes = {i};
    calls.push_back(std::move(call));
  };
  if (strategy == Strategy::kConcurrent) {
    for (size_t i = 0; i < writes.size(); ++i) single(i);
    return calls;
  }
  std::map<std::pair<int, bool>, size_t> batch_of;
  for (size_t i = 0; i < writes.size(); ++i) {
    const OuterWrite& w = writes[i];
    const bool remove = w.inner_fd < 0;
    if (remove && w.array) {
      single(i);
      continue;
    }
    auto [it, inserted] = batch_of.emplace(std::make_pair(w.outer_fd, remove), calls.size());
    if (inserted) {
      Call call;
      call.outer_fd = w.outer_fd;
      call.remove = remove;
      call.batch = true;
      calls.push_back(std::move(call));
    }
    calls[it->second].writes.push_back(i);
  }
  return calls;
}

// Runs one planned call; returns how many of its writes the kernel applied.
uint32_t run_call(const Call& call, size_t key_size, std::optional<Error>& error) {
  const auto n = static_cast<uint32_t>(call.writes.size());
  if (call.batch && call.remove) {
    // A delete batch stops at a key that is not there (ENOENT). A slot already empty counts
    // as deleted, as for single deletes: go on past it.
    uint32_t done = 0;
    for (;;) {
      kernel::BatchOutcome out =
          kernel::delete_batch(call.outer_fd, call.keys.data() + done * key_size, n - done);
      done += out.applied;
      if (out.error && out.error->sys_errno == ENOENT && done < n) {
        if (++done < n) continue;
        out.error.reset();
      }
      error = std::move(out.error);
      return done;
    }
  }
  if (call.batch) {
    kernel::BatchOutcome out =
        kernel::update_batch(call.outer_fd, call.keys.data(), call.values.data(), n);
    error = std::move(out.error);
    return out.applied;
  }
  if (call.remove) {
    // A slot already empty counts as deleted: the data plane holds what we wanted.
    Result<bool> r = kernel::delete_elem(call.outer_fd, call.keys.data());
    if (r.ok()) return 1;
    error = std::move(r).error();
    return 0;
  }
  Status st = kernel::update_elem(call.outer_fd, call.keys.data(), call.values.data());
  if (st.ok()) return 1;
  error = std::move(st).error();
  return 0;
}

}  // namespace

Result<std::unique_ptr<SlotWriter>> SlotWriter::create(Strategy strategy, util::WorkerPool& pool) {
  std::unique_ptr<SlotWriter> w(new SlotWriter(strategy, pool));
  kernel::MapSpec inner{BPF_MAP_TYPE_ARRAY, "pd_barrier_in", 4, 4, 1, 0, -1};
  POLICYD_ASSIGN_OR_RETURN(w->barrier_inner_, kernel::create_map(inner));
  kernel::MapSpec outer{BPF_MAP_TYPE_ARRAY_OF_MAPS, "pd_barrier", 4, 4, 1, 0,
                        w->barrier_inner_.get()};
  POLICYD_ASSIGN_OR_RETURN(w->barrier_outer_, kernel::create_map(outer));
  return w;
}

RoundResult SlotWriter::apply(const std::vector<OuterWrite>& writes) {
  RoundResult result;
  result.applied.assign(writes.size(), false);
  if (writes.empty()) return result;

  std::vector<Call> calls = plan_calls(strategy_, writes);
  for (Call& call : calls) {
    for (size_t i : call.writes) {
      call.keys.insert(call.keys.end(), writes[i].slot.begin(), writes[i].slot.end());
      call.values.push_back(static_cast<uint32_t>(writes[i].inner_fd));
    }
  }
  std::vector<uint32_t> applied(calls.size(), 0);
  std::vector<std::optional<Error>> errors(calls.size());
  std::vector<std::function<void()>> tasks;
  tasks.reserve(calls.size());
  for (size_t c = 0; c < calls.size(); ++c) {
    tasks.emplace_back([&, c] {
      applied[c] = run_call(calls[c], writes[calls[c].writes[0]].slot.size(), errors[c]);
    });
  }
  if (tasks.size() == 1) {
    tasks.front()();  // one call (one outer map, batch strategy): nothing to overlap with
  } else {
    pool_.run_all(std::move(tasks));
  }

  stats_.rounds++;
  stats_.waiting_calls += calls.size();
  stats_.last_round_calls = calls.size();
  stats_.last_round_depth = (calls.size() + pool_.size() - 1) / pool_.size();
  for (size_t c = 0; c < calls.size(); ++c) {
    for (size_t k = 0; k < applied[c] && k < calls[c].writes.size(); ++k) {
      result.applied[calls[c].writes[k]] = true;
    }
    if (errors[c] && !result.error) {
      // Batch calls apply in order: the element at `applied` is the one that failed.
      const size_t failed =
          calls[c].writes[std::min<size_t>(applied[c], calls[c].writes.size() - 1)];
      result.error = errors[c]->wrap(writes[failed].what);
    }
  }
  return result;
}

std::vector<uint32_t> SlotWriter::own_map_ids() const {
  std::vector<uint32_t> ids;
  for (const kernel::UniqueFd* fd : {&barrier_inner_, &barrier_outer_}) {
    Result<kernel::MapInfo> info = kernel::map_info(fd->get());
    if (info.ok()) ids.push_back(info->id);
  }
  return ids;
}

Status SlotWriter::barrier() {
  const uint32_t key = 0;
  const auto value = static_cast<uint32_t>(barrier_inner_.get());
  Status st = kernel::update_elem(barrier_outer_.get(), &key, &value);
  stats_.barriers++;
  if (!st.ok()) return st.error().wrap("explicit barrier");
  return {};
}

}  // namespace policyd::core
