// The expected layouts, taken from the C structs with offsetof/sizeof, and their comparison
// with what policyd derives from a config; see xdp_acl_layout.h.
#include "xdp_acl_layout.h"

#include <cstddef>

#include "kernel/map_types.h"
#include "xdp_acl.h"

namespace policyd::xdp {
namespace {

// The named (non-padding) fields of struct xdp_acl_key, as policyd's schema types them:
// ipv4_prefix is the whole LPM key (u32 prefix length + 4 address bytes).
std::vector<FieldView> expected_key() {
  return {{"prefix", offsetof(xdp_acl_key, prefixlen), sizeof(xdp_acl_key), false, false}};
}

std::vector<FieldView> expected_value() {
  return {
      {"action", offsetof(xdp_acl_value, action), sizeof(xdp_acl_value::action), false, false},
      {"hits", offsetof(xdp_acl_value, hits), sizeof(xdp_acl_value::hits), true, false},
  };
}

const FieldView* find_field(const std::vector<FieldView>& fields, const std::string& name) {
  for (const FieldView& f : fields) {
    if (!f.padding && f.name == name) return &f;
  }
  return nullptr;
}

std::string describe(const FieldView& f) {
  return "offset " + std::to_string(f.offset) + " size " + std::to_string(f.size) +
         (f.counter ? " counter" : "");
}

// Differences between the named fields and sizes of one key or value.
void compare_fields(const std::string& where, const std::vector<FieldView>& want,
                    uint32_t want_size, const std::vector<FieldView>& have, uint32_t have_size,
                    std::vector<std::string>& out) {
  if (want_size != have_size) {
    out.push_back(where + " size: the struct has " + std::to_string(want_size) +
                  " bytes, policyd " + std::to_string(have_size));
  }
  for (const FieldView& w : want) {
    const FieldView* h = find_field(have, w.name);
    if (!h) {
      out.push_back(where + " field " + w.name + ": missing from policyd's layout");
    } else if (h->offset != w.offset || h->size != w.size || h->counter != w.counter) {
      out.push_back(where + " field " + w.name + ": the struct has " + describe(w) + ", policyd " +
                    describe(*h));
    }
  }
  for (const FieldView& h : have) {
    if (!h.padding && !find_field(want, h.name)) {
      out.push_back(where + " field " + h.name + ": not in the struct");
    }
  }
}

void compare_number(const std::string& what, uint32_t want, uint32_t have,
                    std::vector<std::string>& out) {
  if (want != have) {
    out.push_back(what + ": xdp_acl.h says " + std::to_string(want) + ", policyd " +
                  std::to_string(have));
  }
}

void compare_text(const std::string& what, const std::string& want, const std::string& have,
                  std::vector<std::string>& out) {
  if (want != have) out.push_back(what + ": the program needs " + want + ", policyd has " + have);
}

}  // namespace

std::vector<std::string> expected_map_names() {
  return {XDP_ACL_MAP_BY_IFINDEX, XDP_ACL_MAP_BY_INDEX};
}

std::vector<std::string> check_map(const MapView& map) {
  std::vector<std::string> out;
  const std::string m = "map " + map.name;
  std::string outer_type;
  if (map.name == XDP_ACL_MAP_BY_IFINDEX) {
    outer_type = kernel::map_type_label(BPF_MAP_TYPE_HASH_OF_MAPS);
    compare_number(m + " slot key size (u32 ifindex)", sizeof(uint32_t), map.slot_key_size, out);
  } else if (map.name == XDP_ACL_MAP_BY_INDEX) {
    outer_type = kernel::map_type_label(BPF_MAP_TYPE_ARRAY_OF_MAPS);
  } else {
    out.push_back(m + ": xdp_acl.bpf.c declares no such map");
    return out;
  }
  compare_text(m + " type", outer_type, map.type, out);
  compare_number(m + " slots (XDP_ACL_SLOTS)", XDP_ACL_SLOTS, map.slots, out);
  compare_text(m + " inner type", kernel::map_type_label(BPF_MAP_TYPE_LPM_TRIE), map.inner_type,
               out);
  compare_number(m + " inner max_entries (XDP_ACL_RULES)", XDP_ACL_RULES, map.inner_max_entries,
                 out);
  compare_fields(m + " key (struct xdp_acl_key)", expected_key(), sizeof(xdp_acl_key), map.key,
                 map.key_size, out);
  compare_fields(m + " value (struct xdp_acl_value)", expected_value(), sizeof(xdp_acl_value),
                 map.value, map.value_size, out);
  return out;
}

}  // namespace policyd::xdp
