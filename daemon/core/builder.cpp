// Builder: create + fill inner maps. Counter fields are zeroed: programs own them.
#include "core/builder.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include "core/fd_budget.h"
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

FillBuffers pack_entries(const OuterMapConfig& map, const std::vector<Entry>& entries) {
  const InnerTemplate& inner = map.inner;
  FillBuffers buf;
  buf.value_stride = kernel::syscall_value_size(inner.type, inner.value_size);
  const size_t cpu_stride = kernel::cpu_value_stride(inner.type, inner.value_size);
  const size_t cpus = kernel::value_copies(inner.type);
  buf.keys.resize(entries.size() * inner.key_size);
  buf.values.assign(entries.size() * buf.value_stride, 0);
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

Result<InnerRef> build_inner(const OuterMapConfig& map, const SlotChange& change,
                             size_t fill_threads) {
  POLICYD_ASSIGN_OR_RETURN(kernel::UniqueFd fd, create_inner_map(map));
  FillBuffers buf = pack_entries(map, change.entries);
  Status filled =
      fill_parallel(fd.get(), buf, map.inner.key_size, change.entries.size(), fill_threads);
  if (!filled.ok()) return filled.error();
  POLICYD_ASSIGN_OR_RETURN(kernel::MapInfo info, kernel::map_info(fd.get()));
  auto inner = std::make_shared<InnerMap>();
  inner->fd = std::move(fd);
  inner->id = info.id;
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
                                         util::WorkerPool& pool) {
  POLICYD_TRY(validate_generation(gen, maps));
  // Every replaced slot gets a new inner map, and policyd keeps its fd: refuse the whole
  // generation before the first map is created if the fd limit does not allow them all.
  const size_t new_maps = static_cast<size_t>(std::count_if(
      gen.changes.begin(), gen.changes.end(), [](const SlotChange& c) { return !c.remove; }));
  POLICYD_ASSIGN_OR_RETURN(
      FdReservation fds,
      reserve_fds(new_maps,
                  gen.label.empty() ? "this generation" : "generation \"" + gen.label + "\""));
  auto t0 = std::chrono::steady_clock::now();

  BuiltGeneration built;
  built.label = gen.label;
  built.changes.resize(gen.changes.size());
  std::mutex mu;
  std::optional<Error> first_error;
  std::vector<std::function<void()>> tasks;
  for (size_t i = 0; i < gen.changes.size(); ++i) {
    const SlotChange& change = gen.changes[i];
    const OuterMapConfig& map = maps.at(change.map);
    built.changes[i].map = change.map;
    built.changes[i].slot = change.slot;
    built.entries += change.entries.size();
    if (change.remove) continue;
    tasks.emplace_back([&, i] {
      Result<InnerRef> inner = build_inner(map, change, pool.size());
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
    });
  }
  pool.run_all(std::move(tasks));
  // On error the maps already built are closed with `built`; nothing reached the data plane.
  if (first_error) return name_fd_exhaustion(*first_error);
  built.build_ms = util::ms_since(t0);
  return built;
}

}  // namespace policyd::core
