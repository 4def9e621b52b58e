// policyctl status and dump: the daemon's state (GetState) as a table, and one slot's inner
// map decoded with the map's schema.
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "ctl/client.h"
#include "ctl/commands.h"
#include "ctl/json.h"
#include "ctl/output.h"
#include "ctl/policy_file.h"
#include "schema/schema.h"
#include "util/hex.h"

namespace policyd::ctl {
namespace {

using schema::Bytes;
using schema::Field;
using schema::FieldType;
using schema::Layout;

// Layouts of one map for decoding dumps and encoding slots.
struct DumpLayouts {
  Layout key;
  Layout value;
  Layout slot_key;
};

// SLOT argument of `dump`: an index, raw hex, or k=v[,k=v] typed slot fields.
std::optional<v1::SlotRef> parse_slot_arg(const v1::MapState& map, const Layout& slot_key,
                                          const std::string& text, Failure& failure) {
  v1::SlotRef slot;
  if (map.type() == "array_of_maps") {
    std::optional<uint64_t> index = parse_u64(text);
    if (!index || *index > UINT32_MAX) {
      failure = usage_error("dump: slot \"" + text + "\" of " + map.name() +
                            " is not an index (a non-negative integer)");
      return std::nullopt;
    }
    slot.set_index(static_cast<uint32_t>(*index));
    return slot;
  }
  Result<Bytes> key = invalid_argument("");
  if (text.find('=') != std::string::npos) {
    std::map<std::string, std::string> values;
    std::stringstream parts(text);
    std::string part;
    while (std::getline(parts, part, ',')) {
      const size_t eq = part.find('=');
      if (eq == std::string::npos || eq == 0) {
        failure = usage_error("dump: \"" + part + "\" is not field=value");
        return std::nullopt;
      }
      values[part.substr(0, eq)] = part.substr(eq + 1);
    }
    if (slot_key.fields.empty()) {
      failure =
          usage_error("dump: " + map.name() + " has no slot_key schema; give the slot in hex");
      return std::nullopt;
    }
    key = schema::encode(slot_key, values, /*require_all=*/true);
  } else {
    key = util::from_hex(text);
    if (key.ok() && key->size() != map.slot_key_size()) {
      key = invalid_argument("expected " + std::to_string(map.slot_key_size()) +
                             " bytes of hex, got " + std::to_string(key->size()));
    }
  }
  if (!key.ok()) {
    failure = usage_error("dump: slot \"" + text + "\": " + key.error().message());
    return std::nullopt;
  }
  slot.set_key(std::string(key->begin(), key->end()));
  return slot;
}

// Fields in layout order: [(name, text)].
std::vector<std::pair<std::string, std::string>> decoded_fields(const Layout& layout,
                                                                const std::string& raw) {
  std::vector<std::pair<std::string, std::string>> out;
  const Bytes bytes(raw.begin(), raw.end());
  if (layout.fields.empty() || bytes.size() != layout.size) return out;
  const std::map<std::string, std::string> values = schema::decode(layout, bytes);
  for (const Field& f : layout.fields) {
    if (auto it = values.find(f.name); f.type != FieldType::kPad && it != values.end()) {
      out.emplace_back(f.name, it->second);
    }
  }
  return out;
}

std::string describe(const Layout& layout, const std::string& raw) {
  const auto fields = decoded_fields(layout, raw);
  if (fields.empty()) return "0x" + hex_of(raw);
  std::vector<std::string> parts;
  for (const auto& [name, text] : fields) parts.push_back(name + "=" + text);
  return join_list(parts, " ");
}

void write_fields(JsonWriter& w, const Layout& layout, const std::string& raw) {
  w.begin_object();
  for (const auto& [name, text] : decoded_fields(layout, raw)) w.key(name).value(text);
  w.end_object();
}

// The map named `name` in the daemon's state; a usage failure naming the known maps if none.
const v1::MapState* find_map(const v1::GetStateResponse& state, const std::string& name,
                             Failure& failure) {
  std::vector<std::string> known;
  for (const v1::MapState& m : state.maps()) {
    if (m.name() == name) return &m;
    known.push_back(m.name());
  }
  failure = usage_error("dump: unknown map \"" + name +
                        "\" (maps: " + (known.empty() ? "none" : join_list(known)) + ")");
  return nullptr;
}

// Decoding is best effort: a layout that does not rebuild prints raw hex instead.
DumpLayouts layouts_of(const v1::MapState& map) {
  auto layout = [](const auto& fields, uint32_t size) {
    Result<Layout> l = layout_from_state(fields, size);
    return l.ok() ? std::move(l).value() : Layout{{}, size};
  };
  return {layout(map.key_layout(), map.key_size()), layout(map.value_layout(), map.value_size()),
          layout(map.slot_key_layout(), map.slot_key_size())};
}

void print_dump_json(const v1::MapState& map, const v1::SlotRef& slot, const DumpLayouts& layouts,
                     const v1::DumpSlotResponse& response) {
  JsonWriter w;
  w.begin_object()
      .key("map")
      .value(map.name())
      .key("slot")
      .value(slot_text(slot))
      .key("map_id")
      .value(response.map_id())
      .key("generation")
      .value(response.generation())
      .key("entries")
      .begin_array();
  for (const v1::DumpedEntry& e : response.entries()) {
    w.begin_object().key("key").value(hex_of(e.key())).key("value").value(hex_of(e.value()));
    w.key("key_fields");
    write_fields(w, layouts.key, e.key());
    w.key("value_fields");
    write_fields(w, layouts.value, e.value());
    if (!e.per_cpu_values().empty()) {
      w.key("per_cpu_values").begin_array();
      for (const std::string& v : e.per_cpu_values()) w.value(hex_of(v));
      w.end_array();
    }
    w.end_object();
  }
  w.end_array().end_object();
  std::cout << w.str() << "\n";
}

void print_dump_text(const v1::MapState& map, const v1::SlotRef& slot, const DumpLayouts& layouts,
                     const v1::DumpSlotResponse& response) {
  std::cout << map.name() << " slot " << slot_text(slot) << ": inner map id " << response.map_id()
            << ", generation " << response.generation() << ", " << response.entries_size()
            << (response.entries_size() == 1 ? " entry" : " entries") << "\n";
  for (const v1::DumpedEntry& e : response.entries()) {
    if (e.per_cpu_values().empty()) {
      std::cout << describe(layouts.key, e.key()) << " -> " << describe(layouts.value, e.value())
                << "\n";
      continue;
    }
    std::cout << describe(layouts.key, e.key()) << "\n";
    for (int cpu = 0; cpu < e.per_cpu_values_size(); ++cpu) {
      std::cout << "  cpu" << cpu << ": " << describe(layouts.value, e.per_cpu_values(cpu)) << "\n";
    }
  }
}

}  // namespace

int cmd_status(Client& client, const GlobalOptions& global, const Invocation&) {
  v1::GetStateResponse state;
  if (grpc::Status st = client.get_state(state); !st.ok()) return report(rpc_failure(st));
  if (global.json) {
    std::cout << to_json(state) << "\n";
    return kExitOk;
  }
  std::string generation = std::to_string(state.generation());
  if (!state.label().empty()) generation += " (" + state.label() + ")";
  print_table({
      {"generation", generation},
      {"committed", std::to_string(state.generations_committed()) + " generations, " +
                        std::to_string(state.barriers()) + " barriers since start"},
      {"barrier", or_dash(state.barrier_strategy())},
      {"kernel", or_dash(state.kernel())},
  });
  if (state.maps().empty()) return kExitOk;
  std::cout << "\n";
  std::vector<std::vector<std::string>> rows = {{"MAP", "TYPE", "SLOTS", "LIVE", "INNER", "MAX",
                                                 "KEY", "VALUE", "SLOT_KEY", "DRAIN", "GROUP"}};
  for (const v1::MapState& m : state.maps()) {
    const bool hash = m.type() == "hash_of_maps";
    rows.push_back({m.name(), m.type(), std::to_string(m.slots()),
                    std::to_string(m.live_slots_size()), or_dash(m.inner_type()),
                    std::to_string(m.inner_max_entries()), std::to_string(m.key_size()),
                    std::to_string(m.value_size()), hash ? std::to_string(m.slot_key_size()) : "-",
                    or_dash(m.drain()), or_dash(m.group())});
  }
  print_table(rows);
  return kExitOk;
}

int cmd_dump(Client& client, const GlobalOptions& global, const Invocation& inv) {
  v1::GetStateResponse state;
  if (grpc::Status st = client.get_state(state); !st.ok()) return report(rpc_failure(st));
  Failure failure;
  const v1::MapState* map = find_map(state, inv.args[0], failure);
  if (!map) return report(failure);
  const DumpLayouts layouts = layouts_of(*map);
  std::optional<v1::SlotRef> slot = parse_slot_arg(*map, layouts.slot_key, inv.args[1], failure);
  if (!slot) return report(failure);

  v1::DumpSlotRequest request;
  request.set_map(map->name());
  *request.mutable_slot() = *slot;
  v1::DumpSlotResponse response;
  auto ctx = client.context();
  grpc::Status st = client.stub().DumpSlot(ctx.get(), request, &response);
  if (!st.ok()) return report(rpc_failure(st));
  if (global.json) {
    print_dump_json(*map, *slot, layouts, response);
  } else {
    print_dump_text(*map, *slot, layouts, response);
  }
  return kExitOk;
}

}  // namespace policyd::ctl
