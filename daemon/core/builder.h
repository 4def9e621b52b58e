// Builder: turns a validated Generation into new inner maps, created and filled with batched
// syscalls in parallel, outside the commit path. Thread-safe: build() may run on any thread
// concurrently with the committer; it only reads immutable configuration.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/model.h"
#include "core/validate.h"
#include "kernel/unique_fd.h"
#include "util/result.h"
#include "util/worker_pool.h"

namespace policyd::core {

// An inner map policyd created (or adopted) and owns an fd for. The kernel lookup on an outer
// map only returns ids, so this fd is how policyd reaches the map again for drain and undo.
struct InnerMap {
  kernel::UniqueFd fd;
  uint32_t id = 0;
  std::string map;  // config name of the outer map it belongs to
  Bytes slot;
  uint64_t installed_by = 0;  // generation id, 0 until committed (or adopted)
  std::string drain_pin;      // set while pinned under the drain directory
};
using InnerRef = std::shared_ptr<InnerMap>;

struct BuiltChange {
  std::string map;
  Bytes slot;
  InnerRef inner;  // null: delete the slot
};

struct BuiltGeneration {
  std::string label;
  std::vector<BuiltChange> changes;
  size_t entries = 0;   // total entries written
  double build_ms = 0;  // wall time of create + fill
};

// Creates an empty inner map that matches the outer map's template.
[[nodiscard]] Result<kernel::UniqueFd> create_inner_map(const OuterMapConfig& map);

class InnerMapPool;

// Validates, then fills one fresh inner map per replaced slot: taken from `inner_pool` when it
// holds one for the map's template, created otherwise. Slots are spread over `pool`'s threads
// when the generation is large enough to pay for the hand-off (kParallelBuildMin entries).
[[nodiscard]] Result<BuiltGeneration> build_generation(const Generation& gen,
                                                       const MapConfigs& maps,
                                                       util::WorkerPool& pool,
                                                       InnerMapPool* inner_pool = nullptr);

// Below this many entries in all, one thread builds a generation: waking a worker costs more
// than filling small maps (tens of microseconds on a busy 2-vCPU machine).
inline constexpr size_t kParallelBuildMin = 4096;

}  // namespace policyd::core
