// Policy file parsing: YAML -> PushGenerationRequest with raw keys, values and slots, plus
// the splitting of large pushes into PushGenerationStream messages.
#include "ctl/policy_file.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/parser.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "util/hex.h"

namespace policyd::ctl {

// The codec's vocabulary, used throughout this file.
using schema::Align;
using schema::Bytes;
using schema::Field;
using schema::FieldSpec;
using schema::FieldType;
using schema::Layout;

namespace {

// Where the first two YAML documents in `text` start. Counted with yaml-cpp's event parser, two
// documents at most: yaml-cpp 0.7's LoadAll loops forever, allocating, on some malformed input
// (fixed upstream in jbeder/yaml-cpp#1319, not in Debian 12's 0.7.0; found by
// tests/fuzz/policy_file_fuzz). On such input the parser reports a document without moving on.
class DocumentStarts final : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { marks.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
  std::vector<YAML::Mark> marks;
};

std::vector<YAML::Mark> document_starts(const std::string& text) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentStarts starts;
  for (int docs = 0; docs < 2 && parser.HandleNextDocument(starts); ++docs) {
  }
  return starts.marks;
}

std::string join(const std::string& path, const std::string& name) {
  return path.empty() ? name : path + "." + name;
}

std::string index_path(const std::string& path, size_t i) {
  return path + "[" + std::to_string(i) + "]";
}

std::string list_names(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::vector<std::string> field_names(const Layout& layout) {
  std::vector<std::string> names;
  for (const Field& f : layout.fields) {
    if (f.type != FieldType::kPad) names.push_back(f.name);
  }
  return names;
}

// One `key: value` pair of a YAML mapping, in file order.
struct Item {
  std::string key;
  YAML::Node key_node;
  YAML::Node value;
};

// An outer map as GetState reports it, with its layouts rebuilt from the reported fields.
struct MapSchema {
  const v1::MapState* state = nullptr;
  bool is_array = false;
  Layout key;
  Layout value;
  Layout slot_key;
};

class PolicyParser {
 public:
  PolicyParser(const std::string& file, const v1::GetStateResponse& state)
      : file_(file), state_(state) {}

  Result<v1::PushGenerationRequest> parse(const std::string& text);

 private:
  Error at(const YAML::Mark& mark, const std::string& path, const std::string& msg) const;
  Error at(const YAML::Node& node, const std::string& path, const std::string& msg) const {
    return at(node.Mark(), path, msg);
  }

  // The pairs of a mapping; refuses non-mappings, non-scalar and duplicate keys, and (when
  // `allowed` is given) keys not in it, calling them `what` ("key" or "field").
  Result<std::vector<Item>> items(const YAML::Node& node, const std::string& path,
                                  const std::vector<std::string>* allowed,
                                  const std::string& what) const;
  Result<std::string> scalar(const YAML::Node& node, const std::string& path) const;
  Result<const MapSchema*> schema(const YAML::Node& name_node, const std::string& path);

  Status parse_change(const YAML::Node& node, size_t index, v1::SlotChange& out);
  Status parse_slot(const MapSchema& map, const Item& item, const std::string& path,
                    v1::SlotRef& out) const;
  Status parse_entry(const MapSchema& map, const YAML::Node& node, const std::string& path,
                     v1::Entry& out, YAML::Node& key_node) const;
  // Typed fields -> bytes. `part` names the layout in messages ("key", "value", "slot_key").
  Result<Bytes> encode_typed(const MapSchema& map, const Layout& layout, const std::string& part,
                             const YAML::Node& node, const std::string& path,
                             bool require_all) const;
  Result<Bytes> decode_hex(const YAML::Node& node, const std::string& path, uint32_t size) const;

  const std::string& file_;
  const v1::GetStateResponse& state_;
  std::map<std::string, MapSchema> schemas_;
  // (map, raw slot) -> the change that first named it.
  std::map<std::pair<std::string, std::string>, size_t> seen_slots_;
};

Error PolicyParser::at(const YAML::Mark& mark, const std::string& path,
                       const std::string& msg) const {
  std::string where = file_;
  if (mark.line >= 0) {
    where += ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
  }
  return invalid_argument(where + ": " + (path.empty() ? "" : path + ": ") + msg);
}

Result<std::vector<Item>> PolicyParser::items(const YAML::Node& node, const std::string& path,
                                              const std::vector<std::string>* allowed,
                                              const std::string& what) const {
  if (!node.IsMap()) {
    if (node.IsNull()) return at(node, path, "expected a mapping, got nothing");
    return at(node, path, "expected a mapping");
  }
  std::vector<Item> out;
  std::set<std::string> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key = it->first;
    if (!key.IsScalar()) return at(key, path, what + " names must be plain strings");
    const std::string name = key.Scalar();
    if (allowed && std::find(allowed->begin(), allowed->end(), name) == allowed->end()) {
      return at(
          key, path,
          "unknown " + what + " \"" + name + "\" (" + what + "s: " + list_names(*allowed) + ")");
    }
    if (!seen.insert(name).second) return at(key, path, "duplicate " + what + " \"" + name + "\"");
    out.push_back(Item{name, key, it->second});
  }
  return out;
}

Result<std::string> PolicyParser::scalar(const YAML::Node& node, const std::string& path) const {
  if (node.IsNull()) return at(node, path, "missing value");
  if (!node.IsScalar()) return at(node, path, "expected a single value");
  return node.Scalar();
}

Result<const MapSchema*> PolicyParser::schema(const YAML::Node& name_node,
                                              const std::string& path) {
  POLICYD_ASSIGN_OR_RETURN(const std::string name, scalar(name_node, path));
  if (auto it = schemas_.find(name); it != schemas_.end()) return &it->second;
  const v1::MapState* state = nullptr;
  std::vector<std::string> known;
  for (const v1::MapState& m : state_.maps()) {
    known.push_back(m.name());
    if (m.name() == name) state = &m;
  }
  if (!state) {
    return at(name_node, path,
              "unknown map \"" + name +
                  "\" (maps: " + (known.empty() ? std::string("none") : list_names(known)) + ")");
  }
  MapSchema schema;
  schema.state = state;
  if (state->type() == "array_of_maps") {
    schema.is_array = true;
  } else if (state->type() != "hash_of_maps") {
    return at(
        name_node, path,
        "map \"" + name + "\" has outer type \"" + state->type() + "\", which is not supported");
  }
  // A layout the daemon reports is not the file's fault, but the push cannot proceed without it.
  auto rebuild = [&](const auto& fields, uint32_t size, const std::string& part,
                     Layout& out) -> Status {
    Result<Layout> layout = layout_from_state(fields, size);
    if (!layout.ok()) {
      return at(name_node, path,
                "the daemon reports a bad " + part + " layout for \"" + name +
                    "\": " + layout.error().message());
    }
    out = std::move(layout).value();
    return {};
  };
  POLICYD_TRY(rebuild(state->key_layout(), state->key_size(), "key", schema.key));
  POLICYD_TRY(rebuild(state->value_layout(), state->value_size(), "value", schema.value));
  if (!schema.is_array) {
    POLICYD_TRY(
        rebuild(state->slot_key_layout(), state->slot_key_size(), "slot_key", schema.slot_key));
  }
  return &schemas_.emplace(name, std::move(schema)).first->second;
}

Result<v1::PushGenerationRequest> PolicyParser::parse(const std::string& text) {
  YAML::Node root;
  try {
    const std::vector<YAML::Mark> starts = document_starts(text);
    if (starts.size() == 2 && starts[1].pos <= starts[0].pos) {
      return at(starts[0], "", "malformed YAML: no document can be read here");
    }
    if (starts.size() == 2) {
      return at(starts[1], "", "a policy file holds one YAML document, not several");
    }
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return at(e.mark, "", "malformed YAML: " + e.msg);
  }
  if (root.IsNull()) {
    return at(YAML::Mark::null_mark(), "", "empty policy file (expected label and changes)");
  }
  if (!root.IsMap()) return at(root, "", "expected a mapping with label and changes");

  static const std::vector<std::string> kTopKeys = {"label", "changes"};
  POLICYD_ASSIGN_OR_RETURN(const std::vector<Item> top, items(root, "", &kTopKeys, "key"));
  v1::PushGenerationRequest request;
  const Item* changes = nullptr;
  for (const Item& item : top) {
    if (item.key == "label") {
      if (!item.value.IsNull()) {
        POLICYD_ASSIGN_OR_RETURN(std::string label, scalar(item.value, "label"));
        request.set_label(std::move(label));
      }
    } else {
      changes = &item;
    }
  }
  if (!changes) return at(root, "", "missing \"changes\" (the list of slot changes)");
  if (!changes->value.IsSequence()) {
    return at(changes->value, "changes", "expected a list of slot changes");
  }
  size_t i = 0;
  for (auto it = changes->value.begin(); it != changes->value.end(); ++it, ++i) {
    POLICYD_TRY(parse_change(*it, i, *request.add_changes()));
  }
  return request;
}

Status PolicyParser::parse_change(const YAML::Node& node, size_t index, v1::SlotChange& out) {
  const std::string path = index_path("changes", index);
  static const std::vector<std::string> kKeys = {"map", "slot", "slot_hex", "entries", "delete"};
  POLICYD_ASSIGN_OR_RETURN(const std::vector<Item> fields, items(node, path, &kKeys, "key"));
  const Item* map_item = nullptr;
  const Item* slot_item = nullptr;
  const Item* entries_item = nullptr;
  bool del = false;
  for (const Item& item : fields) {
    if (item.key == "map") {
      map_item = &item;
    } else if (item.key == "slot" || item.key == "slot_hex") {
      if (slot_item) return at(item.key_node, path, "give slot or slot_hex, not both");
      slot_item = &item;
    } else if (item.key == "entries") {
      entries_item = &item;
    } else if (item.key == "delete") {
      if (!item.value.IsScalar() || !YAML::convert<bool>::decode(item.value, del)) {
        return at(item.value, join(path, "delete"), "expected true or false");
      }
    }
  }
  if (!map_item) return at(node, path, "missing \"map\" (the outer map's name)");
  POLICYD_ASSIGN_OR_RETURN(const MapSchema* map, schema(map_item->value, join(path, "map")));
  out.set_map(map->state->name());
  if (!slot_item) {
    return at(node, path,
              map->is_array ? "missing \"slot\" (an index)"
                            : "missing \"slot\" (a mapping of slot_key fields) or \"slot_hex\"");
  }
  POLICYD_TRY(parse_slot(*map, *slot_item, join(path, slot_item->key), *out.mutable_slot()));

  // At most one change per map and slot: the daemon refuses more, say where the first one is.
  const std::string slot_id = out.slot().slot_case() == v1::SlotRef::kKey
                                  ? "k" + out.slot().key()
                                  : "i" + std::to_string(out.slot().index());
  const auto [first, inserted] = seen_slots_.emplace(std::make_pair(out.map(), slot_id), index);
  if (!inserted) {
    return at(slot_item->value, join(path, slot_item->key),
              "map \"" + out.map() + "\" slot is already changed by " +
                  index_path("changes", first->second));
  }

  if (del) {
    out.set_delete_(true);
    if (entries_item) {
      return at(entries_item->key_node, path,
                "delete: true takes no entries (a deleted slot has no inner map)");
    }
    return {};
  }
  if (!entries_item) {
    return at(node, path,
              "missing \"entries\" (the new inner map's complete contents; entries: [] for an "
              "empty map) or \"delete: true\"");
  }
  const std::string entries_path = join(path, "entries");
  if (!entries_item->value.IsSequence()) {
    return at(entries_item->value, entries_path, "expected a list of entries");
  }
  std::map<std::string, size_t> keys;  // raw key -> entry index, for duplicates
  size_t i = 0;
  for (auto it = entries_item->value.begin(); it != entries_item->value.end(); ++it, ++i) {
    const std::string entry_path = index_path(entries_path, i);
    v1::Entry* entry = out.add_entries();
    YAML::Node key_node;
    POLICYD_TRY(parse_entry(*map, *it, entry_path, *entry, key_node));
    const auto [prev, fresh] = keys.emplace(entry->key(), i);
    if (!fresh) {
      return at(key_node, entry_path,
                "duplicate key (the same bytes as " + index_path(entries_path, prev->second) + ")");
    }
  }
  return {};
}

Status PolicyParser::parse_slot(const MapSchema& map, const Item& item, const std::string& path,
                                v1::SlotRef& out) const {
  const v1::MapState& state = *map.state;
  if (map.is_array) {
    const std::string want = "a non-negative integer below " + std::to_string(state.slots());
    if (item.key == "slot_hex") {
      return at(item.key_node, path,
                "slot_hex is for hash_of_maps; \"" + state.name() + "\" takes slot: <index>");
    }
    if (!item.value.IsScalar()) return at(item.value, path, "expected a slot index (" + want + ")");
    const std::string& text = item.value.Scalar();
    const bool digits =
        !text.empty() && text.size() <= 10 && std::all_of(text.begin(), text.end(), [](char c) {
          return std::isdigit(static_cast<unsigned char>(c));
        });
    const uint64_t index = digits ? std::strtoull(text.c_str(), nullptr, 10) : 0;
    if (!digits || index > UINT32_MAX) {
      return at(item.value, path, "\"" + text + "\" is not a slot index (" + want + ")");
    }
    if (state.slots() != 0 && index >= state.slots()) {
      return at(item.value, path,
                "slot " + text + " is out of range (\"" + state.name() + "\" has " +
                    std::to_string(state.slots()) + " slots)");
    }
    out.set_index(static_cast<uint32_t>(index));
    return {};
  }
  Bytes key;
  if (item.key == "slot_hex") {
    POLICYD_ASSIGN_OR_RETURN(key, decode_hex(item.value, path, state.slot_key_size()));
  } else {
    if (!item.value.IsMap()) {
      const std::vector<std::string> names = field_names(map.slot_key);
      return at(item.value, path,
                "\"" + state.name() +
                    "\" is a hash_of_maps: give the slot as a mapping of its "
                    "slot_key fields" +
                    (names.empty() ? "" : " (" + list_names(names) + ")") + ", or slot_hex");
    }
    POLICYD_ASSIGN_OR_RETURN(
        key, encode_typed(map, map.slot_key, "slot_key", item.value, path, /*require_all=*/true));
  }
  out.set_key(std::string(key.begin(), key.end()));
  return {};
}

Status PolicyParser::parse_entry(const MapSchema& map, const YAML::Node& node,
                                 const std::string& path, v1::Entry& out,
                                 YAML::Node& key_node) const {
  static const std::vector<std::string> kKeys = {"key", "key_hex", "value", "value_hex"};
  POLICYD_ASSIGN_OR_RETURN(const std::vector<Item> fields, items(node, path, &kKeys, "key"));
  const Item* key = nullptr;
  const Item* value = nullptr;
  for (const Item& item : fields) {
    const bool is_key = item.key == "key" || item.key == "key_hex";
    const Item*& slot = is_key ? key : value;
    if (slot) {
      return at(item.key_node, path,
                is_key ? "give key or key_hex, not both" : "give value or value_hex, not both");
    }
    slot = &item;
  }
  if (!key) return at(node, path, "missing key (key: {fields} or key_hex: \"<hex>\")");
  const v1::MapState& state = *map.state;
  key_node = key->value;

  Bytes key_bytes;
  if (key->key == "key_hex") {
    POLICYD_ASSIGN_OR_RETURN(key_bytes,
                             decode_hex(key->value, join(path, "key_hex"), state.key_size()));
  } else {
    POLICYD_ASSIGN_OR_RETURN(key_bytes, encode_typed(map, map.key, "key", key->value,
                                                     join(path, "key"), /*require_all=*/true));
  }
  Bytes value_bytes(state.value_size(), 0);  // like typed fields left out, as the API does
  if (!value) {
    // keep the zero value
  } else if (value->key == "value_hex") {
    POLICYD_ASSIGN_OR_RETURN(value_bytes,
                             decode_hex(value->value, join(path, "value_hex"), state.value_size()));
  } else {
    POLICYD_ASSIGN_OR_RETURN(value_bytes, encode_typed(map, map.value, "value", value->value,
                                                       join(path, "value"), /*require_all=*/false));
  }
  out.set_key(std::string(key_bytes.begin(), key_bytes.end()));
  out.set_value(std::string(value_bytes.begin(), value_bytes.end()));
  return {};
}

Result<Bytes> PolicyParser::encode_typed(const MapSchema& map, const Layout& layout,
                                         const std::string& part, const YAML::Node& node,
                                         const std::string& path, bool require_all) const {
  if (layout.fields.empty()) {
    return at(node, path,
              "map \"" + map.state->name() + "\" has no " + part + " schema; give " + part +
                  "_hex with the raw bytes");
  }
  const std::vector<std::string> names = field_names(layout);
  POLICYD_ASSIGN_OR_RETURN(const std::vector<Item> fields, items(node, path, &names, "field"));
  Bytes out(layout.size, 0);
  for (const Item& item : fields) {
    const Field* field = layout.find(item.key);
    const std::string field_path = join(path, item.key);
    POLICYD_ASSIGN_OR_RETURN(const std::string text, scalar(item.value, field_path));
    Status st = schema::encode_field(*field, text, out);
    if (!st.ok()) {
      // encode_field prefixes the field name; the path already ends with it.
      std::string msg = st.error().context;
      const std::string prefix = field->name + ": ";
      if (msg.compare(0, prefix.size(), prefix) == 0) msg.erase(0, prefix.size());
      return at(item.value, field_path, msg);
    }
  }
  if (require_all) {
    for (const Field& f : layout.fields) {
      if (f.type == FieldType::kPad || f.counter) continue;
      const bool given = std::any_of(fields.begin(), fields.end(),
                                     [&](const Item& item) { return item.key == f.name; });
      if (!given) {
        return at(node, path,
                  "missing field \"" + f.name + "\" (a typed " + part +
                      " gives every field: " + list_names(names) + ")");
      }
    }
  }
  return out;
}

Result<Bytes> PolicyParser::decode_hex(const YAML::Node& node, const std::string& path,
                                       uint32_t size) const {
  POLICYD_ASSIGN_OR_RETURN(const std::string text, scalar(node, path));
  Result<Bytes> bytes = util::from_hex(text);
  if (!bytes.ok()) return at(node, path, bytes.error().context);
  if (bytes->size() != size) {
    return at(node, path,
              "expected " + std::to_string(size) + " bytes (" + std::to_string(2 * size) +
                  " hex digits), got " + std::to_string(bytes->size()));
  }
  return bytes;
}

// Serialized size of a length-delimited field holding `n` bytes: tag, length varint, payload.
size_t framed(size_t n) {
  size_t varint = 1;
  for (size_t v = n; v >= 0x80; v >>= 7) ++varint;
  return 1 + varint + n;
}

}  // namespace

