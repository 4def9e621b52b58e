// The schema codec: every field type, from arbitrary text. Input: one line per field of the
// layout below (missing lines leave a field out). What encodes must decode to text that encodes
// to the same bytes again (the codec's round trip); nothing may crash or read out of bounds.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "schema/schema.h"

namespace {

using policyd::schema::Layout;

const Layout& layout() {
  static const Layout l = [] {
    const std::vector<policyd::schema::FieldSpec> specs = {
        {"a", "u8"},          {"b", "u16"},         {"c", "u32"},  {"d", "u64"},
        {"e", "be16"},        {"f", "be32"},        {"g", "ipv4"}, {"h", "ipv6"},
        {"i", "ipv4_prefix"}, {"j", "ipv6_prefix"}, {"k", "mac"},  {"l", "bytes[5]"},
        {"p", "pad[3]"},      {"n", "u64", true}};
    auto r = policyd::schema::make_layout(specs, policyd::schema::Align::kNatural);
    if (!r.ok()) std::abort();
    return std::move(r).value();
  }();
  return l;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::map<std::string, std::string> values;
  size_t field = 0, start = 0;
  const Layout& l = layout();
  while (start <= text.size() && field < l.fields.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (l.fields[field].type != policyd::schema::FieldType::kPad && end > start) {
      values[l.fields[field].name] = text.substr(start, end - start);
    }
    ++field;
    start = end + 1;
  }
  auto bytes = policyd::schema::encode(l, values, false);
  if (!bytes.ok()) return 0;
  if (bytes->size() != l.size) std::abort();
  const std::map<std::string, std::string> decoded = policyd::schema::decode(l, *bytes);
  auto again = policyd::schema::encode(l, decoded, true);
  if (!again.ok() || *again != *bytes) {
    std::fprintf(stderr, "round trip: %s\n",
                 again.ok() ? "other bytes" : again.error().message().c_str());
    std::abort();
  }
  return 0;
}
