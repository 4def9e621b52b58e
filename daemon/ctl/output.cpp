// policyctl's output helpers.
#include "ctl/output.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <iostream>

#include "util/hex.h"

namespace policyd::ctl {

std::string format_time(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  const time_t secs = static_cast<time_t>(unix_ms / 1000);
  struct tm tm {};
  gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(unix_ms % 1000));
  return buf;
}

void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line += std::string(width[c] - row[c].size() + 2, ' ');
    }
    std::cout << line << "\n";
  }
}

std::string to_json(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options).ok()) return "{}";
  return out;
}

std::string hex_of(const std::string& raw) {
  return util::to_hex(std::vector<uint8_t>(raw.begin(), raw.end()));
}

std::string slot_text(const v1::SlotRef& slot) {
  switch (slot.slot_case()) {
    case v1::SlotRef::kIndex:
      return std::to_string(slot.index());
    case v1::SlotRef::kKey:
      return "0x" + hex_of(slot.key());
    case v1::SlotRef::kFields: {
      std::vector<std::string> parts;
      for (const auto& [k, v] : slot.fields().values()) parts.push_back(k + "=" + v);
      std::sort(parts.begin(), parts.end());
      return join_list(parts, ",");
    }
    default:
      return "-";
  }
}

}  // namespace policyd::ctl
