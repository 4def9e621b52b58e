// Builder: create + fill inner maps. Counter fields are zeroed: programs own them.
#include "core/builder.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include "core/fd_budget.h"
#include "core/inner_pool.h"
#include "kernel/map.h"
#include "util/clock.h"

namespace policyd::core {
namespace {

// Lays out keys and values contiguously as the batch syscall wants them.
struct FillBuffers {
  Bytes keys;
  Bytes values;
  size_t value_stride = 0;
};

// Reuses the calling thread's buffers: building a slot allocates nothing once they have grown.
FillBuffers& thread_buffers() {
  thread_local FillBuffers buf;
  return buf;
}

FillBuffers& pack_entries(const OuterMapConfig& map, const std::vector<Entry>& entries) {
  FillBuffers& buf = thread_buffers();
  const InnerTemplate& inner = map.inner;
  buf.value_stride = kernel::syscall_value_size(inner.type, inner.value_size);
  const size_t cpu_stride = kernel::cpu_value_stride(inner.type, inner.value_size);
  const size_t cpus = kernel::value_copies(inner.type);
  buf.keys.resize(entries.size() * inner.key_size);
  buf.values.resize(entries.size() * buf.value_stride);
  if (cpu_stride != inner.value_size) std::fill(buf.values.begin(), buf.values.end(), 0);
  for (size_t i = 0; i < entries.size(); ++i) {
    std::memcpy(buf.keys.data() + i * inner.key_size, entries[i].key.data(), inner.key_size);
    // Per-CPU maps: the same value on every CPU; counters start at zero everywhere.
    for (size_t cpu = 0; cpu < cpus; ++cpu) {
      uint8_t* v = buf.values.data() + i * buf.value_stride + cpu * cpu_stride;
      std::memcpy(v, entries[i].value.data(), inner.value_size);
      for (const CounterField& c : inner.counters) std::memset(v + c.offset, 0, c.size);
    }
  }
  return buf;
}

// A thread keeps at most this much packing buffer between builds.
constexpr size_t kKeptBufferBytes = 1 << 20;

void release_large_buffers() {
  FillBuffers& buf = thread_buffers();
  if (buf.keys.capacity() + buf.values.capacity() <= kKeptBufferBytes) return;
  buf.keys = Bytes();
  buf.values = Bytes();
}

// Below this many entries one thread fills a map faster than starting more would.
constexpr size_t kParallelFillMin = 128 * 1024;

// Fills with `threads` threads over disjoint ranges: the kernel locks hash maps per bucket, so
// large fills scale with threads.
Status fill_parallel(int fd, const FillBuffers& buf, size_t key_size, size_t count,
                     size_t threads) {
  if (count < kParallelFillMin || threads < 2) {
    return kernel::fill(fd, buf.keys.data(), key_size, buf.values.data(), buf.value_stride, count);
  }
  std::vector<Status> results(threads);
  std::vector<std::thread> workers;
  const size_t per = (count + threads - 1) / threads;
  auto fill_range = [&](size_t t) {
    const size_t begin = t * per;
    const size_t n = std::min(per, count - begin);
    results[t] = kernel::fill(fd, buf.keys.data() + begin * key_size, key_size,
                              buf.values.data() + begin * buf.value_stride, buf.value_stride, n);
    if (!results[t].ok()) {
      results[t] = results[t].error().wrap("range starting at entry " + std::to_string(begin));
    }
  };
  for (size_t t = 1; t < threads; ++t) workers.emplace_back(fill_range, t);
  fill_range(0);
  for (std::thread& w : workers) w.join();
  for (Status& st : results) {
    if (!st.ok()) return st;
  }
  return {};
}

// Fills `fresh` (a pooled map), or a map created here when there is none.
Result<InnerRef> build_inner(const OuterMapConfig& map, const SlotChange& change,
                             std::optional<PooledMap> fresh, size_t fill_threads) {
  if (!fresh) {
    POLICYD_ASSIGN_OR_RETURN(kernel::UniqueFd fd, create_inner_map(map));
    POLICYD_ASSIGN_OR_RETURN(kernel::MapInfo info, kernel::map_info(fd.get()));
    fresh = PooledMap{std::move(fd), info.id};
  }
  if (!change.entries.empty()) {
    const FillBuffers& buf = pack_entries(map, change.entries);
    Status filled = fill_parallel(fresh->fd.get(), buf, map.inner.key_size, change.entries.size(),
                                  fill_threads);
    if (!filled.ok()) return filled.error();
    release_large_buffers();
  }
  auto inner = std::make_shared<InnerMap>();
  inner->fd = std::move(fresh->fd);
  inner->id = fresh->id;
  inner->map = map.name;
  inner->slot = change.slot;
  return inner;
}

}  // namespace

Result<kernel::UniqueFd> create_inner_map(const OuterMapConfig& map) {
  kernel::MapSpec spec;
  spec.type = map.inner.type;
  spec.name = map.name;
  spec.key_size = map.inner.key_size;
  spec.value_size = map.inner.value_size;
  spec.max_entries = map.inner.max_entries;
  spec.flags = map.inner.flags;
  if (spec.type == BPF_MAP_TYPE_LPM_TRIE) spec.flags |= BPF_F_NO_PREALLOC;
  return kernel::create_map(spec);
}

Result<BuiltGeneration> build_generation(const Generation& gen, const MapConfigs& maps,
                                         util::WorkerPool& pool, InnerMapPool* inner_pool) {
  POLICYD_TRY(validate_generation(gen, maps));
  auto t0 = std::chrono::steady_clock::now();
  // The pool's refill waits while a build runs: it must not compete with this one.
  struct BuildScope {
    InnerMapPool* p;
    explicit BuildScope(InnerMapPool* pool) : p(pool) {
      if (p) p->build_started();
    }
    ~BuildScope() {
      if (p) p->build_finished();
    }
  } scope(inner_pool);

  // Fresh maps from the pool first; only the rest need new descriptors.
  std::vector<std::optional<PooledMap>> fresh(gen.changes.size());
  size_t new_maps = 0;
  size_t entries = 0;
  for (size_t i = 0; i < gen.changes.size(); ++i) {
    const SlotChange& change = gen.changes[i];
    entries += change.entries.size();
    if (change.remove) continue;
    if (inner_pool) fresh[i] = inner_pool->take(maps.at(change.map));
    if (!fresh[i]) ++new_maps;
  }
  // Every replaced slot gets a new inner map, and policyd keeps its fd: refuse the whole
  // generation before the first map is created if the fd limit does not allow them all.
  // Pooled maps hold descriptors that can be given back for it.
  const std::string what =
      gen.label.empty() ? "this generation" : "generation \"" + gen.label + "\"";
  Result<FdReservation> fds = reserve_fds(new_maps, what);
  if (!fds.ok() && inner_pool && inner_pool->release_all() > 0) fds = reserve_fds(new_maps, what);
  if (!fds.ok()) return fds.error();

  BuiltGeneration built;
  built.label = gen.label;
  built.entries = entries;
  built.changes.resize(gen.changes.size());
  std::mutex mu;
  std::optional<Error> first_error;
  auto build_one = [&](size_t i, size_t fill_threads) {
    const SlotChange& change = gen.changes[i];
    const OuterMapConfig& map = maps.at(change.map);
    Result<InnerRef> inner = build_inner(map, change, std::move(fresh[i]), fill_threads);
    if (inner.ok()) {
      built.changes[i].inner = std::move(inner).value();
      return;
    }
    std::lock_guard lock(mu);
    if (!first_error) {
      first_error = std::move(inner).error().wrap("build changes[" + std::to_string(i) +
                                                  "] (map \"" + map.name + "\" slot " +
                                                  slot_to_string(map.kind, change.slot) + ")");
    }
  };
  std::vector<size_t> todo;
  for (size_t i = 0; i < gen.changes.size(); ++i) {
    built.changes[i].map = gen.changes[i].map;
    built.changes[i].slot = gen.changes[i].slot;
    if (!gen.changes[i].remove) todo.push_back(i);
  }
  if (entries < kParallelBuildMin || pool.size() < 2 || todo.size() < 2) {
    // Small: this thread does it all, no hand-off.
    for (size_t i : todo) build_one(i, pool.size());
  } else if (todo.size() < pool.size()) {
    // Few large slots: one task per slot, each fills with the pool's width.
    std::vector<std::function<void()>> tasks;
    for (size_t i : todo) tasks.emplace_back([&, i] { build_one(i, pool.size()); });
    pool.run_all(std::move(tasks));
  } else {
    // Many slots: one task per worker over contiguous runs of about equal entry counts.
    const size_t workers = pool.size();
    const size_t per_task = (entries + workers - 1) / workers;
    std::vector<std::function<void()>> tasks;
    size_t begin = 0;
    while (begin < todo.size()) {
      size_t end = begin;
      size_t sum = 0;
      while (end < todo.size() && (sum < per_task || end == begin)) {
        sum += gen.changes[todo[end]].entries.size() + 1;
        ++end;
      }
      tasks.emplace_back([&, begin, end] {
        for (size_t k = begin; k < end; ++k) build_one(todo[k], 1);
      });
      begin = end;
    }
    pool.run_all(std::move(tasks));
  }
  // On error the maps already built are closed with `built`; nothing reached the data plane.
  if (first_error) return name_fd_exhaustion(*first_error);
  built.build_ms = util::ms_since(t0);
  return built;
}

}  // namespace policyd::core
