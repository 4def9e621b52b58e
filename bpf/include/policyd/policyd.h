/*
 * policyd/policyd.h - for authors of BPF programs that read policy from policyd's outer
 * maps: declaring the outer maps so that libbpf can reuse policyd's pinned ones, and looking
 * up through them (single maps and atomic groups).
 *
 * Pulls in <linux/bpf.h> and <bpf/bpf_helpers.h> (UAPI headers; no vmlinux.h needed).
 * Only non-sleepable programs get policyd's drain guarantee: the grace period policyd waits
 * for after a swap does not cover sleepable (rcu_tasks_trace) programs.
 */
#ifndef POLICYD_POLICYD_H
#define POLICYD_POLICYD_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "policyd/abi.h"

/*
 * Map declarations
 * ----------------
 * An outer map's declaration must match what policyd creates from its config: same name
 * (policyd pins it at <pin_dir>/<name>), same number of slots, and an inner template with
 * the same type, key and value sizes, flags and, for array inners, max_entries. libbpf
 * checks the outer map when it reuses a pin; the kernel checks every inner map against the
 * template when policyd installs it, so a mismatch shows up as a failed load, not as
 * silently wrong lookups.
 *
 * The trailing optional arguments are extra attributes for the outer map, typically
 * POLICYD_PIN_BY_NAME so that libbpf opens the map policyd pinned instead of creating a
 * private, empty one. Set the object's pin_root_path to policyd's pin_dir when it is not
 * /sys/fs/bpf. Without pinning, the loader must call bpf_map__reuse_fd() before load.
 *
 *   POLICYD_OUTER_ARRAY(acl, 64, BPF_MAP_TYPE_HASH, __u32, struct acl_val, 4096,
 *                       POLICYD_PIN_BY_NAME);
 */
#define POLICYD_PIN_BY_NAME __uint(pinning, LIBBPF_PIN_BY_NAME);

/*
 * LPM tries must be created with BPF_F_NO_PREALLOC (the kernel refuses them otherwise), and
 * the template's flags have to equal the inner maps' flags, so the default follows the type.
 */
#define POLICYD_INNER_DEFAULT_FLAGS(inner_type) \
	((inner_type) == BPF_MAP_TYPE_LPM_TRIE ? BPF_F_NO_PREALLOC : 0)

/*
 * The inner template: what every inner map policyd installs in the outer map looks like.
 *
 * It gives key and value by size, not by BTF type, so that libbpf creates it without BTF, as
 * policyd creates its inner maps. Linux 6.1 (Debian 12) refuses an inner map whose BTF
 * presence differs from the template's: its bpf_map_meta_equal() compares timer_off, which is
 * -EINVAL for a map created without BTF and -ENOENT for one with BTF but no bpf_timer, so a
 * __type()d template made every policyd inner map fail with "update element: Invalid
 * argument". Linux 6.2 replaced that field with a BTF record that is NULL in both cases.
 * Sizes also sidestep clang 14 emitting only a forward declaration for a struct that the
 * nested template reaches through a pointer ("can't determine value size" in libbpf).
 * Lookups through the outer map are verified against these sizes; values in the program
 * keep their C types.
 */
#define POLICYD_INNER(inner_type, key_t, value_t, inner_max, inner_flags) \
	struct {                                                          \
		__uint(type, inner_type);                                 \
		__uint(max_entries, inner_max);                           \
		__uint(map_flags, inner_flags);                           \
		__uint(key_size, sizeof(key_t));                          \
		__uint(value_size, sizeof(value_t));                      \
	}

/*
 * The general form; the macros below fill in the outer type and the inner template. The
 * extra attributes go before `values`, a flexible array member that must come last.
 */
#define POLICYD_OUTER_MAP(outer_type, name, slots, slot_key_t, inner, ...) \
	struct {                                                           \
		__uint(type, outer_type);                                  \
		__uint(max_entries, slots);                                \
		__type(key, slot_key_t);                                   \
		__VA_ARGS__                                                \
		__array(values, inner);                                    \
	} name SEC(".maps")

/* ARRAY_OF_MAPS: slots are u32 indexes 0..slots-1. */
#define POLICYD_OUTER_ARRAY(name, slots, inner_type, key_t, value_t, inner_max, ...) \
	POLICYD_OUTER_MAP(BPF_MAP_TYPE_ARRAY_OF_MAPS, name, slots, __u32,            \
			  POLICYD_INNER(inner_type, key_t, value_t, inner_max,       \
					POLICYD_INNER_DEFAULT_FLAGS(inner_type)),    \
			  __VA_ARGS__)

#define POLICYD_OUTER_ARRAY_FLAGS(name, slots, inner_type, key_t, value_t, inner_max, inner_flags, \
				  ...)                                                             \
	POLICYD_OUTER_MAP(BPF_MAP_TYPE_ARRAY_OF_MAPS, name, slots, __u32,                          \
			  POLICYD_INNER(inner_type, key_t, value_t, inner_max, inner_flags),       \
			  __VA_ARGS__)

