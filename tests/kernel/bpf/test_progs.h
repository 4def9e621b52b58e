/*
 * test_progs.h - types shared by test_progs.bpf.c and the C++ kernel tests that drive it.
 * Plain C, fixed-width types and explicit padding, so that both compilers agree on the
 * layout; the assertions below fail the build of either side if they ever do not.
 */
#ifndef POLICYD_TEST_PROGS_H
#define POLICYD_TEST_PROGS_H

#include <linux/types.h>

/* Inner max_entries of every test outer map. */
#define PD_TEST_INNER_MAX 16
/* Slots of the single outer maps and of the atomic-group members. */
#define PD_TEST_SLOTS 64
#define PD_TEST_GROUP_SLOTS 4

/* The value of every test inner map. */
struct pd_test_value {
  __u32 action; /* copied to last_action by the programs */
  __u32 pad;    /* keeps hits 8-byte aligned on every ABI */
  __u64 hits;   /* incremented atomically by the programs */
};

/* An IPv4 LPM trie key: the kernel's struct bpf_lpm_trie_key layout with 4 data bytes. */
struct pd_lpm4_key {
  __u32 prefixlen;
  __u8 addr[4]; /* network byte order */
};

#ifdef __cplusplus
#include <cstddef>
static_assert(sizeof(struct pd_test_value) == 16, "pd_test_value layout");
static_assert(offsetof(struct pd_test_value, hits) == 8, "pd_test_value layout");
static_assert(sizeof(struct pd_lpm4_key) == 8, "pd_lpm4_key layout");
static_assert(offsetof(struct pd_lpm4_key, addr) == 4, "pd_lpm4_key layout");
#else
_Static_assert(sizeof(struct pd_test_value) == 16, "pd_test_value layout");
_Static_assert(__builtin_offsetof(struct pd_test_value, hits) == 8, "pd_test_value layout");
_Static_assert(sizeof(struct pd_lpm4_key) == 8, "pd_lpm4_key layout");
_Static_assert(__builtin_offsetof(struct pd_lpm4_key, addr) == 4, "pd_lpm4_key layout");
#endif

#endif /* POLICYD_TEST_PROGS_H */
