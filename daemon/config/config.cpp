// Config loader: yaml-cpp nodes -> DaemonConfig, with file:line:col and field paths on errors.
#include "config/config.h"

#include <arpa/inet.h>
#include <grp.h>
#include <pwd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <tuple>

#include "core/validate.h"
#include "kernel/map_types.h"
#include "util/hex.h"

namespace policyd::config {
namespace {

// Walks the YAML tree keeping the field path and the file name for messages.
class Reader {
 public:
  Reader(std::string file) : file_(std::move(file)) {}

  Error error(const YAML::Node& node, const std::string& path, const std::string& what) const {
    std::string where = file_;
    if (node.IsDefined() && node.Mark().line >= 0) {
      where +=
          ":" + std::to_string(node.Mark().line + 1) + ":" + std::to_string(node.Mark().column + 1);
    }
    return invalid_argument(where + ": " + path + ": " + what);
  }

  // Refuses keys outside `known`: a typo must not silently fall back to a default.
  Status only_keys(const YAML::Node& node, const std::string& path,
                   std::initializer_list<const char*> known) const {
    if (!node.IsMap()) return error(node, path, "must be a mapping");
    for (const auto& kv : node) {
      if (!kv.first.IsScalar()) return error(kv.first, path, "a key must be a plain scalar");
      const std::string key = kv.first.as<std::string>();
      bool ok = false;
      std::string list;
      for (const char* k : known) {
        ok = ok || key == k;
        list += (list.empty() ? "" : ", ") + std::string(k);
      }
      if (!ok) {
        return error(kv.first, join(path, key), "unknown key (expected one of: " + list + ")");
      }
    }
    return {};
  }

  Result<std::string> str(const YAML::Node& node, const std::string& path) const {
    if (!node.IsScalar()) return error(node, path, "must be a scalar");
    return node.as<std::string>();
  }

  Result<uint64_t> uint(const YAML::Node& node, const std::string& path, uint64_t max) const {
    POLICYD_ASSIGN_OR_RETURN(std::string s, str(node, path));
    char* end = nullptr;
    errno = 0;
    unsigned long long v = std::strtoull(s.c_str(), &end, util::integer_base(s));
    if (s.empty() || s[0] == '-' || *end != '\0' || errno == ERANGE) {
      return error(node, path, "\"" + s + "\" is not an unsigned integer");
    }
    if (v > max) return error(node, path, s + " is larger than " + std::to_string(max));
    return static_cast<uint64_t>(v);
  }

  Result<bool> boolean(const YAML::Node& node, const std::string& path) const {
    POLICYD_ASSIGN_OR_RETURN(std::string s, str(node, path));
    if (s == "true" || s == "yes") return true;
    if (s == "false" || s == "no") return false;
    return error(node, path, "\"" + s + "\" is not true or false");
  }

  static std::string join(const std::string& path, const std::string& key) {
    return path.empty() ? key : path + "." + key;
  }
  static std::string index(const std::string& path, size_t i) {
    return path + "[" + std::to_string(i) + "]";
  }

 private:
  std::string file_;
};

// Why `listen` cannot be the metrics endpoint's address, or "" when it can. The endpoint is plain
// HTTP without authentication: loopback only (127.0.0.0/8), whatever the configuration says.
std::string metrics_listen_problem(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return "\"" + listen + "\" is not host:port (e.g. 127.0.0.1:9464)";
  }
  const std::string host = listen.substr(0, colon);
  const std::string port = listen.substr(colon + 1);
  in_addr addr{};
  if (::inet_pton(AF_INET, host.c_str(), &addr) != 1 || (ntohl(addr.s_addr) >> 24) != 127) {
    return "\"" + host +
           "\" is not a loopback IPv4 address: the metrics endpoint is unauthenticated HTTP and "
           "listens on 127.0.0.0/8 only (scrape it through a local agent or proxy)";
  }
  auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  const bool digits =
      !port.empty() && port.size() <= 5 && std::all_of(port.begin(), port.end(), is_digit);
  if (!digits || std::stoul(port) > 65535) {
    return "\"" + port + "\" is not a port (0 to 65535; 0 picks a free one)";
  }
  return "";
}

std::optional<uint32_t> user_id(const std::string& name) {
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || !found) return {};
  return found->pw_uid;
}

std::optional<uint32_t> group_id(const std::string& name) {
  std::vector<char> buf(65536);
  group gr{};
  group* found = nullptr;
  if (::getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &found) != 0 || !found) return {};
  return found->gr_gid;
}

