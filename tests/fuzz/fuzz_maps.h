// The daemon config the API fuzzers convert against: one map of each slot kind and several
// inner types and field types, so that typed fields, raw bytes, slot keys and counters are all
// reachable.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include "config/config.h"

namespace policyd::fuzz {

inline const config::DaemonConfig& fuzz_config() {
  static const config::DaemonConfig cfg = [] {
    Result<config::DaemonConfig> c = config::parse_config(R"(pin_dir: /sys/fs/bpf/fuzz
limits: {max_message_bytes: 65536, max_entries_per_push: 4096, max_bytes_per_push: 1048576}
maps:
  - name: acl
    type: array_of_maps
    slots: 8
    inner:
      type: lpm_trie
      max_entries: 64
      key: [{name: prefix, type: ipv4_prefix}]
      value: [{name: action, type: u32}, {name: pad, type: "pad[4]"}, {name: hits, type: u64, counter: true}]
  - name: ports
    type: hash_of_maps
    slots: 8
    slot_key: [{name: ifindex, type: u32}]
    inner:
      type: percpu_hash
      max_entries: 64
      key: [{name: port, type: be16}, {name: proto, type: u8}, {name: pad, type: "pad[1]"}]
      value: [{name: packets, type: u64, counter: true}]
  - name: peers
    type: array_of_maps
    slots: 4
    inner:
      type: hash
      max_entries: 16
      key: [{name: addr, type: ipv6}, {name: mac, type: mac}]
      value: [{name: tag, type: "bytes[8]"}, {name: weight, type: u16}]
)",
                                                          "fuzz.yaml");
    if (!c.ok()) {
      std::fprintf(stderr, "fuzz config: %s\n", c.error().message().c_str());
      std::abort();
    }
    return std::move(c).value();
  }();
  return cfg;
}

}  // namespace policyd::fuzz
