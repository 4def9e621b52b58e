// proto <-> core: turns API messages into core requests (typed fields encoded by the map's
// schema, errors naming the field path) and core results, views and events into API messages.
// Pure functions of their arguments (no engine, no committer): thread-safe, unit-tested.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "api/reload.h"
#include "config/config.h"
#include "core/committer.h"
#include "core/engine.h"
#include "core/model.h"
#include "core/reads.h"
#include "policyd/v1/policyd.pb.h"
#include "util/result.h"

namespace policyd::api {

// ---- proto -> core

// The slot key a SlotRef names in `map`: `index` for array_of_maps, raw `key` or typed `fields`
// (the map's slot_key schema, every field required) for hash_of_maps. `path` prefixes errors
// ("changes[2].slot"). Sizes and ranges are left to core validation.
[[nodiscard]] Result<core::Bytes> to_slot(const v1::SlotRef& ref, const core::OuterMapConfig& map,
                                          const config::MapSchema* schema, const std::string& path);

// Assembles a push from one message (PushGeneration) or many (PushGenerationStream). The first
// message's label, expected_generation and request_id are the header; later messages may repeat
// them but not change them. Changes accumulate. A slot too large for one message is continued:
// when a message's first change names the same map, slot and delete flag as the previous
// message's last change, its entries are appended to that change. Field paths in errors count
// changes (and a continued change's entries) across all messages, like core validation does:
//   changes[17].entries[3].value_fields (map "acl" slot 2): action: value 300 is out of range
// The total number of entries is bounded by limits.max_entries_per_push, the encoded size of all
// messages by limits.max_bytes_per_push, and the sets (and the deletes) of one map by its slot
// count (each RESOURCE_EXHAUSTED, checked before anything of the message is converted). label and
// request_id longer than kMaxLabelBytes / kMaxRequestIdBytes are INVALID_ARGUMENT.
// `config` must outlive the assembler.
inline constexpr size_t kMaxLabelBytes = 256;
inline constexpr size_t kMaxRequestIdBytes = 128;

// INVALID_ARGUMENT naming `field` when `value` is longer than `limit` bytes.
[[nodiscard]] Status check_length(const std::string& value, const std::string& field, size_t limit);

class PushAssembler {
 public:
  explicit PushAssembler(const config::DaemonConfig& config);

  [[nodiscard]] Status add(const v1::PushGenerationRequest& message);
  [[nodiscard]] size_t messages() const { return messages_; }
  [[nodiscard]] uint64_t entries() const { return entries_; }
  // The assembled request; the assembler is left empty.
  [[nodiscard]] core::PushRequest take();

 private:
  Status add_change(const v1::SlotChange& in, bool may_continue);
  Status count_changes_per_map(const v1::PushGenerationRequest& message);

  const config::DaemonConfig& config_;
  std::map<std::string, const core::OuterMapConfig*> maps_;
  core::PushRequest request_;
  size_t messages_ = 0;
  uint64_t entries_ = 0;
  uint64_t bytes_ = 0;
  std::map<std::string, uint64_t> sets_per_map_;
  std::map<std::string, uint64_t> deletes_per_map_;
};

// A unary push: PushAssembler with one message.
[[nodiscard]] Result<core::PushRequest> to_push_request(const v1::PushGenerationRequest& request,
                                                        const config::DaemonConfig& config);

// ---- core -> proto

void to_proto(const core::PushResult& result, v1::PushGenerationResponse* out);

// An index for array_of_maps, the raw key for hash_of_maps.
[[nodiscard]] v1::SlotRef to_slot_ref(core::OuterKind kind, const core::Bytes& slot);

// Inner map type name as the configuration spells it ("lpm_trie").
[[nodiscard]] std::string inner_type_name(bpf_map_type type);

void to_field_layouts(const schema::Layout& layout,
                      google::protobuf::RepeatedPtrField<v1::FieldLayout>* out);

// One outer map: configuration, typed layouts (when `schema` is known), pin path, live slots.
void to_map_state(const core::OuterMapConfig& map, const config::MapSchema* schema,
                  const std::string& pin_path, const std::vector<core::SlotInfo>& live,
                  v1::MapState* out);

// Generation, label and counters of the committer's view (maps are added separately).
void to_state_header(const core::CommitterView& view, v1::GetStateResponse* out);

void to_generation_info(const core::GenerationRecord& record, v1::GenerationInfo* out);
void to_list_generations(const core::CommitterView& view, v1::ListGenerationsResponse* out);

// A live slot's contents, raw and decoded. For per-CPU maps `value` is CPU 0's value, every
// CPU's value is in per_cpu_values, and the decoded counter fields are summed over CPUs.
void to_dump(const core::DrainRecord& record, const core::OuterMapConfig& map,
             const config::MapSchema* schema, v1::DumpSlotResponse* out);

// One CounterValue per counter field of every (map, slot) in `table`, in map, slot and field
// declaration order; slots of maps not in `maps` are skipped.
void to_counters(const core::CounterTable& table, const core::MapConfigs& maps,
                 v1::GetCountersResponse* out);

[[nodiscard]] v1::Event to_event(const core::CommittedEvent& event, int64_t unix_ms);
// `kind` formats the slot (index or hex), as the map it came from is configured.
[[nodiscard]] v1::Event to_event(const core::DrainedEvent& event, core::OuterKind kind,
                                 int64_t unix_ms);
[[nodiscard]] v1::Event to_event(const ReloadSummary& summary, int64_t unix_ms);
void to_proto(const ReloadSummary& summary, v1::ReloadConfigResponse* out);

}  // namespace policyd::api
