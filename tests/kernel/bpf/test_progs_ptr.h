// SkelPtr: the owner of a test_progs skeleton; destroy() closes its programs and the maps it
// holds. Shared by the kernel tests, the e2e tests and the benches that load test_progs.
#pragma once

#include <memory>

#include "test_progs.skel.h"

namespace policyd::test {

struct SkelDeleter {
  void operator()(test_progs* skel) const { test_progs__destroy(skel); }
};
using SkelPtr = std::unique_ptr<test_progs, SkelDeleter>;

}  // namespace policyd::test
