// Drain: reading the final contents of an inner map that left the data plane (after the
// barrier), counting its entries and summing its counter fields over entries and CPUs. Also
// used to read live totals and to dump a live slot.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "core/builder.h"
#include "core/model.h"
#include "util/result.h"

namespace policyd::core {

// Reads every entry of `inner` (per-CPU values kept per CPU), their count and the counter
// sums: what DumpSlot shows of a live slot.
[[nodiscard]] Result<DrainRecord> read_inner(const InnerMap& inner, const OuterMapConfig& map);

// The drain of a map that left the data plane: entry count and counter sums only, no entry is
// kept (the walk holds one batch of the kernel's lookup at a time). With DrainMode::kNone
// nothing is read.
[[nodiscard]] Result<DrainRecord> drain_inner(const InnerMap& inner, const OuterMapConfig& map,
                                              uint64_t replaced_by);

// Sums of the counter fields over all entries (and CPUs) of a map, by field name.
[[nodiscard]] Result<std::map<std::string, uint64_t>> read_counter_totals(
    int fd, const OuterMapConfig& map);

}  // namespace policyd::core
