// proto <-> core conversion.
#include "api/convert.h"

#include <cstring>
#include <utility>

#include "kernel/map_types.h"
#include "schema/schema.h"

namespace policyd::api {
namespace {

std::map<std::string, std::string> to_std_map(const v1::Fields& fields) {
  return {fields.values().begin(), fields.values().end()};
}

core::Bytes to_bytes(const std::string& s) { return {s.begin(), s.end()}; }

std::string to_string_bytes(const core::Bytes& b) { return {b.begin(), b.end()}; }

const config::MapSchema* find_schema(const config::DaemonConfig& config, const std::string& map) {
  auto it = config.schemas.find(map);
  return it == config.schemas.end() ? nullptr : &it->second;
}

Error resource_exhausted(std::string context) {
  return Error{ErrorCode::kResourceExhausted, 0, std::move(context)};
}

// "<path> (<where>): <cause>": the field path first, then the map and slot it concerns (G1).
Error field_error(const std::string& path, const std::string& where, Error cause) {
  cause.context = path + where + ": " + cause.context;
  return cause;
}

// Raw bytes, or typed fields encoded by the key layout; exactly one of them. `fail(field, e)`
// places an error.
template <typename Fail>
Result<core::Bytes> to_key(const v1::Entry& e, const config::MapSchema* schema, Fail&& fail) {
  const bool raw = !e.key().empty();
  if (raw && e.has_key_fields()) {
    return fail("key", invalid_argument("give key or key_fields, not both"));
  }
  if (raw) return to_bytes(e.key());
  if (!e.has_key_fields()) return fail("key", invalid_argument("missing (give key or key_fields)"));
  if (!schema) return fail("key_fields", invalid_argument("the map has no key schema; give key"));
  // Straight from the message's map: no std::map copy of names and texts per entry.
  core::Bytes key;
  Status st = schema::encode_pairs(schema->key, e.key_fields().values(), true, key);
  if (!st.ok()) return fail("key_fields", st.error());
  return key;
}

// Raw bytes, typed fields (missing ones are zero) or nothing at all (all zero).
template <typename Fail>
Result<core::Bytes> to_value(const v1::Entry& e, const core::OuterMapConfig& map,
                             const config::MapSchema* schema, Fail&& fail) {
  const bool raw = !e.value().empty();
  if (raw && e.has_value_fields()) {
    return fail("value", invalid_argument("give value or value_fields, not both"));
  }
  if (raw) return to_bytes(e.value());
  if (!e.has_value_fields()) return core::Bytes(map.inner.value_size, 0);
  if (!schema) {
    return fail("value_fields", invalid_argument("the map has no value schema; give value"));
  }
  core::Bytes value;
  Status st = schema::encode_pairs(schema->value, e.value_fields().values(), false, value);
  if (!st.ok()) return fail("value_fields", st.error());
  return value;
}

}  // namespace

// ---- proto -> core

Result<core::Bytes> to_slot(const v1::SlotRef& ref, const core::OuterMapConfig& map,
                            const config::MapSchema* schema, const std::string& path) {
  const bool array = map.kind == core::OuterKind::kArray;
  const std::string is_a =
      "map \"" + map.name + "\" is " +
      (array ? "an array_of_maps: give index" : "a hash_of_maps: give key or fields");
  switch (ref.slot_case()) {
    case v1::SlotRef::kIndex:
      if (!array) return invalid_argument(path + ".index: " + is_a);
      return core::array_slot(ref.index());
    case v1::SlotRef::kKey:
      if (array) return invalid_argument(path + ".key: " + is_a);
      return to_bytes(ref.key());
    case v1::SlotRef::kFields: {
      if (array) return invalid_argument(path + ".fields: " + is_a);
      if (!schema || !schema->slot_key) {
        return invalid_argument(path + ".fields: map \"" + map.name +
                                "\" has no slot_key schema; give key");
      }
      Result<core::Bytes> key = schema::encode(*schema->slot_key, to_std_map(ref.fields()), true);
      if (!key.ok()) {
        return field_error(path + ".fields", " (map \"" + map.name + "\")", std::move(key).error());
      }
      return key;
    }
    case v1::SlotRef::SLOT_NOT_SET:
      break;
  }
  return invalid_argument(path + ": no slot given (" + is_a + ")");
}

Status check_length(const std::string& value, const std::string& field, size_t limit) {
  if (value.size() <= limit) return {};
  return invalid_argument(field + ": " + std::to_string(value.size()) +
                          " bytes, longer than the limit of " + std::to_string(limit));
}

PushAssembler::PushAssembler(const config::DaemonConfig& config) : config_(config) {
  for (const core::OuterMapConfig& m : config.engine.maps) maps_.emplace(m.name, &m);
}

Status PushAssembler::add_change(const v1::SlotChange& in, bool may_continue) {
  std::vector<core::SlotChange>& changes = request_.generation.changes;
  size_t index = changes.size();
  std::string at = "changes[" + std::to_string(index) + "]";
  auto it = maps_.find(in.map());
  if (it == maps_.end()) return invalid_argument(at + ".map: unknown map \"" + in.map() + "\"");
  const core::OuterMapConfig& map = *it->second;
  const config::MapSchema* schema = find_schema(config_, map.name);
  POLICYD_ASSIGN_OR_RETURN(core::Bytes slot, to_slot(in.slot(), map, schema, at + ".slot"));

  // A stream message may open with the continuation of the previous message's last change.
  core::SlotChange* target = nullptr;
  if (may_continue && !changes.empty()) {
    core::SlotChange& last = changes.back();
    if (last.map == in.map() && last.slot == slot && last.remove == in.delete_()) {
      target = &last;
      index = changes.size() - 1;
      at = "changes[" + std::to_string(index) + "]";
    }
  }
  if (!target) {
    changes.push_back(core::SlotChange{in.map(), std::move(slot), in.delete_(), {}});
    target = &changes.back();
  }

  const size_t base = target->entries.size();
  target->entries.reserve(base + static_cast<size_t>(in.entries_size()));
  for (int i = 0; i < in.entries_size(); ++i) {
    const v1::Entry& e = in.entries(i);
    // Paths are only built on failure: pushes carry millions of entries.
    auto fail = [&](const char* field, Error cause) {
      return field_error(
          at + ".entries[" + std::to_string(base + static_cast<size_t>(i)) + "]." + field,
          " (map \"" + map.name + "\" slot " + core::slot_to_string(map.kind, target->slot) + ")",
          std::move(cause));
    };
    Result<core::Bytes> key = to_key(e, schema, fail);
    if (!key.ok()) return std::move(key).error();
    Result<core::Bytes> value = to_value(e, map, schema, fail);
    if (!value.ok()) return std::move(value).error();
    target->entries.push_back(core::Entry{std::move(key).value(), std::move(value).value()});
  }
  return {};
}

Status PushAssembler::add(const v1::PushGenerationRequest& message) {
  if (messages_ == 0) {
    POLICYD_TRY(check_length(message.label(), "label", kMaxLabelBytes));
    POLICYD_TRY(check_length(message.request_id(), "request_id", kMaxRequestIdBytes));
    request_.generation.label = message.label();
    request_.expected_generation = message.expected_generation();
    request_.request_id = message.request_id();
  } else {
    // Later messages may repeat the header (some clients send it every time) but not change it.
    const std::string at = "messages[" + std::to_string(messages_) + "]";
    auto differs = [&](const char* field) {
      return invalid_argument(at + "." + field +
                              ": differs from the first message (the header is "
                              "label, expected_generation and request_id of the first message)");
    };
    if (!message.label().empty() && message.label() != request_.generation.label) {
      return differs("label");
    }
    if (message.expected_generation() != 0 &&
        message.expected_generation() != request_.expected_generation) {
      return differs("expected_generation");
    }
    if (!message.request_id().empty() && message.request_id() != request_.request_id) {
      return differs("request_id");
    }
  }
  ++messages_;

  // The limit is checked before converting anything, so an oversized push costs little.
  uint64_t entries = entries_;
  for (const v1::SlotChange& c : message.changes())
    entries += static_cast<uint64_t>(c.entries_size());
  const uint64_t limit = config_.limits.max_entries_per_push;
  if (entries > limit) {
    return resource_exhausted("generation has " + std::to_string(entries) +
                              " entries, more than limits.max_entries_per_push (" +
                              std::to_string(limit) + ")");
  }
  // gRPC enforces the limit the daemon started with; a reload may have lowered it since.
  const uint64_t message_bytes = message.ByteSizeLong();
  if (message_bytes > config_.limits.max_message_bytes) {
    return resource_exhausted("a message of " + std::to_string(message_bytes) +
                              " bytes is larger than limits.max_message_bytes (" +
                              std::to_string(config_.limits.max_message_bytes) + ")");
  }
  const uint64_t bytes = bytes_ + message_bytes;
  if (bytes > config_.limits.max_bytes_per_push) {
    return resource_exhausted("push has " + std::to_string(bytes) +
                              " encoded bytes, more than limits.max_bytes_per_push (" +
                              std::to_string(config_.limits.max_bytes_per_push) + ")");
  }
  POLICYD_TRY(count_changes_per_map(message));
  entries_ = entries;
  bytes_ = bytes;

  std::vector<core::SlotChange>& changes = request_.generation.changes;
  changes.reserve(changes.size() + static_cast<size_t>(message.changes_size()));
  for (int k = 0; k < message.changes_size(); ++k) {
    POLICYD_TRY(add_change(message.changes(k), /*may_continue=*/messages_ > 1 && k == 0));
  }
  return {};
}

// A generation cannot set more slots of a map than the map has, nor delete more: refused before
// any inner map is built. Sets and deletes are counted apart, since a generation may delete
// every old key of a full hash outer map and set as many new ones. A stream's continuation of
// the previous message's last change is counted again, which errs on the side of accepting (the
// count bounds work; the validator checks the slots themselves).
Status PushAssembler::count_changes_per_map(const v1::PushGenerationRequest& message) {
  for (const v1::SlotChange& c : message.changes()) {
    auto it = maps_.find(c.map());
    if (it == maps_.end()) continue;  // add_change names the unknown map
    uint64_t& n = (c.delete_() ? deletes_per_map_ : sets_per_map_)[c.map()];
    ++n;
    const uint64_t slots = it->second->slots;
    if (n > slots + (messages_ > 1 ? messages_ - 1 : 0)) {
      return resource_exhausted(std::string("generation ") + (c.delete_() ? "deletes" : "sets") +
                                " more than the " + std::to_string(slots) + " slots of map \"" +
                                c.map() + "\"");
    }
  }
  return {};
}

core::PushRequest PushAssembler::take() {
  core::PushRequest out = std::move(request_);
  request_ = core::PushRequest{};
  messages_ = 0;
  entries_ = 0;
  bytes_ = 0;
  sets_per_map_.clear();
  deletes_per_map_.clear();
  return out;
}

Result<core::PushRequest> to_push_request(const v1::PushGenerationRequest& request,
                                          const config::DaemonConfig& config) {
  PushAssembler assembler(config);
  POLICYD_TRY(assembler.add(request));
  return assembler.take();
}

// ---- core -> proto

void to_proto(const core::PushResult& result, v1::PushGenerationResponse* out) {
  out->set_generation(result.generation);
  out->set_batch_size(result.batch_size);
  out->set_replayed(result.replayed);
}

v1::SlotRef to_slot_ref(core::OuterKind kind, const core::Bytes& slot) {
  v1::SlotRef ref;
  if (kind == core::OuterKind::kArray && slot.size() == sizeof(uint32_t)) {
    uint32_t index = 0;
    std::memcpy(&index, slot.data(), sizeof(index));
    ref.set_index(index);
  } else {
    ref.set_key(to_string_bytes(slot));
  }
  return ref;
}

std::string inner_type_name(bpf_map_type type) {
  const kernel::MapType* t = kernel::find_map_type(type);
  return t ? std::string(t->name) : "type " + std::to_string(static_cast<int>(type));
}

void to_field_layouts(const schema::Layout& layout,
                      google::protobuf::RepeatedPtrField<v1::FieldLayout>* out) {
  for (const schema::Field& f : layout.fields) {
    v1::FieldLayout* l = out->Add();
    l->set_name(f.name);
    l->set_type(f.type_name());
    l->set_offset(f.offset);
    l->set_size(f.size);
    l->set_counter(f.counter);
  }
}

void to_map_state(const core::OuterMapConfig& map, const config::MapSchema* schema,
                  const std::string& pin_path, const std::vector<core::SlotInfo>& live,
                  v1::MapState* out) {
  out->set_name(map.name);
  out->set_type(core::to_string(map.kind));
  out->set_slots(map.slots);
  out->set_inner_type(inner_type_name(map.inner.type));
  out->set_inner_max_entries(map.inner.max_entries);
  out->set_key_size(map.inner.key_size);
  out->set_value_size(map.inner.value_size);
  out->set_slot_key_size(map.slot_key_size);
  if (schema) {
    to_field_layouts(schema->key, out->mutable_key_layout());
    to_field_layouts(schema->value, out->mutable_value_layout());
    if (schema->slot_key) to_field_layouts(*schema->slot_key, out->mutable_slot_key_layout());
  }
  out->set_drain(core::to_string(map.drain));
  out->set_group(map.group);
  out->set_pin_path(pin_path);
  for (const core::SlotInfo& s : live) {
    v1::SlotState* st = out->add_live_slots();
    *st->mutable_slot() = to_slot_ref(map.kind, s.slot);
    st->set_map_id(s.map_id);
    st->set_generation(s.installed_by);
  }
}

void to_state_header(const core::CommitterView& view, v1::GetStateResponse* out) {
  out->set_generation(view.generation);
  out->set_label(view.label);
  out->set_barrier_strategy(core::to_string(view.strategy));
  out->set_kernel(view.kernel);
  out->set_barriers(view.stats.writer.rounds + view.stats.writer.barriers);
  out->set_generations_committed(view.stats.generations);
}

void to_generation_info(const core::GenerationRecord& record, v1::GenerationInfo* out) {
  out->set_generation(record.id);
  out->set_label(record.label);
  out->set_committed_unix_ms(record.committed_unix_ms);
  out->set_changes(record.changes);
  out->set_entries(record.entries);
  out->set_request_id(record.request_id);
}

void to_list_generations(const core::CommitterView& view, v1::ListGenerationsResponse* out) {
  out->set_current(view.generation);
  for (const core::GenerationRecordPtr& r : view.history) {
    to_generation_info(*r, out->add_generations());
  }
}

void to_dump(const core::DrainRecord& record, const core::OuterMapConfig& map,
             const config::MapSchema* schema, v1::DumpSlotResponse* out) {
  out->set_map_id(record.map_id);
  out->set_generation(record.installed_by);
  const bool per_cpu = kernel::is_percpu(map.inner.type);
  for (const core::DrainedEntry& e : record.entries) {
    v1::DumpedEntry* d = out->add_entries();
    d->set_key(to_string_bytes(e.key));
    if (!e.values.empty()) d->set_value(to_string_bytes(e.values.front()));
    if (per_cpu) {
      for (const core::Bytes& v : e.values) d->add_per_cpu_values(to_string_bytes(v));
    }
    if (!schema) continue;
    if (e.key.size() == schema->key.size) {
      for (auto& [name, text] : schema::decode(schema->key, e.key)) {
        (*d->mutable_key_fields()->mutable_values())[name] = std::move(text);
      }
    }
    if (e.values.empty() || e.values.front().size() != schema->value.size) continue;
    auto& fields = *d->mutable_value_fields()->mutable_values();
    for (auto& [name, text] : schema::decode(schema->value, e.values.front()))
      fields[name] = std::move(text);
    if (per_cpu) {
      // A counter's meaning is its sum over CPUs; CPU 0's share alone would mislead.
      for (const core::CounterField& c : map.inner.counters) {
        uint64_t sum = 0;
        for (const core::Bytes& v : e.values) {
          if (v.size() < c.offset + c.size) continue;
          uint64_t x = 0;
          for (uint32_t b = 0; b < c.size; ++b)
            x |= static_cast<uint64_t>(v[c.offset + b]) << (8 * b);
          sum += x;
        }
        fields[c.name] = std::to_string(sum);
      }
    }
  }
}

void to_counters(const core::CounterTable& table, const core::MapConfigs& maps,
                 v1::GetCountersResponse* out) {
  for (const auto& [where, counters] : table) {
    auto it = maps.find(where.first);
    if (it == maps.end()) continue;
    const core::OuterMapConfig& map = it->second;
    const std::string slot = core::slot_to_string(map.kind, where.second);
    for (const core::CounterField& c : map.inner.counters) {
      v1::CounterValue* v = out->add_counters();
      v->set_map(map.name);
      v->set_slot(slot);
      v->set_field(c.name);
      auto d = counters.drained.find(c.name);
      v->set_drained(d == counters.drained.end() ? 0 : d->second);
      auto l = counters.live.find(c.name);
      v->set_live(l == counters.live.end() ? 0 : l->second);
    }
  }
}

v1::Event to_event(const core::CommittedEvent& event, int64_t unix_ms) {
  v1::Event out;
  out.set_unix_ms(unix_ms);
  v1::Committed* c = out.mutable_committed();
  for (uint64_t g : event.generations) c->add_generations(g);
  for (const std::string& l : event.labels) c->add_labels(l);
  c->set_slots_written(static_cast<uint32_t>(event.slots_written));
  c->set_build_ms(event.build_ms);
  c->set_swap_ms(event.swap_ms);
  c->set_barrier_ms(event.barrier_ms);
  return out;
}

v1::Event to_event(const core::DrainedEvent& event, core::OuterKind kind, int64_t unix_ms) {
  const core::DrainRecord& r = event.record;
  v1::Event out;
  out.set_unix_ms(unix_ms);
  v1::Drained* d = out.mutable_drained();
  d->set_map(r.map);
  d->set_slot(core::slot_to_string(kind, r.slot));
  d->set_map_id(r.map_id);
  d->set_installed_by(r.installed_by);
  d->set_replaced_by(r.replaced_by);
  d->set_entries(r.entry_count);
  for (const auto& [field, total] : r.counters) (*d->mutable_counters())[field] = total;
  return out;
}

v1::Event to_event(const ReloadSummary& summary, int64_t unix_ms) {
  v1::Event out;
  out.set_unix_ms(unix_ms);
  v1::Reloaded* r = out.mutable_reloaded();
  for (const std::string& m : summary.added) r->add_added_maps(m);
  for (const std::string& m : summary.kept) r->add_kept_maps(m);
  for (const std::string& m : summary.removed) r->add_removed_maps(m);
  return out;
}

void to_proto(const ReloadSummary& summary, v1::ReloadConfigResponse* out) {
  for (const std::string& m : summary.added) out->add_added_maps(m);
  for (const std::string& m : summary.kept) out->add_kept_maps(m);
  for (const std::string& m : summary.removed) out->add_removed_maps(m);
}

}  // namespace policyd::api