/* HASH_OF_MAPS: slots are keys of slot_key_t; `slots` is the most the map can hold. */
#define POLICYD_OUTER_HASH(name, slots, slot_key_t, inner_type, key_t, value_t, inner_max, ...) \
	POLICYD_OUTER_MAP(BPF_MAP_TYPE_HASH_OF_MAPS, name, slots, slot_key_t,                   \
			  POLICYD_INNER(inner_type, key_t, value_t, inner_max,                  \
					POLICYD_INNER_DEFAULT_FLAGS(inner_type)),               \
			  __VA_ARGS__)

#define POLICYD_OUTER_HASH_FLAGS(name, slots, slot_key_t, inner_type, key_t, value_t, inner_max, \
				 inner_flags, ...)                                               \
	POLICYD_OUTER_MAP(BPF_MAP_TYPE_HASH_OF_MAPS, name, slots, slot_key_t,                    \
			  POLICYD_INNER(inner_type, key_t, value_t, inner_max, inner_flags),     \
			  __VA_ARGS__)

/*
 * Atomic groups
 * -------------
 * policyd keeps every member M of group G twice (M_a, M_b) and publishes which copy is live
 * in the one-entry array G_bank. It fills the idle bank, flips the word, waits one grace
 * period and only then touches the old bank again. A program that reads the word once and
 * uses that value for every lookup in the group during one run therefore sees the whole old
 * generation or the whole new one; reading it again mid-run could mix the two.
 *
 *   POLICYD_GROUP_BANK(fw, POLICYD_PIN_BY_NAME);
 *   POLICYD_GROUP_OUTER_ARRAY(fw_src, 16, BPF_MAP_TYPE_LPM_TRIE, struct k, struct v, 1024,
 *                             POLICYD_PIN_BY_NAME);
 *   ...
 *   __u32 bank = policyd_group_bank(&fw_bank);
 *   struct v *v = POLICYD_GROUP_LOOKUP(bank, fw_src, &slot, &key);
 *
 * G may be at most POLICYD_MAX_GROUP_NAME characters and M at most
 * POLICYD_MAX_GROUP_MEMBER_NAME, so that the derived map names fit the kernel's limit.
 */
#define POLICYD_GROUP_BANK(group, ...)            \
	struct {                                  \
		__uint(type, BPF_MAP_TYPE_ARRAY); \
		__uint(max_entries, 1);           \
		__type(key, __u32);               \
		__type(value, __u32);             \
		__VA_ARGS__                       \
	} group##_bank SEC(".maps")

#define POLICYD_GROUP_OUTER_ARRAY(name, slots, inner_type, key_t, value_t, inner_max, ...)        \
	POLICYD_OUTER_ARRAY(name##_a, slots, inner_type, key_t, value_t, inner_max, __VA_ARGS__); \
	POLICYD_OUTER_ARRAY(name##_b, slots, inner_type, key_t, value_t, inner_max, __VA_ARGS__)

#define POLICYD_GROUP_OUTER_HASH(name, slots, slot_key_t, inner_type, key_t, value_t, inner_max, \
				 ...)                                                            \
	POLICYD_OUTER_HASH(name##_a, slots, slot_key_t, inner_type, key_t, value_t, inner_max,   \
			   __VA_ARGS__);                                                         \
	POLICYD_OUTER_HASH(name##_b, slots, slot_key_t, inner_type, key_t, value_t, inner_max,   \
			   __VA_ARGS__)

/*
 * Lookups
 * -------
 * These are always inlined: the verifier needs a constant map pointer at each helper call,
 * and only inlining turns the map arguments back into constants at every call site.
 */

/* Outer map -> the slot's inner map -> the entry. NULL when the slot or the key is empty. */
static __always_inline void *policyd_slot_lookup(void *outer, const void *slot, const void *key)
{
	void *inner = bpf_map_lookup_elem(outer, slot);

	if (!inner)
		return NULL;
	return bpf_map_lookup_elem(inner, key);
}

/*
 * The active bank of a group: POLICYD_BANK_A or POLICYD_BANK_B (A when the word cannot be
 * read). The volatile access makes this exactly one load; otherwise the compiler could
 * re-read the map value at each use and observe a flip between two lookups.
 */
static __always_inline __u32 policyd_group_bank(void *bank_map)
{
	__u32 zero = 0;
	const volatile __u32 *word = bpf_map_lookup_elem(bank_map, &zero);

	if (!word)
		return POLICYD_BANK_A;
	return *word == POLICYD_BANK_B ? POLICYD_BANK_B : POLICYD_BANK_A;
}

/*
 * Looks up through the member copy that `bank` (from policyd_group_bank(), read once per
 * run) selects. The two branches keep a separate call site per map: selecting the map
 * pointer first (bank ? b : a) would hand the helper a pointer the verifier cannot pin
 * to one map.
 */
static __always_inline void *policyd_group_lookup(__u32 bank, void *outer_a, void *outer_b,
						  const void *slot, const void *key)
{
	if (bank == POLICYD_BANK_B)
		return policyd_slot_lookup(outer_b, slot, key);
	else
		return policyd_slot_lookup(outer_a, slot, key);
}

/* policyd_group_lookup() on the two copies declared by POLICYD_GROUP_OUTER_*(member, ...). */
#define POLICYD_GROUP_LOOKUP(bank, member, slot, key) \
	policyd_group_lookup(bank, &member##_a, &member##_b, slot, key)

#endif /* POLICYD_POLICYD_H */
