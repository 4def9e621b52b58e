// Builder on the real kernel: large inner maps are filled by several threads over disjoint
// ranges; every entry must land exactly once with its own value.
#include <gtest/gtest.h>

#include <cstring>

#include "core/builder.h"
#include "kernel/map.h"
#include "support/bpffs.h"
#include "util/worker_pool.h"

namespace policyd::core {
namespace {

OuterMapConfig big_hash_map(uint32_t max_entries) {
  OuterMapConfig m;
  m.name = "bigfill";
  m.kind = OuterKind::kArray;
  m.slots = 1;
  m.inner.type = BPF_MAP_TYPE_HASH;
  m.inner.key_size = 4;
  m.inner.value_size = 8;
  m.inner.max_entries = max_entries;
  return m;
}

Generation numbered_entries(uint32_t count) {
  Generation gen;
  SlotChange change;
  change.map = "bigfill";
  change.slot = array_slot(0);
  change.entries.resize(count);
  for (uint32_t i = 0; i < count; ++i) {
    Entry& e = change.entries[i];
    e.key.resize(4);
    std::memcpy(e.key.data(), &i, 4);
    const uint64_t v = uint64_t{i} * 3 + 1;
    e.value.resize(8);
    std::memcpy(e.value.data(), &v, 8);
  }
  gen.changes.push_back(std::move(change));
  return gen;
}

class BuilderTest : public test::BpfTest {};

// 300,000 entries is above the parallel-fill threshold: two threads fill halves.
TEST_F(BuilderTest, LargeMapFilledInParallelHoldsEveryEntryOnce) {
  constexpr uint32_t kCount = 300000;
  MapConfigs maps{{"bigfill", big_hash_map(kCount)}};
  util::WorkerPool pool(2);
  Result<BuiltGeneration> built = build_generation(numbered_entries(kCount), maps, pool);
  ASSERT_TRUE(built.ok()) << built.error().message();
  const InnerRef& inner = built->changes.at(0).inner;
  ASSERT_TRUE(inner);

  Result<kernel::MapInfo> info = kernel::map_info(inner->fd.get());
  ASSERT_TRUE(info.ok());
  size_t seen = 0;
  size_t wrong = 0;
  Status st = kernel::dump(inner->fd.get(), *info, [&](const uint8_t* k, const uint8_t* v) {
    uint32_t key = 0;
    uint64_t value = 0;
    std::memcpy(&key, k, 4);
    std::memcpy(&value, v, 8);
    ++seen;
    if (key >= kCount || value != uint64_t{key} * 3 + 1) ++wrong;
  });
  ASSERT_TRUE(st.ok()) << st.error().message();
  EXPECT_EQ(seen, kCount);
  EXPECT_EQ(wrong, 0u);
}

}  // namespace
}  // namespace policyd::core
