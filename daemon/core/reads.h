// Reads of live kernel state for the API, on any thread, beside the committer (reads never
// delay writes): GetState, GetCounters and DumpSlot. Each read takes one snapshot from the
// engine (Engine::state_snapshot, counter_snapshot, slot_snapshot) and reads the inner maps it
// names through descriptors of its own, opened by id, so that nothing the committer closes or
// frees meanwhile is read through a stale descriptor.
//
// An inner map the committer frees between the snapshot and its opening (replaced, drained,
// unpinned) fails to open with ENOENT; the read then starts again from a new snapshot, whose
// drained totals hold that map's counts. After kReadAttempts it fails with kUnavailable.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/engine.h"
#include "core/model.h"
#include "util/result.h"

namespace policyd::core {

inline constexpr size_t kReadAttempts = 8;

// The counters of `only` (every map with counter fields when empty). Each inner map is counted
// once (G5): a map read while its drain runs is either in the drained totals or read, never both.
[[nodiscard]] Result<CounterReading> read_counters(const Engine& engine, const std::string& only);

// Every entry of the inner map live in `slot` (kNotFound when it is empty).
[[nodiscard]] Result<DrainRecord> read_slot(const Engine& engine, const std::string& map,
                                            const Bytes& slot);

}  // namespace policyd::core
