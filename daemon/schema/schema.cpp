// Schema layout and text <-> bytes codec.
#include "schema/schema.h"

#include "util/hex.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace policyd::schema {
namespace {

struct TypeInfo {
  const char* name;
  FieldType type;
  uint32_t size;
  uint32_t align;
};

constexpr TypeInfo kFixedTypes[] = {
    {"u8", FieldType::kU8, 1, 1},
    {"u16", FieldType::kU16, 2, 2},
    {"u32", FieldType::kU32, 4, 4},
    {"u64", FieldType::kU64, 8, 8},
    {"be16", FieldType::kBe16, 2, 2},
    {"be32", FieldType::kBe32, 4, 4},
    {"ipv4", FieldType::kIpv4, 4, 1},
    {"ipv6", FieldType::kIpv6, 16, 1},
    {"ipv4_prefix", FieldType::kIpv4Prefix, 8, 4},
    {"ipv6_prefix", FieldType::kIpv6Prefix, 20, 4},
    {"mac", FieldType::kMac, 6, 1},
};

constexpr uint32_t kMaxBytesField = 4096;

// "bytes[16]" / "pad[2]" -> 16 / 2; 0 when not of that form.
uint32_t bracket_size(const std::string& type, const std::string& prefix) {
  if (type.size() < prefix.size() + 3 || type.compare(0, prefix.size(), prefix) != 0 ||
      type[prefix.size()] != '[' || type.back() != ']') {
    return 0;
  }
  std::string digits = type.substr(prefix.size() + 1, type.size() - prefix.size() - 2);
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return 0;
  unsigned long n = std::strtoul(digits.c_str(), nullptr, 10);
  return n > kMaxBytesField ? 0 : static_cast<uint32_t>(n);
}

Result<TypeInfo> parse_type(const std::string& type) {
  for (const TypeInfo& t : kFixedTypes) {
    if (type == t.name) return t;
  }
  if (uint32_t n = bracket_size(type, "bytes")) return TypeInfo{"bytes", FieldType::kBytes, n, 1};
  if (uint32_t n = bracket_size(type, "pad")) return TypeInfo{"pad", FieldType::kPad, n, 1};
  return invalid_argument("unknown type \"" + type +
                          "\" (u8, u16, u32, u64, be16, be32, ipv4, ipv6, ipv4_prefix, "
                          "ipv6_prefix, mac, bytes[N], pad[N])");
}

Result<uint64_t> parse_uint(const std::string& text, uint64_t max) {
  if (text.empty() || text[0] == '-' || text[0] == '+' ||
      std::isspace(static_cast<unsigned char>(text[0]))) {
    return invalid_argument("\"" + text + "\" is not an unsigned integer");
  }
  errno = 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(text.c_str(), &end, util::integer_base(text));
  if (end == text.c_str() || *end != '\0') {
    return invalid_argument("\"" + text + "\" is not an unsigned integer");
  }
  if (errno == ERANGE || v > max) {
    return invalid_argument("value " + text + " is out of range (max " + std::to_string(max) + ")");
  }
  return static_cast<uint64_t>(v);
}

void put_le(Bytes& out, uint32_t offset, uint64_t v, uint32_t size) {
  for (uint32_t i = 0; i < size; ++i) out[offset + i] = static_cast<uint8_t>(v >> (8 * i));
}

void put_be(Bytes& out, uint32_t offset, uint64_t v, uint32_t size) {
  for (uint32_t i = 0; i < size; ++i)
    out[offset + size - 1 - i] = static_cast<uint8_t>(v >> (8 * i));
}

uint64_t get_le(const Bytes& b, uint32_t offset, uint32_t size) {
  uint64_t v = 0;
  for (uint32_t i = 0; i < size; ++i) v |= static_cast<uint64_t>(b[offset + i]) << (8 * i);
  return v;
}

uint64_t get_be(const Bytes& b, uint32_t offset, uint32_t size) {
  uint64_t v = 0;
  for (uint32_t i = 0; i < size; ++i) v = (v << 8) | b[offset + i];
  return v;
}

// Parses an address of `family` into `out`.
Status parse_addr(int family, const std::string& text, uint8_t* out) {
  if (inet_pton(family, text.c_str(), out) != 1) {
    return invalid_argument("\"" + text + "\" is not an " +
                            std::string(family == AF_INET ? "IPv4" : "IPv6") + " address");
  }
  return {};
}

Status encode_prefix(int family, uint32_t addr_len, const std::string& text, Bytes& out,
                     uint32_t offset) {
  const size_t slash = text.find('/');
  if (slash == std::string::npos) {
    return invalid_argument("\"" + text + "\" is not a prefix (address/length)");
  }
  uint8_t addr[16] = {};
  POLICYD_TRY(parse_addr(family, text.substr(0, slash), addr));
  Result<uint64_t> len = parse_uint(text.substr(slash + 1), addr_len * 8);
  if (!len.ok()) {
    return invalid_argument("\"" + text + "\" has a bad prefix length (0.." +
                            std::to_string(addr_len * 8) + ")");
  }
  for (uint32_t bit = static_cast<uint32_t>(*len); bit < addr_len * 8; ++bit) {
    if (addr[bit / 8] & (0x80u >> (bit % 8))) {
      return invalid_argument("\"" + text + "\" has host bits set past /" + std::to_string(*len));
    }
  }
  put_le(out, offset, *len, 4);
  std::memcpy(out.data() + offset + 4, addr, addr_len);
  return {};
}

std::string format_addr(int family, const uint8_t* p) {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(family, p, buf, sizeof(buf));
  return buf;
}

}  // namespace

