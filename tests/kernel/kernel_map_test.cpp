// kernel/map.h against the running kernel: every inner map type policyd builds survives a
// fill() and dump() round trip byte for byte, names follow the kernel's rule, pins work in a
// private bpffs, and batch writes on outer maps report partial progress.
#include <gtest/gtest.h>
#include <linux/bpf.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "kernel/map.h"
#include "support/bpffs.h"

namespace policyd::kernel {
namespace {

using test::BpfTest;
using Bytes = std::vector<uint8_t>;

// A value with no padding and a size that is not a multiple of 8, so that per-CPU buffers
// exercise the kernel's 8-byte stride.
constexpr uint32_t kValueSize = 12;

struct TypeCase {
  const char* label;
  bpf_map_type type;
  uint32_t key_size;
  uint32_t max_entries;
  uint32_t flags;
  size_t count;
};

// gtest's hook for naming a parameter in failure messages.
// NOLINTNEXTLINE(readability-identifier-naming)
void PrintTo(const TypeCase& c, std::ostream* os) { *os << c.label; }

// Distinct, non-contiguous keys for hashes, indexes for arrays, /32 prefixes for the trie.
Bytes make_key(const TypeCase& c, uint32_t i) {
  Bytes key(c.key_size);
  if (c.type == BPF_MAP_TYPE_LPM_TRIE) {
    const uint32_t prefixlen = 32;
    const uint8_t addr[4] = {10, static_cast<uint8_t>(i >> 16), static_cast<uint8_t>(i >> 8),
                             static_cast<uint8_t>(i)};
    std::memcpy(key.data(), &prefixlen, 4);
    std::memcpy(key.data() + 4, addr, 4);
    return key;
  }
  const bool array = c.type == BPF_MAP_TYPE_ARRAY || c.type == BPF_MAP_TYPE_PERCPU_ARRAY;
  const uint32_t k = array ? i : i * 7919u + 13u;
  std::memcpy(key.data(), &k, 4);
  return key;
}

// One CPU's copy of element i's value: different per element and per CPU.
void write_value(uint8_t* out, uint32_t i, uint32_t cpu) {
  const uint32_t words[3] = {i, i ^ 0xa5a5a5a5u, cpu};
  std::memcpy(out, words, kValueSize);
}

// The meaningful bytes of a syscall value buffer: kValueSize bytes per CPU, padding dropped.
Bytes strip_padding(const TypeCase& c, const uint8_t* value) {
  if (!is_percpu(c.type)) return Bytes(value, value + kValueSize);
  const size_t stride = syscall_value_size(c.type, kValueSize) / possible_cpus();
  Bytes out;
  for (uint32_t cpu = 0; cpu < possible_cpus(); ++cpu) {
    const uint8_t* p = value + cpu * stride;
    out.insert(out.end(), p, p + kValueSize);
  }
  return out;
}

class MapRoundTripTest : public BpfTest, public ::testing::WithParamInterface<TypeCase> {};

TEST_P(MapRoundTripTest, FillThenDumpReturnsExactlyWhatWasWritten) {
  const TypeCase& c = GetParam();
  MapSpec spec;
  spec.type = c.type;
  spec.name = std::string("t_") + c.label;
  spec.key_size = c.key_size;
  spec.value_size = kValueSize;
  spec.max_entries = c.max_entries;
  spec.flags = c.flags;
  auto fd = create_map(spec);
  ASSERT_TRUE(fd.ok()) << fd.error().message();

  auto info = map_info(fd->get());
  ASSERT_TRUE(info.ok()) << info.error().message();
  EXPECT_EQ(info->type, c.type);
  EXPECT_EQ(info->name, spec.name);
  EXPECT_EQ(info->key_size, c.key_size);
  EXPECT_EQ(info->value_size, kValueSize);
  EXPECT_EQ(info->max_entries, c.max_entries);
  EXPECT_EQ(info->flags, c.flags);
  EXPECT_NE(info->id, 0u);

  const size_t stride = syscall_value_size(c.type, kValueSize);
  if (is_percpu(c.type)) {
    EXPECT_EQ(stride, size_t{16} * possible_cpus());
  } else {
    EXPECT_EQ(stride, kValueSize);
  }
  Bytes keys(c.count * c.key_size);
  Bytes values(c.count * stride);
  std::map<Bytes, Bytes> expected;
  for (uint32_t i = 0; i < c.count; ++i) {
    Bytes key = make_key(c, i);
    std::memcpy(keys.data() + size_t{i} * c.key_size, key.data(), c.key_size);
    uint8_t* value = values.data() + size_t{i} * stride;
    const uint32_t copies = is_percpu(c.type) ? possible_cpus() : 1;
    for (uint32_t cpu = 0; cpu < copies; ++cpu)
      write_value(value + cpu * (stride / copies), i, cpu);
    expected.emplace(std::move(key), strip_padding(c, value));
  }
  ASSERT_EQ(expected.size(), c.count) << "test keys are not distinct";

  Status filled = fill(fd->get(), keys.data(), c.key_size, values.data(), stride, c.count);
  ASSERT_TRUE(filled.ok()) << filled.error().message();

  std::map<Bytes, Bytes> got;
  size_t duplicates = 0;
  Status dumped = dump(fd->get(), *info, [&](const uint8_t* key, const uint8_t* value) {
    bool inserted = got.emplace(Bytes(key, key + c.key_size), strip_padding(c, value)).second;
    if (!inserted) ++duplicates;
  });
  ASSERT_TRUE(dumped.ok()) << dumped.error().message();
  EXPECT_EQ(duplicates, 0u) << "dump visited some keys twice";
  EXPECT_EQ(got.size(), expected.size());
  size_t missing = 0, wrong = 0;
  for (const auto& [key, value] : expected) {
    auto it = got.find(key);
    if (it == got.end()) {
      ++missing;
    } else if (it->second != value) {
      ++wrong;
    }
  }
  EXPECT_EQ(missing, 0u) << "entries written but not dumped";
  EXPECT_EQ(wrong, 0u) << "entries dumped with a different value";
}

INSTANTIATE_TEST_SUITE_P(
    InnerTypes, MapRoundTripTest,
    ::testing::Values(TypeCase{"hash", BPF_MAP_TYPE_HASH, 4, 10000, 0, 10000},
                      TypeCase{"array", BPF_MAP_TYPE_ARRAY, 4, 10000, 0, 10000},
                      TypeCase{"lpm_trie", BPF_MAP_TYPE_LPM_TRIE, 8, 1000, BPF_F_NO_PREALLOC, 1000},
                      TypeCase{"percpu_hash", BPF_MAP_TYPE_PERCPU_HASH, 4, 10000, 0, 10000},
                      TypeCase{"percpu_array", BPF_MAP_TYPE_PERCPU_ARRAY, 4, 10000, 0, 10000},
                      // LRU nodes sit in per-CPU free lists; headroom keeps a migrating writer from
                      // evicting before the map is nominally full.
                      TypeCase{"lru_hash", BPF_MAP_TYPE_LRU_HASH, 4, 20000, 0, 10000}),
    [](const ::testing::TestParamInfo<TypeCase>& p) { return std::string(p.param.label); });

TEST(MapNameTest, FollowsTheKernelRule) {
  EXPECT_TRUE(check_map_name("abcdefghijklmno").ok());  // 15 characters
  EXPECT_TRUE(check_map_name("Acl_v4.src9").ok());

  Status too_long = check_map_name("abcdefghijklmnop");  // 16 characters
  ASSERT_FALSE(too_long.ok());
  EXPECT_EQ(too_long.error().code, ErrorCode::kInvalidArgument);

  Status dash = check_map_name("acl-v4");
  ASSERT_FALSE(dash.ok());
  EXPECT_EQ(dash.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(dash.error().context.find('-'), std::string::npos) << dash.error().context;

  EXPECT_FALSE(check_map_name("").ok());
}

TEST(MapNameTest, CreateRefusesABadNameBeforeTheSyscall) {
  MapSpec spec;
  spec.type = BPF_MAP_TYPE_ARRAY;
  spec.name = "bad-name";
  spec.key_size = 4;
  spec.value_size = 4;
  spec.max_entries = 1;
  auto fd = create_map(spec);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(fd.error().sys_errno, 0);
}

class KernelMapTest : public BpfTest {
 protected:
  static Result<UniqueFd> small_array(const std::string& name) {
    MapSpec spec;
    spec.type = BPF_MAP_TYPE_ARRAY;
    spec.name = name;
    spec.key_size = 4;
    spec.value_size = 4;
    spec.max_entries = 1;
    return create_map(spec);
  }
};

TEST_F(KernelMapTest, PinOpenPinnedUnpin) {
  auto fs = test::PrivateBpffs::create();
  ASSERT_TRUE(fs.ok()) << fs.error().message();
  auto fd = small_array("t_pin");
  ASSERT_TRUE(fd.ok()) << fd.error().message();
  auto info = map_info(fd->get());
  ASSERT_TRUE(info.ok()) << info.error().message();

  const std::string path = fs->join("t_pin");
  Status pinned = pin(fd->get(), path);
  ASSERT_TRUE(pinned.ok()) << pinned.error().message();

  auto reopened = open_pinned(path);
  ASSERT_TRUE(reopened.ok()) << reopened.error().message();
  auto reopened_info = map_info(reopened->get());
  ASSERT_TRUE(reopened_info.ok()) << reopened_info.error().message();
  EXPECT_EQ(reopened_info->id, info->id) << "the pin leads to another map";

  // A value written through one fd is visible through the other: one map, two handles.
  const uint32_t key = 0, value = 0xfeed;
  ASSERT_TRUE(update_elem(fd->get(), &key, &value).ok());
  uint32_t read = 0;
  auto found = lookup_elem(reopened->get(), &key, &read);
  ASSERT_TRUE(found.ok()) << found.error().message();
  EXPECT_TRUE(*found);
  EXPECT_EQ(read, value);

  Status unpinned = unpin(path);
  ASSERT_TRUE(unpinned.ok()) << unpinned.error().message();
  auto gone = open_pinned(path);
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(unpin(path).ok()) << "unpinning twice is not an error";
}

TEST_F(KernelMapTest, OpenPinnedOfAMissingPathIsNotFound) {
  auto fs = test::PrivateBpffs::create();
  ASSERT_TRUE(fs.ok()) << fs.error().message();
  auto fd = open_pinned(fs->join("nothing_here"));
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(fd.error().sys_errno, ENOENT);
}

TEST_F(KernelMapTest, UpdateBatchOnAFullHashOfMapsReportsAppliedAndE2big) {
  MapSpec inner_spec;
  inner_spec.type = BPF_MAP_TYPE_ARRAY;
  inner_spec.name = "t_inner";
  inner_spec.key_size = 4;
  inner_spec.value_size = 4;
  inner_spec.max_entries = 1;
  auto tmpl = create_map(inner_spec);
  ASSERT_TRUE(tmpl.ok()) << tmpl.error().message();

  MapSpec outer_spec;
  outer_spec.type = BPF_MAP_TYPE_HASH_OF_MAPS;
  outer_spec.name = "t_outer";
  outer_spec.key_size = 4;
  outer_spec.value_size = 4;
  outer_spec.max_entries = 4;
  outer_spec.inner_map_fd = tmpl->get();
  auto outer = create_map(outer_spec);
  ASSERT_TRUE(outer.ok()) << outer.error().message();

  constexpr uint32_t kCount = 6;
  std::vector<UniqueFd> inners;
  std::vector<uint32_t> keys, fds;
  for (uint32_t i = 0; i < kCount; ++i) {
    auto inner = create_map(inner_spec);
    ASSERT_TRUE(inner.ok()) << inner.error().message();
    keys.push_back(100 + i);
    fds.push_back(static_cast<uint32_t>(inner->get()));
    inners.push_back(std::move(inner).value());
  }

  BatchOutcome out = update_batch(outer->get(), keys.data(), fds.data(), kCount);
  ASSERT_TRUE(out.error.has_value()) << "a 4-slot hash of maps accepted 6 slots";
  EXPECT_EQ(out.applied, 4u);
  EXPECT_EQ(out.error->sys_errno, E2BIG) << out.error->message();
  EXPECT_EQ(out.error->code, ErrorCode::kResourceExhausted);

  // The applied prefix is really in the map, and nothing after it.
  for (uint32_t i = 0; i < kCount; ++i) {
    uint32_t id = 0;
    auto found = lookup_elem(outer->get(), &keys[i], &id);
    ASSERT_TRUE(found.ok()) << found.error().message();
    EXPECT_EQ(*found, i < 4) << "slot key " << keys[i];
  }
}

bool contains(const std::vector<uint32_t>& ids, uint32_t id) {
  for (uint32_t x : ids) {
    if (x == id) return true;
  }
  return false;
}

TEST_F(KernelMapTest, ListMapIdsSeesAMapUntilItIsFreed) {
  auto fd = small_array("t_ids");
  ASSERT_TRUE(fd.ok()) << fd.error().message();
  auto info = map_info(fd->get());
  ASSERT_TRUE(info.ok()) << info.error().message();

  auto before = list_map_ids();
  ASSERT_TRUE(before.ok()) << before.error().message();
  EXPECT_TRUE(contains(*before, info->id));

  fd->reset();
  // The kernel frees maps from a workqueue after the last reference goes.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  bool freed = false;
  while (!freed && std::chrono::steady_clock::now() < deadline) {
    auto ids = list_map_ids();
    ASSERT_TRUE(ids.ok()) << ids.error().message();
    freed = !contains(*ids, info->id);
    if (!freed) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(freed) << "map id " << info->id << " still listed 2 s after its last fd closed";
}

}  // namespace
}  // namespace policyd::kernel
