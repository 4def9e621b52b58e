// The test BPF programs and the support code work together: the skeleton loads against
// outer maps created by kernel::create_map (as policyd's are), programs run through
// BPF_PROG_TEST_RUN find what user space installed, and policyd.h's lookups (single and
// atomic group) go where they should. Later kernel tests build on exactly this setup.
#include "test_progs.h"

#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernel/map.h"
#include "support/bpffs.h"
#include "support/prog_run.h"
#include "test_progs_ptr.h"

namespace policyd::kernel {
namespace {

using test::SkelPtr;

Result<UniqueFd> make_map(bpf_map_type type, const std::string& name, uint32_t key_size,
                          uint32_t max_entries, uint32_t flags = 0, int inner_fd = -1) {
  MapSpec spec;
  spec.type = type;
  spec.name = name;
  spec.key_size = key_size;
  spec.value_size = is_map_in_map(type) ? 4 : sizeof(pd_test_value);
  spec.max_entries = max_entries;
  spec.flags = flags;
  spec.inner_map_fd = inner_fd;
  return create_map(spec);
}

Status install(int outer_fd, uint32_t slot, int inner_fd) {
  const auto value = static_cast<uint32_t>(inner_fd);
  return update_elem(outer_fd, &slot, &value);
}

class TestProgsTest : public test::BpfTest {};

TEST_F(TestProgsTest, CountArrHashThroughAnOuterMapCreatedByPolicyd) {
  // The outer map comes from kernel::create_map, the way policyd makes it, and the skeleton
  // adopts it instead of creating its own.
  auto tmpl = make_map(BPF_MAP_TYPE_HASH, "t_tmpl", 4, PD_TEST_INNER_MAX);
  ASSERT_TRUE(tmpl.ok()) << tmpl.error().message();
  auto outer = make_map(BPF_MAP_TYPE_ARRAY_OF_MAPS, "arr_hash", 4, PD_TEST_SLOTS, 0, tmpl->get());
  ASSERT_TRUE(outer.ok()) << outer.error().message();

  SkelPtr skel(test_progs__open());
  ASSERT_NE(skel, nullptr) << "test_progs__open: " << std::strerror(errno);
  int rc = bpf_map__reuse_fd(skel->maps.arr_hash, outer->get());
  ASSERT_EQ(rc, 0) << "bpf_map__reuse_fd: " << std::strerror(-rc);
  rc = test_progs__load(skel.get());
  ASSERT_EQ(rc, 0) << "test_progs__load: " << std::strerror(-rc);

  auto inner = make_map(BPF_MAP_TYPE_HASH, "t_inner", 4, PD_TEST_INNER_MAX);
  ASSERT_TRUE(inner.ok()) << inner.error().message();
  const uint32_t key = 5;
  pd_test_value value{};
  value.action = 7;
  ASSERT_TRUE(update_elem(inner->get(), &key, &value).ok());
  Status installed = install(outer->get(), 3, inner->get());
  ASSERT_TRUE(installed.ok()) << installed.error().message();

  skel->bss->slot = 3;
  skel->bss->key = key;
  const int prog_fd = bpf_program__fd(skel->progs.count_arr_hash);
  constexpr int kThreads = 4;
  constexpr uint32_t kRepeat = 1000;
  std::vector<Result<uint32_t>> results(kThreads, Result<uint32_t>(0u));
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] { results[t] = test::run_xdp(prog_fd, kRepeat); });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.error().message();
    EXPECT_EQ(*r, static_cast<uint32_t>(XDP_PASS));
  }

  const uint64_t total = uint64_t{kThreads} * kRepeat;
  EXPECT_EQ(skel->bss->runs, total);
  EXPECT_EQ(skel->bss->hits_found, total);
  EXPECT_EQ(skel->bss->misses, 0u);
  EXPECT_EQ(skel->bss->last_action, 7u);
  pd_test_value after{};
  auto found = lookup_elem(inner->get(), &key, &after);
  ASSERT_TRUE(found.ok()) << found.error().message();
  ASSERT_TRUE(*found);
  EXPECT_EQ(after.hits, total) << "the inner map's counter lost increments";

  // A key the inner map lacks, then a slot nobody installed: both miss.
  skel->bss->key = key + 1;
  auto miss = test::run_xdp(prog_fd, 10);
  ASSERT_TRUE(miss.ok()) << miss.error().message();
  EXPECT_EQ(*miss, static_cast<uint32_t>(XDP_DROP));
  skel->bss->key = key;
  skel->bss->slot = 4;
  miss = test::run_xdp(prog_fd, 10);
  ASSERT_TRUE(miss.ok()) << miss.error().message();
  EXPECT_EQ(*miss, static_cast<uint32_t>(XDP_DROP));
  EXPECT_EQ(skel->bss->misses, 20u);
  EXPECT_EQ(skel->bss->runs, total + 20);
}

