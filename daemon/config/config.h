// DaemonConfig: the YAML configuration (config/policyd.yaml) parsed and checked completely.
// Errors name the file, line and column and the field path, e.g.
//   policyd.yaml:12:15: maps[1].inner.key[0].type: unknown type "ipv5" (...)
// Thread-safe (pure functions).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/model.h"
#include "schema/schema.h"
#include "util/result.h"

namespace policyd::config {

// Who may call the API over the unix socket (root is always allowed).
struct AllowList {
  std::set<uid_t> uids;
  std::set<gid_t> gids;
  [[nodiscard]] bool admits(uid_t uid, gid_t gid) const {
    return uid == 0 || uids.count(uid) || gids.count(gid);
  }
};

struct TlsConfig {
  std::string listen;     // host:port; loopback or not, always mutual TLS
  std::string cert;       // server certificate chain (PEM file)
  std::string key;        // server private key (PEM file)
  std::string client_ca;  // CA that signs client certificates (PEM file)
  bool write = false;     // whether TLS clients may write (they may always read)
};

struct ApiConfig {
  std::string socket = "/run/policyd/policyd.sock";
  mode_t socket_mode = 0660;
  std::string socket_group;  // chgrp the socket to this group when set
  AllowList read;            // write implies read
  AllowList write;
  std::optional<TlsConfig> tls;
  // Unix connections held at once, in all and per uid; more are closed at accept.
  uint32_t max_connections = 256;
  uint32_t max_connections_per_uid = 64;
  // A connection with no call in flight for this long is closed (gRPC's GOAWAY); a client
  // reconnects on its next call. A WatchEvents stream is a call in flight.
  uint32_t idle_timeout_s = 300;
  // WatchEvents streams one uid (or one TLS client identity) may hold at once.
  uint32_t max_watchers_per_uid = 32;
};

struct Limits {
  uint32_t max_message_bytes = 16 << 20;     // gRPC receive limit (unary push)
  uint64_t max_entries_per_push = 4 << 20;   // over all changes of one generation
  uint64_t max_bytes_per_push = 1ULL << 30;  // encoded bytes over all messages of one push
};

// Typed layouts of one outer map: what GetState reports and what typed fields encode with.
struct MapSchema {
  schema::Layout key;
  schema::Layout value;
  std::optional<schema::Layout> slot_key;  // hash_of_maps only
};

struct DaemonConfig {
  std::string path;  // the file it was read from
  ApiConfig api;
  core::EngineConfig engine;  // pin_dir, maps (byte sizes and counters), barrier
  std::map<std::string, MapSchema> schemas;
  std::string state_dir = "/var/lib/policyd";
  uint32_t history = 16;
  Limits limits;
  std::string log_level = "info";
  bool remove_unlisted_maps = false;
  std::string metrics_listen;  // empty: no metrics endpoint; else "127.x.y.z:port" (loopback)
};

[[nodiscard]] Result<DaemonConfig> load_config_file(const std::string& path);
// `name` stands for the file in error messages.
[[nodiscard]] Result<DaemonConfig> parse_config(const std::string& yaml, const std::string& name);

// Parses a map type name ("lpm_trie", "percpu_hash", ...).
[[nodiscard]] Result<bpf_map_type> parse_inner_type(const std::string& name);

}  // namespace policyd::config
