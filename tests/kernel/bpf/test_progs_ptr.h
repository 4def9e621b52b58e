// SkelPtr: the owner of a test_progs skeleton; destroy() closes its programs and the maps it
// holds. Shared by the kernel tests, the e2e tests and the benches that load test_progs.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "test_progs.skel.h"

namespace policyd::test {

struct SkelDeleter {
  void operator()(test_progs* skel) const { test_progs__destroy(skel); }
};
using SkelPtr = std::unique_ptr<test_progs, SkelDeleter>;

// test_progs loaded with arr_lpm replaced by `outer_fd` (an outer map of lpm tries, such as the
// daemon's pinned acl) and its lookup aimed at 10.1.2.3 in `slot`: each run of count_arr_lpm
// then bumps the hit counter of the entry it finds. Null, with `error` set, when it fails.
inline SkelPtr load_counting_acl(int outer_fd, uint32_t slot, std::string& error) {
  SkelPtr skel(test_progs__open());
  if (!skel) {
    error = "open test_progs";
    return nullptr;
  }
  if (bpf_map__reuse_fd(skel->maps.arr_lpm, outer_fd) != 0) {
    error = "reuse the outer map's fd for arr_lpm";
    return nullptr;
  }
  if (test_progs__load(skel.get()) != 0) {
    error = "load test_progs";
    return nullptr;
  }
  skel->bss->slot = slot;
  const uint8_t addr[4] = {10, 1, 2, 3};
  std::memcpy(&skel->bss->lpm_addr, addr, 4);
  return skel;
}

}  // namespace policyd::test