Result<AllowList> read_allow(const Reader& r, const YAML::Node& node, const std::string& path) {
  AllowList list;
  if (!node.IsDefined() || node.IsNull()) return list;
  POLICYD_TRY(r.only_keys(node, path, {"uids", "gids"}));
  for (const char* field : {"uids", "gids"}) {
    const YAML::Node ids = node[field];
    if (!ids.IsDefined() || ids.IsNull()) continue;
    const std::string p = Reader::join(path, field);
    if (!ids.IsSequence()) return r.error(ids, p, "must be a list of ids or names");
    const bool users = field[0] == 'u';
    for (size_t i = 0; i < ids.size(); ++i) {
      const YAML::Node& item = ids[i];
      const std::string ip = Reader::index(p, i);
      const std::string text = item.IsScalar() ? item.Scalar() : "";
      uint64_t id = 0;
      if (!text.empty() && !std::isdigit(static_cast<unsigned char>(text[0]))) {
        // A name, resolved now (start and reload): the policyd group of deploy/systemd, say.
        std::optional<uint32_t> resolved = users ? user_id(text) : group_id(text);
        if (!resolved) {
          return r.error(item, ip,
                         std::string("no ") + (users ? "user" : "group") + " named \"" + text +
                             "\" on this host");
        }
        id = *resolved;
      } else {
        POLICYD_ASSIGN_OR_RETURN(id, r.uint(item, ip, UINT32_MAX - 1));
      }
      if (users)
        list.uids.insert(static_cast<uid_t>(id));
      else
        list.gids.insert(static_cast<gid_t>(id));
    }
  }
  return list;
}

Status read_api(const Reader& r, const YAML::Node& node, ApiConfig& api) {
  if (!node.IsDefined()) return {};
  POLICYD_TRY(
      r.only_keys(node, "api",
                  {"socket", "socket_mode", "socket_group", "allow", "tls", "max_connections",
                   "max_connections_per_uid", "idle_timeout_s", "max_watchers_per_uid"}));
  if (node["socket"]) {
    POLICYD_ASSIGN_OR_RETURN(api.socket, r.str(node["socket"], "api.socket"));
  }
  if (api.socket.empty() || api.socket[0] != '/') {
    return r.error(node["socket"], "api.socket", "must be an absolute path");
  }
  if (node["socket_mode"]) {
    POLICYD_ASSIGN_OR_RETURN(std::string mode, r.str(node["socket_mode"], "api.socket_mode"));
    char* end = nullptr;
    unsigned long m = std::strtoul(mode.c_str(), &end, 8);
    if (mode.empty() || *end != '\0' || m > 0777) {
      return r.error(node["socket_mode"], "api.socket_mode",
                     "\"" + mode + "\" is not an octal mode");
    }
    api.socket_mode = static_cast<mode_t>(m);
  }
  if (node["socket_group"]) {
    POLICYD_ASSIGN_OR_RETURN(api.socket_group, r.str(node["socket_group"], "api.socket_group"));
  }
  for (auto [key, out, max] :
       {std::tuple{"max_connections", &api.max_connections, uint64_t{1} << 20},
        std::tuple{"max_connections_per_uid", &api.max_connections_per_uid, uint64_t{1} << 20},
        std::tuple{"idle_timeout_s", &api.idle_timeout_s, uint64_t{86400}},
        std::tuple{"max_watchers_per_uid", &api.max_watchers_per_uid, uint64_t{1} << 20}}) {
    if (!node[key]) continue;
    const std::string path = std::string("api.") + key;
    POLICYD_ASSIGN_OR_RETURN(uint64_t v, r.uint(node[key], path, max));
    if (v == 0) return r.error(node[key], path, "must be at least 1");
    *out = static_cast<uint32_t>(v);
  }
  if (const YAML::Node allow = node["allow"]) {
    POLICYD_TRY(r.only_keys(allow, "api.allow", {"read", "write"}));
    POLICYD_ASSIGN_OR_RETURN(api.read, read_allow(r, allow["read"], "api.allow.read"));
    POLICYD_ASSIGN_OR_RETURN(api.write, read_allow(r, allow["write"], "api.allow.write"));
  }
  if (const YAML::Node tls = node["tls"]) {
    POLICYD_TRY(r.only_keys(tls, "api.tls", {"listen", "cert", "key", "client_ca", "write"}));
    TlsConfig t;
    for (auto [key, field] : {std::pair{"listen", &t.listen}, std::pair{"cert", &t.cert},
                              std::pair{"key", &t.key}, std::pair{"client_ca", &t.client_ca}}) {
      const std::string p = std::string("api.tls.") + key;
      if (!tls[key]) return r.error(tls, p, "is required (TCP is only served with mutual TLS)");
      POLICYD_ASSIGN_OR_RETURN(*field, r.str(tls[key], p));
    }
    if (tls["write"]) {
      POLICYD_ASSIGN_OR_RETURN(t.write, r.boolean(tls["write"], "api.tls.write"));
    }
    api.tls = t;
  }
  return {};
}

