// SPDX-License-Identifier: GPL-2.0
/*
 * xdp_acl.bpf.c - policyd's example XDP firewall. Each packet's IPv4 source address is looked
 * up in an LPM trie of prefixes that policyd swaps in as policy generations; the longest
 * matching prefix gives the action (pass or drop) and gets its hit counter bumped, which
 * policyd drains when the trie is replaced. The slot (which trie) is the ingress ifindex
 * (xdp_acl_ifindex, hash outer map xacl_if) or a fixed index set at load time (xdp_acl_fixed,
 * array outer map xacl). Packets with no slot or no matching rule get the default action,
 * set at load time; non-IPv4 frames always pass.
 *
 * Both outer maps are declared pin-by-name: a loader that sets pin_root_path to policyd's
 * pin_dir (bpf/loader, policyd-xdp-acl) gets policyd's maps, never private empty ones.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "policyd/policyd.h"
#include "xdp_acl.h"

char LICENSE[] SEC("license") = "GPL";

POLICYD_OUTER_HASH(xacl_if, XDP_ACL_SLOTS, __u32, BPF_MAP_TYPE_LPM_TRIE, struct xdp_acl_key,
		   struct xdp_acl_value, XDP_ACL_RULES, POLICYD_PIN_BY_NAME);
POLICYD_OUTER_ARRAY(xacl, XDP_ACL_SLOTS, BPF_MAP_TYPE_LPM_TRIE, struct xdp_acl_key,
		    struct xdp_acl_value, XDP_ACL_RULES, POLICYD_PIN_BY_NAME);

/* The program's own statistics (not a policyd map): see enum xdp_acl_stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDP_ACL_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} xacl_stats SEC(".maps");

/* Load-time settings (read-only data: the verifier sees them as constants). */
const volatile __u32 xacl_default_action = XDP_ACL_ACTION_PASS;
const volatile __u32 xacl_fixed_slot = 0;

static __always_inline void xacl_count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&xacl_stats, &stat);

	if (n)
		*n += 1; /* per-CPU: no other CPU writes this copy */
}

/* XDP_PASS or XDP_DROP for an action; also counts the verdict. */
static __always_inline int xacl_verdict(__u32 action)
{
	if (action == XDP_ACL_ACTION_DROP) {
		xacl_count(XDP_ACL_STAT_DROP);
		return XDP_DROP;
	}
	xacl_count(XDP_ACL_STAT_PASS);
	return XDP_PASS;
}

/* The IPv4 source address in network order; 0 with *ok = 0 when the frame is not IPv4. */
static __always_inline __u32 xacl_ipv4_source(struct xdp_md *ctx, int *ok)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	*ok = 0;
	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	*ok = 1;
	return ip->saddr;
}

/*
 * Always inlined so that `outer` is a constant map pointer at the helper call (the verifier
 * needs one per call site).
 */
static __always_inline int xacl_run(struct xdp_md *ctx, void *outer, const __u32 *slot)
{
	struct xdp_acl_key key = { .prefixlen = 32 };
	struct xdp_acl_value *rule;
	void *trie;
	__u32 saddr;
	int ipv4;

	saddr = xacl_ipv4_source(ctx, &ipv4);
	if (!ipv4) {
		xacl_count(XDP_ACL_STAT_NOT_IPV4);
		xacl_count(XDP_ACL_STAT_PASS);
		return XDP_PASS;
	}
	trie = bpf_map_lookup_elem(outer, slot);
	if (!trie) {
		xacl_count(XDP_ACL_STAT_NO_SLOT);
		return xacl_verdict(xacl_default_action);
	}
	__builtin_memcpy(key.addr, &saddr, sizeof(key.addr));
	rule = bpf_map_lookup_elem(trie, &key);
	if (!rule || (rule->action != XDP_ACL_ACTION_PASS && rule->action != XDP_ACL_ACTION_DROP)) {
		xacl_count(XDP_ACL_STAT_NO_MATCH);
		return xacl_verdict(xacl_default_action);
	}
	__sync_fetch_and_add(&rule->hits, 1);
	xacl_count(XDP_ACL_STAT_MATCHED);
	return xacl_verdict(rule->action);
}

SEC("xdp")
int xdp_acl_ifindex(struct xdp_md *ctx)
{
	__u32 slot = ctx->ingress_ifindex;

	return xacl_run(ctx, &xacl_if, &slot);
}

SEC("xdp")
int xdp_acl_fixed(struct xdp_md *ctx)
{
	__u32 slot = xacl_fixed_slot;

	return xacl_run(ctx, &xacl, &slot);
}
