/*
 * policyd/abi.h - what policyd and data-plane programs agree on outside the maps' own
 * layouts: the atomic-group bank word and the names policyd derives for group maps.
 * Plain C with no BPF dependencies, so the daemon (C++) and BPF programs include the same
 * definitions instead of copies kept in sync by hand.
 */
#ifndef POLICYD_ABI_H
#define POLICYD_ABI_H

/*
 * Values of the u32 at key 0 of "<group>_bank". policyd flips it only after the bank it
 * points to holds the complete new generation, and rewrites the other bank only after a
 * grace period, so a program that reads the word once sees one consistent generation.
 */
#define POLICYD_BANK_A 0u
#define POLICYD_BANK_B 1u

/* "<group>_bank" holds the bank word; member outer map M exists as "M_a" and "M_b". */
#define POLICYD_BANK_MAP_SUFFIX "_bank"
#define POLICYD_BANK_A_SUFFIX "_a"
#define POLICYD_BANK_B_SUFFIX "_b"

/* The kernel's limit (BPF_OBJ_NAME_LEN - 1); the derived names must fit in it too. */
#define POLICYD_MAX_MAP_NAME 15
#define POLICYD_MAX_GROUP_NAME (POLICYD_MAX_MAP_NAME - 5)
#define POLICYD_MAX_GROUP_MEMBER_NAME (POLICYD_MAX_MAP_NAME - 2)

#endif /* POLICYD_ABI_H */