std::string Field::type_name() const {
  switch (type) {
    case FieldType::kBytes:
      return "bytes[" + std::to_string(size) + "]";
    case FieldType::kPad:
      return "pad[" + std::to_string(size) + "]";
    default:
      break;
  }
  for (const TypeInfo& t : kFixedTypes) {
    if (t.type == type) return t.name;
  }
  return "unknown";
}

const Field* Layout::find(const std::string& name) const {
  for (const Field& f : fields) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

Result<Layout> make_layout(const std::vector<FieldSpec>& specs, Align align) {
  if (specs.empty()) return invalid_argument("no fields");
  Layout layout;
  uint32_t max_align = 1;
  for (size_t i = 0; i < specs.size(); ++i) {
    const FieldSpec& spec = specs[i];
    const std::string at = "[" + std::to_string(i) + "]";
    Result<TypeInfo> t = parse_type(spec.type);
    if (!t.ok()) return t.error().wrap(at + ".type");
    if (t->type != FieldType::kPad) {
      if (spec.name.empty()) return invalid_argument(at + ".name: a field needs a name");
      if (layout.find(spec.name)) {
        return invalid_argument(at + ".name: duplicate field \"" + spec.name + "\"");
      }
    }
    if (spec.counter && t->type != FieldType::kU32 && t->type != FieldType::kU64) {
      return invalid_argument(at + ".counter: counters must be u32 or u64");
    }
    uint32_t a = align == Align::kNatural ? t->align : 1;
    layout.size = (layout.size + a - 1) / a * a;
    max_align = std::max(max_align, a);
    layout.fields.push_back(Field{spec.name, t->type, layout.size, t->size, spec.counter});
    layout.size += t->size;
  }
  layout.size = (layout.size + max_align - 1) / max_align * max_align;
  return layout;
}

Status encode_field(const Field& f, const std::string& text, Bytes& out) {
  auto fail = [&](const Error& e) { return e.wrap(f.name); };
  switch (f.type) {
    case FieldType::kU8:
    case FieldType::kU16:
    case FieldType::kU32:
    case FieldType::kU64:
    case FieldType::kBe16:
    case FieldType::kBe32: {
      const bool be = f.type == FieldType::kBe16 || f.type == FieldType::kBe32;
      const uint64_t max =
          f.size == 8 ? std::numeric_limits<uint64_t>::max() : (uint64_t{1} << (8 * f.size)) - 1;
      Result<uint64_t> v = parse_uint(text, max);
      if (!v.ok()) return fail(v.error());
      if (be)
        put_be(out, f.offset, *v, f.size);
      else
        put_le(out, f.offset, *v, f.size);
      return {};
    }
    case FieldType::kIpv4:
    case FieldType::kIpv6: {
      Status st =
          parse_addr(f.type == FieldType::kIpv4 ? AF_INET : AF_INET6, text, out.data() + f.offset);
      return st.ok() ? st : Status(fail(st.error()));
    }
    case FieldType::kIpv4Prefix:
    case FieldType::kIpv6Prefix: {
      const bool v4 = f.type == FieldType::kIpv4Prefix;
      Status st = encode_prefix(v4 ? AF_INET : AF_INET6, v4 ? 4 : 16, text, out, f.offset);
      return st.ok() ? st : Status(fail(st.error()));
    }
    case FieldType::kMac: {
      unsigned m[6];
      char tail = 0;
      if (std::sscanf(text.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &m[0], &m[1], &m[2], &m[3], &m[4],
                      &m[5], &tail) != 6 ||
          text.size() != 17) {
        return fail(invalid_argument("\"" + text + "\" is not a MAC address (aa:bb:cc:dd:ee:ff)"));
      }
      for (int i = 0; i < 6; ++i) out[f.offset + i] = static_cast<uint8_t>(m[i]);
      return {};
    }
    case FieldType::kBytes: {
      Result<Bytes> b = util::from_hex(text);
      if (!b.ok()) return fail(b.error());
      if (b->size() != f.size) {
        return fail(invalid_argument("expected " + std::to_string(f.size) + " bytes of hex, got " +
                                     std::to_string(b->size())));
      }
      std::memcpy(out.data() + f.offset, b->data(), f.size);
      return {};
    }
    case FieldType::kPad:
      return fail(invalid_argument("padding cannot be set"));
  }
  return fail(invalid_argument("unsupported field type"));
}

Error unknown_field(const Layout& layout, const std::string& name) {
  std::string known;
  for (const Field& k : layout.fields) {
    if (k.type == FieldType::kPad) continue;
    known += (known.empty() ? "" : ", ") + k.name;
  }
  return invalid_argument("unknown field \"" + name + "\" (fields: " + known + ")");
}

Error missing_field(const std::string& name) {
  return invalid_argument("missing field \"" + name + "\"");
}

Result<Bytes> encode(const Layout& layout, const std::map<std::string, std::string>& values,
                     bool require_all) {
  Bytes out;
  POLICYD_TRY(encode_pairs(layout, values, require_all, out));
  return out;
}

std::map<std::string, std::string> decode(const Layout& layout, const Bytes& b) {
  std::map<std::string, std::string> out;
  if (b.size() < layout.size) return out;
  for (const Field& f : layout.fields) {
    std::string text;
    switch (f.type) {
      case FieldType::kU8:
      case FieldType::kU16:
      case FieldType::kU32:
      case FieldType::kU64:
        text = std::to_string(get_le(b, f.offset, f.size));
        break;
      case FieldType::kBe16:
      case FieldType::kBe32:
        text = std::to_string(get_be(b, f.offset, f.size));
        break;
      case FieldType::kIpv4:
        text = format_addr(AF_INET, b.data() + f.offset);
        break;
      case FieldType::kIpv6:
        text = format_addr(AF_INET6, b.data() + f.offset);
        break;
      case FieldType::kIpv4Prefix:
      case FieldType::kIpv6Prefix: {
        const bool v4 = f.type == FieldType::kIpv4Prefix;
        text = format_addr(v4 ? AF_INET : AF_INET6, b.data() + f.offset + 4) + "/" +
               std::to_string(get_le(b, f.offset, 4));
        break;
      }
      case FieldType::kMac: {
        char buf[18];
        std::snprintf(buf, sizeof(buf), "%02x:%02x:%02x:%02x:%02x:%02x", b[f.offset],
                      b[f.offset + 1], b[f.offset + 2], b[f.offset + 3], b[f.offset + 4],
                      b[f.offset + 5]);
        text = buf;
        break;
      }
      case FieldType::kBytes:
        text = util::to_hex(Bytes(b.begin() + f.offset, b.begin() + f.offset + f.size));
        break;
      case FieldType::kPad:
        continue;
    }
    out[f.name] = text;
  }
  return out;
}

}  // namespace policyd::schema
