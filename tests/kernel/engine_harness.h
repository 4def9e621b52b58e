// Shared setup of the engine kernel tests: engine configs that match the maps of
// test_progs.bpf.c, the skeleton loaded against the engine's outer maps, generations in the
// programs' value layout, and threads that run a program continuously while a test commits.
#pragma once

#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "core/engine.h"
#include "core/model.h"
#include "kernel/map.h"
#include "support/bpffs.h"
#include "support/prog_run.h"
#include "test_progs.h"
#include "test_progs_ptr.h"

// gtest prints parameters with this (found by ADL) instead of as raw bytes.
namespace policyd::core {
inline void PrintTo(BarrierMode mode, std::ostream* os) { *os << to_string(mode); }
}  // namespace policyd::core

namespace policyd::test {

inline const char* strategy_name(core::BarrierMode mode) {
  return mode == core::BarrierMode::kBatch ? "batch" : "concurrent";
}

inline core::Strategy strategy_of(core::BarrierMode mode) {
  return mode == core::BarrierMode::kBatch ? core::Strategy::kBatch : core::Strategy::kConcurrent;
}

// An outer map of test_progs.bpf.c as policyd's config declares it: value pd_test_value with
// its `hits` field as the drained counter.
inline core::OuterMapConfig test_map(const std::string& name, core::OuterKind kind,
                                     bpf_map_type inner_type, uint32_t inner_key_size,
                                     const std::string& group = "") {
  core::OuterMapConfig m;
  m.name = name;
  m.kind = kind;
  m.slots = group.empty() ? PD_TEST_SLOTS : PD_TEST_GROUP_SLOTS;
  m.slot_key_size = 4;
  m.group = group;
  m.inner.type = inner_type;
  m.inner.key_size = inner_key_size;
  m.inner.value_size = sizeof(pd_test_value);
  m.inner.max_entries = PD_TEST_INNER_MAX;
  m.inner.counters = {{"hits", static_cast<uint32_t>(offsetof(pd_test_value, hits)), 8}};
  return m;
}

// The five single (non-group) outer maps of test_progs.bpf.c.
inline std::vector<core::OuterMapConfig> plain_test_maps() {
  return {
      test_map("arr_hash", core::OuterKind::kArray, BPF_MAP_TYPE_HASH, 4),
      test_map("arr_array", core::OuterKind::kArray, BPF_MAP_TYPE_ARRAY, 4),
      test_map("arr_lpm", core::OuterKind::kArray, BPF_MAP_TYPE_LPM_TRIE, sizeof(pd_lpm4_key)),
      test_map("arr_pcpu", core::OuterKind::kArray, BPF_MAP_TYPE_PERCPU_ARRAY, 4),
      test_map("hash_hash", core::OuterKind::kHash, BPF_MAP_TYPE_HASH, 4),
  };
}

inline core::Bytes u32_bytes(uint32_t v) {
  core::Bytes b(sizeof(v));
  std::memcpy(b.data(), &v, sizeof(v));
  return b;
}

inline core::Bytes lpm4_key(uint32_t prefixlen, uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  pd_lpm4_key k{};
  k.prefixlen = prefixlen;
  k.addr[0] = a;
  k.addr[1] = b;
  k.addr[2] = c;
  k.addr[3] = d;
  core::Bytes out(sizeof(k));
  std::memcpy(out.data(), &k, sizeof(k));
  return out;
}

// `lpm_addr` as the program reads it: the four address bytes in memory order.
inline uint32_t lpm4_addr(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  const uint8_t bytes[4] = {a, b, c, d};
  uint32_t v = 0;
  std::memcpy(&v, bytes, sizeof(v));
  return v;
}

inline core::Bytes value_bytes(uint32_t action, uint64_t hits = 0) {
  pd_test_value v{};
  v.action = action;
  v.hits = hits;
  core::Bytes out(sizeof(v));
  std::memcpy(out.data(), &v, sizeof(v));
  return out;
}

inline pd_test_value decode_value(const core::Bytes& b) {
  pd_test_value v{};
  if (b.size() == sizeof(v)) std::memcpy(&v, b.data(), sizeof(v));
  return v;
}

inline core::SlotChange replace_slot(const std::string& map, uint32_t slot,
                                     std::vector<core::Entry> entries) {
  core::SlotChange c;
  c.map = map;
  c.slot = core::array_slot(slot);
  c.entries = std::move(entries);
  return c;
}

inline core::SlotChange remove_slot(const std::string& map, uint32_t slot) {
  core::SlotChange c;
  c.map = map;
  c.slot = core::array_slot(slot);
  c.remove = true;
  return c;
}

inline core::Generation generation(std::vector<core::SlotChange> changes, std::string label = "") {
  core::Generation g;
  g.label = std::move(label);
  g.changes = std::move(changes);
  return g;
}

// Opens the skeleton, hands each named map the fd policyd uses (bpf_map__reuse_fd dups it),
// lets libbpf create the others, and loads. Reports failures as gtest failures.
// Mounts a private bpffs into `bpffs` and opens an engine on it (pin_dir <bpffs>/pd) into
// `engine`. Call through ASSERT_NO_FATAL_FAILURE.
inline void open_test_engine(core::EngineConfig config, std::optional<PrivateBpffs>& bpffs,
                             std::unique_ptr<core::Engine>& engine) {
  auto fs = PrivateBpffs::create();
  ASSERT_TRUE(fs.ok()) << fs.error().message();
  bpffs.emplace(std::move(fs).value());
  config.pin_dir = bpffs->join("pd");
  auto opened = core::Engine::open(std::move(config));
  ASSERT_TRUE(opened.ok()) << opened.error().message();
  engine = std::move(opened).value();
}

struct ReusedMap {
  std::string name;  // the map's name in test_progs.bpf.c
  int fd;
};
inline SkelPtr load_skeleton(const std::vector<ReusedMap>& reuse) {
  SkelPtr skel(test_progs__open());
  EXPECT_NE(skel, nullptr) << "test_progs__open: " << std::strerror(errno);
  if (!skel) return nullptr;
  for (const ReusedMap& r : reuse) {
    bpf_map* map = bpf_object__find_map_by_name(skel->obj, r.name.c_str());
    EXPECT_NE(map, nullptr) << "test_progs.bpf.c has no map " << r.name;
    if (map == nullptr) return nullptr;
    int rc = bpf_map__reuse_fd(map, r.fd);
    EXPECT_EQ(rc, 0) << "bpf_map__reuse_fd(" << r.name << "): " << std::strerror(-rc);
    if (rc != 0) return nullptr;
  }
  int rc = test_progs__load(skel.get());
  EXPECT_EQ(rc, 0) << "test_progs__load: " << std::strerror(-rc);
  if (rc != 0) return nullptr;
  return skel;
}

// A .bss counter the programs update atomically, read while they may be running.
inline uint64_t load_counter(const volatile uint64_t& v) {
  return __atomic_load_n(const_cast<const uint64_t*>(&v), __ATOMIC_SEQ_CST);
}

// Threads that call run_xdp(prog, repeat) back to back until stopped, each counting the
// calls it completed. A call's runs all happen between its start and its return, which is
// what lets tests place whole calls inside a window (wait_for_full_call()).
class ProgramLoad {
 public:
  ProgramLoad(int prog_fd, size_t threads, uint32_t repeat) : repeat_(repeat), calls_(threads) {
    for (auto& c : calls_) c.store(0);
    for (size_t t = 0; t < threads; ++t) {
      threads_.emplace_back([this, prog_fd, t] {
        while (!stop_.load(std::memory_order_relaxed)) {
          Result<uint32_t> r = run_xdp(prog_fd, repeat_);
          if (!r.ok()) {
            std::lock_guard lock(mu_);
            if (!error_) error_ = r.error().message();
            return;
          }
          calls_[t].fetch_add(1);
        }
      });
    }
  }
  ~ProgramLoad() { stop(); }
  ProgramLoad(const ProgramLoad&) = delete;
  ProgramLoad& operator=(const ProgramLoad&) = delete;