Result<std::vector<schema::FieldSpec>> read_fields(const Reader& r, const YAML::Node& node,
                                                   const std::string& path) {
  if (!node.IsDefined()) return r.error(node, path, "is required");
  if (!node.IsSequence() || node.size() == 0)
    return r.error(node, path, "must be a list of fields");
  std::vector<schema::FieldSpec> specs;
  for (size_t i = 0; i < node.size(); ++i) {
    const std::string p = Reader::index(path, i);
    const YAML::Node f = node[i];
    POLICYD_TRY(r.only_keys(f, p, {"name", "type", "counter"}));
    schema::FieldSpec spec;
    if (f["name"]) {
      POLICYD_ASSIGN_OR_RETURN(spec.name, r.str(f["name"], p + ".name"));
    }
    if (!f["type"]) return r.error(f, p + ".type", "is required");
    POLICYD_ASSIGN_OR_RETURN(spec.type, r.str(f["type"], p + ".type"));
    if (f["counter"]) {
      POLICYD_ASSIGN_OR_RETURN(spec.counter, r.boolean(f["counter"], p + ".counter"));
    }
    specs.push_back(std::move(spec));
  }
  return specs;
}

// Builds a layout; a problem is reported at the field it concerns.
Result<schema::Layout> read_layout(const Reader& r, const YAML::Node& node, const std::string& path,
                                   schema::Align align) {
  POLICYD_ASSIGN_OR_RETURN(std::vector<schema::FieldSpec> specs, read_fields(r, node, path));
  Result<schema::Layout> layout = schema::make_layout(specs, align);
  if (layout.ok()) return layout;
  // make_layout's context starts with "[i]...": point at that field.
  const std::string& ctx = layout.error().context;
  size_t i = 0;
  if (ctx.size() > 1 && ctx[0] == '[') i = std::strtoul(ctx.c_str() + 1, nullptr, 10);
  const size_t colon = ctx.find(": ");
  const std::string sub = ctx.substr(0, colon);
  const std::string what = colon == std::string::npos ? ctx : ctx.substr(colon + 2);
  return r.error(i < node.size() ? node[i] : node, path + sub, what);
}

Result<uint32_t> read_flags(const Reader& r, const YAML::Node& node, const std::string& path) {
  uint32_t flags = 0;
  if (!node.IsDefined()) return flags;
  if (!node.IsSequence()) return r.error(node, path, "must be a list (no_prealloc, inner_map)");
  for (size_t i = 0; i < node.size(); ++i) {
    POLICYD_ASSIGN_OR_RETURN(std::string f, r.str(node[i], Reader::index(path, i)));
    if (f == "no_prealloc")
      flags |= BPF_F_NO_PREALLOC;
    else if (f == "inner_map")
      flags |= BPF_F_INNER_MAP;
    else
      return r.error(node[i], Reader::index(path, i),
                     "unknown flag \"" + f + "\" (no_prealloc, inner_map)");
  }
  return flags;
}