// Loads with libbpf creating every map, so each outer map declaration in policyd.h style is
// checked by the kernel against inner maps created the way policyd creates them.
class LoadedTestProgsTest : public test::BpfTest {
 protected:
  void SetUp() override {
    BpfTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    skel_.reset(test_progs__open_and_load());
    ASSERT_NE(skel_, nullptr) << "test_progs__open_and_load: " << std::strerror(errno);
  }

  // Installs `inner` at `slot` of the skeleton's map, runs `prog` once and returns its verdict.
  void expect_hit(bpf_map* outer_map, bpf_program* prog, uint32_t slot, int inner_fd,
                  uint32_t action) {
    Status installed = install(bpf_map__fd(outer_map), slot, inner_fd);
    ASSERT_TRUE(installed.ok()) << installed.error().message();
    skel_->bss->slot = slot;
    const uint64_t hits_before = skel_->bss->hits_found;
    auto verdict = test::run_xdp(bpf_program__fd(prog), 1);
    ASSERT_TRUE(verdict.ok()) << verdict.error().message();
    EXPECT_EQ(*verdict, static_cast<uint32_t>(XDP_PASS)) << bpf_program__name(prog);
    EXPECT_EQ(skel_->bss->hits_found, hits_before + 1) << bpf_program__name(prog);
    EXPECT_EQ(skel_->bss->last_action, action) << bpf_program__name(prog);
  }

  SkelPtr skel_;
};

TEST_F(LoadedTestProgsTest, EveryInnerTypeIsFoundThroughItsOuterMap) {
  const uint32_t key = 2;
  pd_test_value value{};

  auto array = make_map(BPF_MAP_TYPE_ARRAY, "t_array", 4, PD_TEST_INNER_MAX);
  ASSERT_TRUE(array.ok()) << array.error().message();
  value.action = 11;
  ASSERT_TRUE(update_elem(array->get(), &key, &value).ok());
  skel_->bss->key = key;
  expect_hit(skel_->maps.arr_array, skel_->progs.count_arr_array, 1, array->get(), 11);

  auto hash = make_map(BPF_MAP_TYPE_HASH, "t_hash", 4, PD_TEST_INNER_MAX);
  ASSERT_TRUE(hash.ok()) << hash.error().message();
  value.action = 12;
  ASSERT_TRUE(update_elem(hash->get(), &key, &value).ok());
  expect_hit(skel_->maps.hash_hash, skel_->progs.count_hash_hash, 77, hash->get(), 12);

  auto lpm = make_map(BPF_MAP_TYPE_LPM_TRIE, "t_lpm", sizeof(pd_lpm4_key), PD_TEST_INNER_MAX,
                      BPF_F_NO_PREALLOC);
  ASSERT_TRUE(lpm.ok()) << lpm.error().message();
  pd_lpm4_key prefix{};
  prefix.prefixlen = 8;
  prefix.addr[0] = 10;
  value.action = 13;
  ASSERT_TRUE(update_elem(lpm->get(), &prefix, &value).ok());
  const uint8_t addr[4] = {10, 1, 2, 3};  // inside 10.0.0.0/8
  std::memcpy(&skel_->bss->lpm_addr, addr, sizeof(addr));
  expect_hit(skel_->maps.arr_lpm, skel_->progs.count_arr_lpm, 2, lpm->get(), 13);

  auto pcpu = make_map(BPF_MAP_TYPE_PERCPU_ARRAY, "t_pcpu", 4, PD_TEST_INNER_MAX);
  ASSERT_TRUE(pcpu.ok()) << pcpu.error().message();
  std::vector<uint8_t> copies(syscall_value_size(BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(value)));
  value.action = 14;
  for (size_t off = 0; off < copies.size(); off += sizeof(value)) {
    std::memcpy(copies.data() + off, &value, sizeof(value));
  }
  ASSERT_TRUE(update_elem(pcpu->get(), &key, copies.data()).ok());
  expect_hit(skel_->maps.arr_pcpu, skel_->progs.count_arr_pcpu, 3, pcpu->get(), 14);
  // The run bumped exactly one CPU's copy.
  ASSERT_TRUE(lookup_elem(pcpu->get(), &key, copies.data()).ok());
  uint64_t hits = 0;
  for (size_t off = 0; off < copies.size(); off += sizeof(value)) {
    pd_test_value v{};
    std::memcpy(&v, copies.data() + off, sizeof(v));
    hits += v.hits;
  }
  EXPECT_EQ(hits, 1u);
}

