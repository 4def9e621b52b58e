// SPDX-License-Identifier: GPL-2.0
/*
 * test_progs.bpf.c - XDP programs the kernel tests run with BPF_PROG_TEST_RUN to watch what
 * the data plane sees through policyd's outer maps: one counting program per inner map
 * type, and one that checks an atomic group never shows a mixed cut.
 *
 * The maps are declared with policyd/policyd.h so that the tests also prove the header's
 * declarations load. Tests create the outer maps themselves (kernel::create_map) and hand
 * them over with bpf_map__reuse_fd(), or let libbpf create them.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "policyd/policyd.h"
#include "test_progs.h"

char LICENSE[] SEC("license") = "GPL";

POLICYD_OUTER_ARRAY(arr_hash, PD_TEST_SLOTS, BPF_MAP_TYPE_HASH, __u32, struct pd_test_value,
		    PD_TEST_INNER_MAX);
POLICYD_OUTER_ARRAY(arr_array, PD_TEST_SLOTS, BPF_MAP_TYPE_ARRAY, __u32, struct pd_test_value,
		    PD_TEST_INNER_MAX);
POLICYD_OUTER_ARRAY(arr_lpm, PD_TEST_SLOTS, BPF_MAP_TYPE_LPM_TRIE, struct pd_lpm4_key,
		    struct pd_test_value, PD_TEST_INNER_MAX);
POLICYD_OUTER_ARRAY(arr_pcpu, PD_TEST_SLOTS, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct pd_test_value,
		    PD_TEST_INNER_MAX);
POLICYD_OUTER_HASH(hash_hash, PD_TEST_SLOTS, __u32, BPF_MAP_TYPE_HASH, __u32, struct pd_test_value,
		   PD_TEST_INNER_MAX);

POLICYD_GROUP_BANK(grp);
POLICYD_GROUP_OUTER_ARRAY(grpx, PD_TEST_GROUP_SLOTS, BPF_MAP_TYPE_ARRAY, __u32,
			  struct pd_test_value, PD_TEST_INNER_MAX);
POLICYD_GROUP_OUTER_ARRAY(grpy, PD_TEST_GROUP_SLOTS, BPF_MAP_TYPE_ARRAY, __u32,
			  struct pd_test_value, PD_TEST_INNER_MAX);

/* Inputs, written by the test through skel->bss before a run. */
__u32 slot;
__u32 key;
__u32 lpm_addr; /* network byte order, as stored in pd_lpm4_key.addr */

/* Outputs; several test threads run the programs at once, hence the atomic adds. */
__u64 runs;
__u64 hits_found;
__u64 misses;
__u64 mismatches;
__u64 group_ok;
__u32 last_action;

/* Shared tail of the counting programs: count the outcome and map it to a verdict. */
static __always_inline int count_result(struct pd_test_value *v)
{
	if (!v) {
		__sync_fetch_and_add(&misses, 1);
		return XDP_DROP;
	}
	__sync_fetch_and_add(&v->hits, 1);
	last_action = v->action;
	__sync_fetch_and_add(&hits_found, 1);
	return XDP_PASS;
}

SEC("xdp")
int count_arr_hash(struct xdp_md *ctx)
{
	__u32 s = slot, k = key;

	__sync_fetch_and_add(&runs, 1);
	return count_result(policyd_slot_lookup(&arr_hash, &s, &k));
}

SEC("xdp")
int count_arr_array(struct xdp_md *ctx)
{
	__u32 s = slot, k = key;

	__sync_fetch_and_add(&runs, 1);
	return count_result(policyd_slot_lookup(&arr_array, &s, &k));
}

SEC("xdp")
int count_arr_lpm(struct xdp_md *ctx)
{
	struct pd_lpm4_key k = { .prefixlen = 32 };
	__u32 s = slot, addr = lpm_addr;

	__builtin_memcpy(k.addr, &addr, sizeof(k.addr));
	__sync_fetch_and_add(&runs, 1);
	return count_result(policyd_slot_lookup(&arr_lpm, &s, &k));
}

SEC("xdp")
int count_arr_pcpu(struct xdp_md *ctx)
{
	__u32 s = slot, k = key;

	__sync_fetch_and_add(&runs, 1);
	return count_result(policyd_slot_lookup(&arr_pcpu, &s, &k));
}

SEC("xdp")
int count_hash_hash(struct xdp_md *ctx)
{
	__u32 s = slot, k = key;

	__sync_fetch_and_add(&runs, 1);
	return count_result(policyd_slot_lookup(&hash_hash, &s, &k));
}

/*
 * One run sees either the old or the new generation of both grpx and grpy. The tests give
 * both members the same `action` in each generation, so a mismatch means a mixed cut.
 */
SEC("xdp")
int check_group(struct xdp_md *ctx)
{
	__u32 bank = policyd_group_bank(&grp_bank);
	__u32 s = slot, k = 0;
	struct pd_test_value *x, *y;

	__sync_fetch_and_add(&runs, 1);
	x = POLICYD_GROUP_LOOKUP(bank, grpx, &s, &k);
	y = POLICYD_GROUP_LOOKUP(bank, grpy, &s, &k);
	if (!x || !y)
		__sync_fetch_and_add(&misses, 1);
	else if (x->action != y->action)
		__sync_fetch_and_add(&mismatches, 1);
	else
		__sync_fetch_and_add(&group_ok, 1);
	return XDP_PASS;
}