Result<v1::PushGenerationRequest> parse_policy_file(const std::string& yaml_text,
                                                    const std::string& file_name,
                                                    const v1::GetStateResponse& state) {
  try {
    return PolicyParser(file_name, state).parse(yaml_text);
  } catch (const YAML::Exception& e) {
    // Node access does not throw on the paths above; this keeps a yaml-cpp surprise an error.
    std::string where = file_name;
    if (e.mark.line >= 0) {
      where += ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1);
    }
    return invalid_argument(where + ": " + e.msg);
  }
}

Result<Layout> layout_from_state(const google::protobuf::RepeatedPtrField<v1::FieldLayout>& fields,
                                 uint32_t size) {
  Layout layout;
  layout.size = size;
  for (int i = 0; i < fields.size(); ++i) {
    const v1::FieldLayout& f = fields[i];
    const std::string at = "[" + std::to_string(i) + "]";
    // make_layout knows the type names and sizes; offsets come from the daemon.
    Result<Layout> one =
        schema::make_layout({FieldSpec{f.name(), f.type(), f.counter()}}, Align::kPacked);
    if (!one.ok()) {
      std::string msg = one.error().context;
      if (msg.compare(0, 3, "[0]") == 0) msg.erase(0, 3);
      return invalid_argument(at + msg);
    }
    Field field = one->fields.front();
    if (field.size != f.size()) {
      return invalid_argument(at + ": type " + f.type() + " is " + std::to_string(field.size) +
                              " bytes, the layout says " + std::to_string(f.size()));
    }
    if (uint64_t{f.offset()} + f.size() > size) {
      return invalid_argument(at + ": field \"" + f.name() + "\" at offset " +
                              std::to_string(f.offset()) + " overruns the " + std::to_string(size) +
                              "-byte layout");
    }
    if (field.type != FieldType::kPad && layout.find(field.name)) {
      return invalid_argument(at + ": duplicate field \"" + f.name() + "\"");
    }
    field.offset = f.offset();
    layout.fields.push_back(std::move(field));
  }
  return layout;
}