TEST_F(LoadedTestProgsTest, G7_CheckGroupFollowsTheBankWord) {
  // Bank a holds generation 1 in both members; bank b holds generation 2 in grpx only.
  std::vector<UniqueFd> inners;
  auto add = [&](bpf_map* outer_map, uint32_t action) {
    auto inner = make_map(BPF_MAP_TYPE_ARRAY, "t_grp", 4, PD_TEST_INNER_MAX);
    ASSERT_TRUE(inner.ok()) << inner.error().message();
    const uint32_t zero = 0;
    pd_test_value value{};
    value.action = action;
    ASSERT_TRUE(update_elem(inner->get(), &zero, &value).ok());
    Status installed = install(bpf_map__fd(outer_map), 1, inner->get());
    ASSERT_TRUE(installed.ok()) << installed.error().message();
    inners.push_back(std::move(inner).value());
  };
  add(skel_->maps.grpx_a, 1);
  add(skel_->maps.grpy_a, 1);
  add(skel_->maps.grpx_b, 2);
  skel_->bss->slot = 1;
  const int prog_fd = bpf_program__fd(skel_->progs.check_group);
  const int bank_fd = bpf_map__fd(skel_->maps.grp_bank);
  const uint32_t zero = 0;

  // The bank word starts at 0 (bank a): a complete, consistent generation.
  auto run = test::run_xdp(prog_fd, 5);
  ASSERT_TRUE(run.ok()) << run.error().message();
  EXPECT_EQ(skel_->bss->group_ok, 5u);
  EXPECT_EQ(skel_->bss->misses, 0u);

  // Bank b lacks grpy: the program must look there, and miss, once the word says b.
  const uint32_t bank_b = 1;
  ASSERT_TRUE(update_elem(bank_fd, &zero, &bank_b).ok());
  run = test::run_xdp(prog_fd, 5);
  ASSERT_TRUE(run.ok()) << run.error().message();
  EXPECT_EQ(skel_->bss->misses, 5u);

  // Bank b with a different generation in grpy: the mix is counted as a mismatch.
  add(skel_->maps.grpy_b, 3);
  run = test::run_xdp(prog_fd, 5);
  ASSERT_TRUE(run.ok()) << run.error().message();
  EXPECT_EQ(skel_->bss->mismatches, 5u);
  EXPECT_EQ(skel_->bss->group_ok, 5u);
  EXPECT_EQ(skel_->bss->runs, 15u);
}

}  // namespace
}  // namespace policyd::kernel
