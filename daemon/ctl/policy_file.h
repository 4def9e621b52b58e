// Policy files: the YAML a person writes for `policyctl push`, turned into a
// PushGenerationRequest whose keys, values and slots are raw bytes, encoded locally with the
// schemas the daemon reports in GetState. Errors name file:line:column and the field path, e.g.
//   policy.yaml:7:22: changes[0].entries[1].value.action: value 300 is out of range (max 255)
// Pure functions, thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "policyd/v1/policyd.pb.h"
#include "schema/schema.h"
#include "util/result.h"

namespace policyd::ctl {

// Parses a policy file:
//   label: v42                 # optional
//   changes:
//     - map: acl
//       slot: 0                # array index; for hash maps a mapping of slot_key fields,
//                              # or slot_hex: "<raw slot key>"
//       entries:               # the complete new contents ([] for an empty inner map)
//         - {key: {prefix: 10.0.0.0/8}, value: {action: 1}}
//         - {key_hex: "18000000c0a80100", value_hex: "020000000000000000000000"}
//     - {map: acl, slot: 3, delete: true}
// Typed keys must give every key field; typed values may omit fields (zero), counters included,
// and an entry without value or value_hex has an all-zero value (as in the API).
// `file_name` stands for the file in error messages.
[[nodiscard]] Result<v1::PushGenerationRequest> parse_policy_file(
    const std::string& yaml_text, const std::string& file_name, const v1::GetStateResponse& state);

// Rebuilds a layout from what GetState reports (`size` is the map's key, value or slot key
// size). An empty field list gives a layout with no fields: raw bytes only.
[[nodiscard]] Result<schema::Layout> layout_from_state(
    const google::protobuf::RepeatedPtrField<v1::FieldLayout>& fields, uint32_t size);

// Splits a push into PushGenerationStream messages of at most `max_bytes` serialized each (as
// long as one entry fits in `max_bytes`). The first message carries label, expected_generation
// and request_id. Changes stay in order; a change too large for the room left is continued in
// the next message as a change of the same map and slot with the following entries, which the
// daemon concatenates. Never returns an empty vector.
[[nodiscard]] std::vector<v1::PushGenerationRequest> split_push_request(
    const v1::PushGenerationRequest& request, size_t max_bytes);

}  // namespace policyd::ctl