Status read_map(const Reader& r, const YAML::Node& node, const std::string& path,
                DaemonConfig& cfg) {
  POLICYD_TRY(
      r.only_keys(node, path, {"name", "type", "slots", "slot_key", "drain", "group", "inner"}));
  core::OuterMapConfig m;
  MapSchema schema;
  if (!node["name"]) return r.error(node, path + ".name", "is required");
  POLICYD_ASSIGN_OR_RETURN(m.name, r.str(node["name"], path + ".name"));
  if (cfg.schemas.count(m.name)) {
    return r.error(node["name"], path + ".name", "map \"" + m.name + "\" is declared twice");
  }
  if (Status st = core::check_map_name(m.name); !st.ok()) {
    return r.error(node["name"], path + ".name", st.error().context);
  }
  std::string type = "array_of_maps";
  if (node["type"]) {
    POLICYD_ASSIGN_OR_RETURN(type, r.str(node["type"], path + ".type"));
  }
  const kernel::MapType* outer_type = kernel::find_map_type(type, kernel::MapRole::kOuter);
  if (!outer_type) {
    return r.error(node["type"], path + ".type",
                   "unknown outer type \"" + type + "\" (" +
                       kernel::map_type_names(kernel::MapRole::kOuter) + ")");
  }
  m.kind = outer_type->array ? core::OuterKind::kArray : core::OuterKind::kHash;
  if (!node["slots"]) return r.error(node, path + ".slots", "is required");
  POLICYD_ASSIGN_OR_RETURN(uint64_t slots, r.uint(node["slots"], path + ".slots", 1u << 20));
  if (slots == 0) return r.error(node["slots"], path + ".slots", "must be at least 1");
  m.slots = static_cast<uint32_t>(slots);
  if (m.kind == core::OuterKind::kHash) {
    POLICYD_ASSIGN_OR_RETURN(
        schema::Layout slot_key,
        read_layout(r, node["slot_key"], path + ".slot_key", schema::Align::kPacked));
    m.slot_key_size = slot_key.size;
    schema.slot_key = std::move(slot_key);
  } else if (node["slot_key"]) {
    return r.error(node["slot_key"], path + ".slot_key",
                   "only hash_of_maps has slot keys (array slots are indexes)");
  }
  if (node["drain"]) {
    POLICYD_ASSIGN_OR_RETURN(std::string drain, r.str(node["drain"], path + ".drain"));
    if (drain == "entries")
      m.drain = core::DrainMode::kEntries;
    else if (drain == "none")
      m.drain = core::DrainMode::kNone;
    else
      return r.error(node["drain"], path + ".drain",
                     "unknown drain mode \"" + drain + "\" (entries, none)");
  }
  if (node["group"]) {
    POLICYD_ASSIGN_OR_RETURN(m.group, r.str(node["group"], path + ".group"));
  }

  const std::string ip = path + ".inner";
  const YAML::Node inner = node["inner"];
  if (!inner) return r.error(node, ip, "is required");
  POLICYD_TRY(r.only_keys(inner, ip, {"type", "max_entries", "flags", "align", "key", "value"}));
  if (!inner["type"]) return r.error(inner, ip + ".type", "is required");
  POLICYD_ASSIGN_OR_RETURN(std::string inner_type, r.str(inner["type"], ip + ".type"));
  Result<bpf_map_type> t = parse_inner_type(inner_type);
  if (!t.ok()) return r.error(inner["type"], ip + ".type", t.error().context);
  m.inner.type = *t;
  if (!inner["max_entries"]) return r.error(inner, ip + ".max_entries", "is required");
  POLICYD_ASSIGN_OR_RETURN(uint64_t max_entries,
                           r.uint(inner["max_entries"], ip + ".max_entries", UINT32_MAX));
  m.inner.max_entries = static_cast<uint32_t>(max_entries);
  POLICYD_ASSIGN_OR_RETURN(m.inner.flags, read_flags(r, inner["flags"], ip + ".flags"));
  schema::Align align = schema::Align::kPacked;
  if (inner["align"]) {
    POLICYD_ASSIGN_OR_RETURN(std::string a, r.str(inner["align"], ip + ".align"));
    if (a == "natural")
      align = schema::Align::kNatural;
    else if (a != "packed")
      return r.error(inner["align"], ip + ".align", "\"" + a + "\" is not packed or natural");
  }
  POLICYD_ASSIGN_OR_RETURN(schema.key, read_layout(r, inner["key"], ip + ".key", align));
  POLICYD_ASSIGN_OR_RETURN(schema.value, read_layout(r, inner["value"], ip + ".value", align));
  for (const schema::Field& f : schema.key.fields) {
    if (f.counter)
      return r.error(inner["key"], ip + ".key", "key field \"" + f.name + "\" cannot be a counter");
  }
  if (m.inner.type == BPF_MAP_TYPE_LPM_TRIE &&
      (schema.key.fields.empty() ||
       (schema.key.fields[0].type != schema::FieldType::kIpv4Prefix &&
        schema.key.fields[0].type != schema::FieldType::kIpv6Prefix))) {
    return r.error(inner["key"], ip + ".key",
                   "an lpm_trie key must start with an ipv4_prefix or ipv6_prefix field");
  }
  m.inner.key_size = schema.key.size;
  m.inner.value_size = schema.value.size;
  for (const schema::Field& f : schema.value.fields) {
    if (f.counter) m.inner.counters.push_back({f.name, f.offset, f.size});
  }
  if (Status st = core::validate_map_config(m); !st.ok()) {
    return r.error(node, path, st.error().context);
  }
  cfg.schemas.emplace(m.name, std::move(schema));
  cfg.engine.maps.push_back(std::move(m));
  return {};
}

}  // namespace