std::vector<v1::PushGenerationRequest> split_push_request(const v1::PushGenerationRequest& request,
                                                          size_t max_bytes) {
  std::vector<v1::PushGenerationRequest> out;
  v1::PushGenerationRequest cur;
  cur.set_label(request.label());
  cur.set_expected_generation(request.expected_generation());
  cur.set_request_id(request.request_id());
  size_t cur_size = cur.ByteSizeLong();
  auto flush = [&] {
    out.push_back(std::move(cur));
    cur = v1::PushGenerationRequest();
    cur_size = 0;
  };
  for (const v1::SlotChange& change : request.changes()) {
    const size_t whole = framed(change.ByteSizeLong());
    if (cur_size + whole <= max_bytes) {
      *cur.add_changes() = change;
      cur_size += whole;
      continue;
    }
    if (!cur.changes().empty() && whole <= max_bytes) {
      flush();
      *cur.add_changes() = change;
      cur_size += whole;
      continue;
    }
    // Too large for the room left: continue its entries over pieces naming the same slot.
    // framed() of the head plus 5 bytes bounds a piece's framing however large it grows.
    v1::SlotChange head = change;
    head.clear_entries();
    const size_t head_size = framed(head.ByteSizeLong() + 5);
    if (change.entries().empty()) {
      if (!cur.changes().empty()) flush();
      *cur.add_changes() = head;
      cur_size += head_size;
      continue;
    }
    v1::SlotChange* piece = nullptr;
    for (const v1::Entry& entry : change.entries()) {
      const size_t entry_size = framed(entry.ByteSizeLong());
      if (piece && !piece->entries().empty() && cur_size + entry_size > max_bytes) {
        flush();
        piece = nullptr;
      }
      if (!piece) {
        if (!cur.changes().empty() && cur_size + head_size + entry_size > max_bytes) flush();
        piece = cur.add_changes();
        *piece = head;
        cur_size += head_size;
      }
      *piece->add_entries() = entry;
      cur_size += entry_size;
    }
  }
  if (!cur.changes().empty() || out.empty()) out.push_back(std::move(cur));
  return out;
}

}  // namespace policyd::ctl