  void stop() {
    stop_.store(true);
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

  // Program runs in completed calls (exact once stopped).
  [[nodiscard]] uint64_t runs() const {
    uint64_t calls = 0;
    for (const auto& c : calls_) calls += c.load();
    return calls * repeat_;
  }

  // Blocks until one thread has completed a whole run_xdp call that started after this was
  // called, i.e. `repeat` runs happened entirely inside [call, return]. False after `timeout`
  // or when a thread failed.
  [[nodiscard]] bool wait_for_full_call(
      std::chrono::milliseconds timeout = std::chrono::seconds(10)) const {
    std::vector<uint64_t> start;
    for (const auto& c : calls_) start.push_back(c.load());
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      // Call start+1 may have begun before we looked; call start+2 began after start+1
      // returned, hence after we looked.
      for (size_t t = 0; t < calls_.size(); ++t) {
        if (calls_[t].load() >= start[t] + 2) return true;
      }
      if (!error().empty() || std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::yield();
    }
  }

  [[nodiscard]] std::string error() const {
    std::lock_guard lock(mu_);
    return error_.value_or("");
  }

 private:
  uint32_t repeat_;
  std::vector<std::atomic<uint64_t>> calls_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::optional<std::string> error_;
};

// CPUs this process may run on, in increasing order.
inline std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

// Runs `prog` `repeat` times on a thread bound to `cpu` (BPF_PROG_TEST_RUN runs on the
// caller's CPU, so per-CPU values land in that CPU's copy).
inline Result<uint32_t> run_xdp_on_cpu(int prog_fd, uint32_t repeat, int cpu) {
  Result<uint32_t> result = Error{ErrorCode::kInternal, 0, "not run"};
  std::thread t([&] {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) {
      result = sys_error(errno, "bind thread to CPU " + std::to_string(cpu));
      return;
    }
    result = run_xdp(prog_fd, repeat);
  });
  t.join();
  return result;
}

}  // namespace policyd::test