Result<bpf_map_type> parse_inner_type(const std::string& name) {
  const kernel::MapType* t = kernel::find_map_type(name, kernel::MapRole::kInner);
  if (t) return t->type;
  return invalid_argument("unknown inner map type \"" + name + "\" (" +
                          kernel::map_type_names(kernel::MapRole::kInner) + ")");
}

// Refuses a mapping anywhere in the document that names a key twice (yaml-cpp keeps both and
// lookups see only the first, so the second would be silently ignored).
Status refuse_duplicate_keys(const Reader& r, const YAML::Node& node, const std::string& path) {
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      POLICYD_TRY(refuse_duplicate_keys(r, node[i], Reader::index(path, i)));
    }
    return {};
  }
  if (!node.IsMap()) return {};
  std::map<std::string, YAML::Mark> seen;
  for (const auto& kv : node) {
    const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : "";
    auto [it, fresh] = seen.emplace(key, kv.first.Mark());
    if (!fresh) {
      return r.error(kv.first, Reader::join(path, key),
                     "duplicate key (first given at line " + std::to_string(it->second.line + 1) +
                         ", column " + std::to_string(it->second.column + 1) + ")");
    }
    POLICYD_TRY(refuse_duplicate_keys(r, kv.second, Reader::join(path, key)));
  }
  return {};
}

