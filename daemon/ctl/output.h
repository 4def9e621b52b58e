// How policyctl prints: times, aligned tables, lists, the protobuf JSON mapping, slot names.
// Shared by every command so the same thing is always spelled the same way.
#pragma once

#include <google/protobuf/message.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "policyd/v1/policyd.pb.h"

namespace policyd::ctl {

// UTC, millisecond precision ("2025-01-02T03:04:05.678Z"); "-" for no time.
[[nodiscard]] std::string format_time(int64_t unix_ms);

[[nodiscard]] inline std::string or_dash(const std::string& s) { return s.empty() ? "-" : s; }

template <typename Range>
[[nodiscard]] std::string join_list(const Range& items, const std::string& sep = ", ") {
  std::ostringstream out;
  bool first = true;
  for (const auto& item : items) {
    if (!first) out << sep;
    out << item;
    first = false;
  }
  return out.str();
}

// A list of names, or "-" when there are none (reloaded maps).
template <typename Range>
[[nodiscard]] std::string names_or_dash(const Range& items) {
  return items.empty() ? std::string("-") : join_list(items);
}

// "added a, b; kept c; removed -": the maps of a reload (ReloadConfigResponse, Reloaded).
template <typename ReloadMessage>
[[nodiscard]] std::string reload_summary(const ReloadMessage& m) {
  return "added " + names_or_dash(m.added_maps()) + "; kept " + names_or_dash(m.kept_maps()) +
         "; removed " + names_or_dash(m.removed_maps());
}

// Left-aligned columns separated by two spaces; no trailing blanks.
void print_table(const std::vector<std::vector<std::string>>& rows);

// The protobuf JSON mapping (64-bit integers as strings, bytes as base64), on one line.
[[nodiscard]] std::string to_json(const google::protobuf::Message& message);

// Raw bytes (a protobuf bytes field) in hex, without a prefix.
[[nodiscard]] std::string hex_of(const std::string& raw);

// A slot as the user writes it: an index, 0x<hex key>, or sorted k=v,k=v fields.
[[nodiscard]] std::string slot_text(const v1::SlotRef& slot);

}  // namespace policyd::ctl
