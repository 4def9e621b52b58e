/*
 * xdp_acl.h - what xdp_acl.bpf.c (the example XDP firewall) shares with user space: the inner
 * key and value of its policyd maps, the action codes, the per-CPU statistics indexes and the
 * sizes that config/examples/xdp-acl.yaml must declare. Plain C with fixed-width types and
 * explicit padding; the layout check (bpf/loader/xdp_acl_layout.h) compares these structs with
 * the layouts policyd derives from the config, at build time and in the e2e test.
 */
#ifndef POLICYD_XDP_ACL_H
#define POLICYD_XDP_ACL_H

#include <linux/types.h>

/* Outer map names: pinned by policyd at <pin_dir>/<name>; must match the config. */
#define XDP_ACL_MAP_BY_IFINDEX "xacl_if" /* hash_of_maps, slot = ingress ifindex */
#define XDP_ACL_MAP_BY_INDEX "xacl"	 /* array_of_maps, slot = a fixed index */
#define XDP_ACL_STATS_MAP "xacl_stats"	 /* the program's own per-CPU statistics */

/* Slots of each outer map, and rules (LPM trie entries) per slot. */
#define XDP_ACL_SLOTS 64
#define XDP_ACL_RULES 4096

/* Rule actions (the `action` field). Anything else counts as "no match". */
#define XDP_ACL_ACTION_PASS 1u
#define XDP_ACL_ACTION_DROP 2u

/* Inner key: the kernel's LPM trie key for IPv4 (prefix length, then the address). */
struct xdp_acl_key {
	__u32 prefixlen; /* host order, 0..32 */
	__u8 addr[4];	 /* IPv4 source prefix, network order */
};

/* Inner value. LPM tries have no per-CPU variant, so `hits` is bumped with an atomic add. */
struct xdp_acl_value {
	__u32 action; /* XDP_ACL_ACTION_* */
	__u32 pad;    /* keeps hits 8-byte aligned; always zero */
	__u64 hits;   /* packets that matched this rule; policyd drains it (counter field) */
};

/* Indexes of xacl_stats (a PERCPU_ARRAY of __u64): what the program decided, and why. */
enum xdp_acl_stat {
	XDP_ACL_STAT_PASS = 0,	   /* verdict XDP_PASS (any reason) */
	XDP_ACL_STAT_DROP = 1,	   /* verdict XDP_DROP (any reason) */
	XDP_ACL_STAT_MATCHED = 2,  /* a rule matched: its hits counter was bumped */
	XDP_ACL_STAT_NO_SLOT = 3,  /* IPv4, but the slot is empty: default action */
	XDP_ACL_STAT_NO_MATCH = 4, /* IPv4, no rule (or an unknown action): default action */
	XDP_ACL_STAT_NOT_IPV4 = 5, /* not IPv4 (ARP, IPv6, VLAN-tagged...): always passed */
	XDP_ACL_STAT_COUNT = 6,
};

#ifdef __cplusplus
#include <cstddef>
#define XDP_ACL_STATIC_ASSERT static_assert
#define XDP_ACL_OFFSETOF offsetof
#else
#define XDP_ACL_STATIC_ASSERT _Static_assert
#define XDP_ACL_OFFSETOF __builtin_offsetof
#endif
XDP_ACL_STATIC_ASSERT(sizeof(struct xdp_acl_key) == 8, "xdp_acl_key layout");
XDP_ACL_STATIC_ASSERT(XDP_ACL_OFFSETOF(struct xdp_acl_key, addr) == 4, "xdp_acl_key layout");
XDP_ACL_STATIC_ASSERT(sizeof(struct xdp_acl_value) == 16, "xdp_acl_value layout");
XDP_ACL_STATIC_ASSERT(XDP_ACL_OFFSETOF(struct xdp_acl_value, hits) == 8, "xdp_acl_value layout");
#undef XDP_ACL_STATIC_ASSERT
#undef XDP_ACL_OFFSETOF

#endif /* POLICYD_XDP_ACL_H */