namespace {

// The config in `root`, a parsed document.
Result<DaemonConfig> read_config(const YAML::Node& root, const std::string& name) {
  Reader r(name);
  DaemonConfig cfg;
  cfg.path = name;
  if (!root.IsMap()) return r.error(root, "(top)", "the config must be a mapping");
  POLICYD_TRY(refuse_duplicate_keys(r, root, ""));
  POLICYD_TRY(
      r.only_keys(root, "",
                  {"api", "pin_dir", "state_dir", "barrier", "barrier_threads", "build_threads",
                   "history", "limits", "log_level", "maps", "remove_unlisted_maps", "metrics"}));
  POLICYD_TRY(read_api(r, root["api"], cfg.api));
  cfg.engine.pin_dir = "/sys/fs/bpf/policyd";
  if (root["pin_dir"]) {
    POLICYD_ASSIGN_OR_RETURN(cfg.engine.pin_dir, r.str(root["pin_dir"], "pin_dir"));
  }
  if (cfg.engine.pin_dir.empty() || cfg.engine.pin_dir[0] != '/') {
    return r.error(root["pin_dir"], "pin_dir", "must be an absolute path on a bpffs mount");
  }
  if (root["state_dir"]) {
    POLICYD_ASSIGN_OR_RETURN(cfg.state_dir, r.str(root["state_dir"], "state_dir"));
  }
  if (root["barrier"]) {
    POLICYD_ASSIGN_OR_RETURN(std::string b, r.str(root["barrier"], "barrier"));
    if (b == "auto")
      cfg.engine.barrier = core::BarrierMode::kAuto;
    else if (b == "batch")
      cfg.engine.barrier = core::BarrierMode::kBatch;
    else if (b == "concurrent")
      cfg.engine.barrier = core::BarrierMode::kConcurrent;
    else
      return r.error(root["barrier"], "barrier", "\"" + b + "\" is not auto, batch or concurrent");
  }
  if (root["barrier_threads"]) {
    POLICYD_ASSIGN_OR_RETURN(uint64_t n, r.uint(root["barrier_threads"], "barrier_threads", 1024));
    if (n == 0) return r.error(root["barrier_threads"], "barrier_threads", "must be at least 1");
    cfg.engine.barrier_threads = n;
  }
  if (root["build_threads"]) {
    POLICYD_ASSIGN_OR_RETURN(uint64_t n, r.uint(root["build_threads"], "build_threads", 256));
    if (n == 0) return r.error(root["build_threads"], "build_threads", "must be at least 1");
    cfg.engine.build_threads = n;
  }
  if (root["history"]) {
    POLICYD_ASSIGN_OR_RETURN(uint64_t h, r.uint(root["history"], "history", 100000));
    if (h == 0) return r.error(root["history"], "history", "must be at least 1");
    cfg.history = static_cast<uint32_t>(h);
  }
  if (const YAML::Node limits = root["limits"]) {
    POLICYD_TRY(r.only_keys(limits, "limits",
                            {"max_message_bytes", "max_entries_per_push", "max_bytes_per_push"}));
    if (limits["max_message_bytes"]) {
      POLICYD_ASSIGN_OR_RETURN(
          uint64_t v, r.uint(limits["max_message_bytes"], "limits.max_message_bytes", INT32_MAX));
      if (v < 1024)
        return r.error(limits["max_message_bytes"], "limits.max_message_bytes",
                       "must be at least 1024");
      cfg.limits.max_message_bytes = static_cast<uint32_t>(v);
    }
    if (limits["max_entries_per_push"]) {
      POLICYD_ASSIGN_OR_RETURN(
          cfg.limits.max_entries_per_push,
          r.uint(limits["max_entries_per_push"], "limits.max_entries_per_push", UINT32_MAX));
    }
    if (limits["max_bytes_per_push"]) {
      POLICYD_ASSIGN_OR_RETURN(
          cfg.limits.max_bytes_per_push,
          r.uint(limits["max_bytes_per_push"], "limits.max_bytes_per_push", INT64_MAX));
    }
    // Checked whether or not it was written: a max_message_bytes over the 1 GiB default needs
    // max_bytes_per_push raised too, or unary pushes over 1 GiB would be refused.
    if (cfg.limits.max_bytes_per_push < cfg.limits.max_message_bytes) {
      return r.error(limits["max_bytes_per_push"] ? limits["max_bytes_per_push"] : limits,
                     "limits.max_bytes_per_push",
                     std::to_string(cfg.limits.max_bytes_per_push) +
                         " is less than limits.max_message_bytes (" +
                         std::to_string(cfg.limits.max_message_bytes) + ")");
    }
  }
  if (root["log_level"]) {
    POLICYD_ASSIGN_OR_RETURN(cfg.log_level, r.str(root["log_level"], "log_level"));
    static const char* kLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
    bool ok = false;
    for (const char* l : kLevels) ok = ok || cfg.log_level == l;
    if (!ok)
      return r.error(
          root["log_level"], "log_level",
          "\"" + cfg.log_level + "\" is not trace, debug, info, warn, error, critical or off");
  }
  if (root["remove_unlisted_maps"]) {
    POLICYD_ASSIGN_OR_RETURN(cfg.remove_unlisted_maps,
                             r.boolean(root["remove_unlisted_maps"], "remove_unlisted_maps"));
  }
  if (const YAML::Node metrics = root["metrics"]) {
    POLICYD_TRY(r.only_keys(metrics, "metrics", {"listen"}));
    if (metrics["listen"]) {
      POLICYD_ASSIGN_OR_RETURN(cfg.metrics_listen, r.str(metrics["listen"], "metrics.listen"));
      const std::string why =
          cfg.metrics_listen.empty() ? "" : metrics_listen_problem(cfg.metrics_listen);
      if (!why.empty()) return r.error(metrics["listen"], "metrics.listen", why);
    }
  }
  const YAML::Node maps = root["maps"];
  if (!maps || !maps.IsSequence() || maps.size() == 0) {
    return r.error(maps ? maps : root, "maps", "must be a non-empty list of outer maps");
  }
  for (size_t i = 0; i < maps.size(); ++i) {
    POLICYD_TRY(read_map(r, maps[i], Reader::index("maps", i), cfg));
  }
  std::vector<const core::OuterMapConfig*> all;
  for (const core::OuterMapConfig& m : cfg.engine.maps) all.push_back(&m);
  if (Status st = core::validate_pin_names(all); !st.ok()) {
    return r.error(maps, "maps", st.error().context);
  }
  return cfg;
}

}  // namespace

Result<DaemonConfig> parse_config(const std::string& yaml, const std::string& name) {
  auto at = [&](const YAML::Exception& e) {
    return invalid_argument(name + ":" + std::to_string(e.mark.line + 1) + ":" +
                            std::to_string(e.mark.column + 1) + ": " + e.msg);
  };
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return at(e);
  }
  // The reader checks each node's kind before converting it; a conversion it missed still
  // becomes an error naming the place, never an exception out of a reload (found by
  // tests/fuzz/config_fuzz).
  try {
    return read_config(root, name);
  } catch (const YAML::Exception& e) {
    return at(e);
  }
}

Result<DaemonConfig> load_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return sys_error(errno, "read config " + path);
  std::stringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), path);
}

}  // namespace policyd::config
