// Schema: named, typed fields of an inner map's key or value (or an outer hash map's slot key),
// and the codec between their text form ("10.0.0.0/8", "42", "aa:bb:cc:dd:ee:ff") and the bytes
// BPF programs read. Shared by the daemon (config, typed API fields, dumps) and policyctl.
// Pure functions, thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "util/result.h"

namespace policyd::schema {

using Bytes = std::vector<uint8_t>;

enum class FieldType {
  kU8,
  kU16,
  kU32,
  kU64,  // host (little-endian) integers
  kBe16,
  kBe32,  // big-endian integers (ports, network numbers)
  kIpv4,
  kIpv6,        // addresses in network order
  kIpv4Prefix,  // LPM key head: u32 prefix length + 4 address bytes
  kIpv6Prefix,  // u32 prefix length + 16 address bytes
  kMac,         // 6 bytes
  kBytes,       // bytes[N], written as hex
  kPad,         // pad[N], always zero
};

struct FieldSpec {
  std::string name;
  std::string type;  // "u32", "ipv4_prefix", "bytes[16]", "pad[2]", ...
  bool counter = false;
};

struct Field {
  std::string name;
  FieldType type = FieldType::kU32;
  uint32_t offset = 0;
  uint32_t size = 0;
  bool counter = false;
  [[nodiscard]] std::string type_name() const;
};

struct Layout {
  std::vector<Field> fields;
  uint32_t size = 0;
  [[nodiscard]] const Field* find(const std::string& name) const;
};

enum class Align { kPacked, kNatural };

// Lays fields out in declared order. Errors name the field index and what is wrong, e.g.
// `[1].type: unknown type "ipv5"`.
[[nodiscard]] Result<Layout> make_layout(const std::vector<FieldSpec>& specs, Align align);

// Encodes `values` (field name -> text). Unknown names are errors; missing fields are zero
// unless `require_all`. Counter fields may be given (they are zeroed by the engine anyway).
[[nodiscard]] Result<Bytes> encode(const Layout& layout,
                                   const std::map<std::string, std::string>& values,
                                   bool require_all);
// Encodes one field's text into `out` (layout.size bytes) at the field's offset.
[[nodiscard]] Status encode_field(const Field& field, const std::string& text, Bytes& out);

// The errors of encode(): a name the layout does not have (listing those it has), a field
// require_all wants.
[[nodiscard]] Error unknown_field(const Layout& layout, const std::string& name);
[[nodiscard]] Error missing_field(const std::string& name);

// As encode(), from any container of name -> text pairs with find() (std::map, a protobuf
// Map), into `out` (resized to layout.size and zeroed): no temporary map, and no allocation
// besides `out` when every value is valid (API conversion encodes millions of entries).
template <typename Pairs>
[[nodiscard]] Status encode_pairs(const Layout& layout, const Pairs& values, bool require_all,
                                  Bytes& out) {
  out.assign(layout.size, 0);
  for (const auto& kv : values) {
    const Field* f = layout.find(kv.first);
    if (!f || f->type == FieldType::kPad) return unknown_field(layout, kv.first);
    POLICYD_TRY(encode_field(*f, kv.second, out));
  }
  if (require_all) {
    for (const Field& f : layout.fields) {
      if (f.type != FieldType::kPad && !f.counter && values.find(f.name) == values.end()) {
        return missing_field(f.name);
      }
    }
  }
  return {};
}

// Decodes every non-padding field to text. `bytes` must be layout.size long.
[[nodiscard]] std::map<std::string, std::string> decode(const Layout& layout, const Bytes& bytes);

}  // namespace policyd::schema
