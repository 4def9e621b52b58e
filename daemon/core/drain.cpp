// Drain implementation over kernel::dump.
#include "core/drain.h"

#include <cstring>

#include "kernel/map.h"

namespace policyd::core {
namespace {

size_t cpu_stride(const InnerTemplate& inner) {
  return kernel::cpu_value_stride(inner.type, inner.value_size);
}

size_t cpu_count(const InnerTemplate& inner) { return kernel::value_copies(inner.type); }

uint64_t read_counter(const uint8_t* p, uint32_t size) {
  if (size == 4) {
    uint32_t v = 0;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  uint64_t v = 0;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Adds one element's counters (all CPUs) into `totals`.
void add_counters(const InnerTemplate& inner, const uint8_t* value,
                  std::map<std::string, uint64_t>& totals) {
  const size_t stride = cpu_stride(inner);
  const size_t cpus = cpu_count(inner);
  for (const CounterField& c : inner.counters) {
    uint64_t sum = 0;
    for (size_t cpu = 0; cpu < cpus; ++cpu)
      sum += read_counter(value + cpu * stride + c.offset, c.size);
    totals[c.name] += sum;
  }
}

DrainRecord record_of(const InnerMap& inner, const OuterMapConfig& map, DrainMode mode) {
  DrainRecord rec;
  rec.map = map.name;
  rec.slot = inner.slot;
  rec.map_id = inner.id;
  rec.installed_by = inner.installed_by;
  rec.mode = mode;
  if (mode == DrainMode::kEntries) {
    for (const CounterField& c : map.inner.counters) rec.counters[c.name] = 0;
  }
  return rec;
}

Error read_error(const Error& e, const InnerMap& inner, const OuterMapConfig& map) {
  return e.wrap("read map \"" + map.name + "\" slot " + slot_to_string(map.kind, inner.slot) +
                " (id " + std::to_string(inner.id) + ")");
}

}  // namespace

Result<DrainRecord> drain_inner(const InnerMap& inner, const OuterMapConfig& map,
                                uint64_t replaced_by) {
  DrainRecord rec = record_of(inner, map, map.drain);
  rec.replaced_by = replaced_by;
  if (map.drain == DrainMode::kNone) return rec;
  POLICYD_ASSIGN_OR_RETURN(kernel::MapInfo info, kernel::map_info(inner.fd.get()));
  Status st = kernel::dump(inner.fd.get(), info, [&](const uint8_t*, const uint8_t* value) {
    add_counters(map.inner, value, rec.counters);
    ++rec.entry_count;
  });
  if (!st.ok()) return read_error(st.error(), inner, map);
  return rec;
}

Result<DrainRecord> read_inner(const InnerMap& inner, const OuterMapConfig& map) {
  DrainRecord rec = record_of(inner, map, DrainMode::kEntries);
  POLICYD_ASSIGN_OR_RETURN(kernel::MapInfo info, kernel::map_info(inner.fd.get()));
  const size_t stride = cpu_stride(map.inner);
  const size_t cpus = cpu_count(map.inner);
  Status st = kernel::dump(inner.fd.get(), info, [&](const uint8_t* key, const uint8_t* value) {
    DrainedEntry e;
    e.key.assign(key, key + map.inner.key_size);
    e.values.reserve(cpus);
    for (size_t cpu = 0; cpu < cpus; ++cpu) {
      const uint8_t* v = value + cpu * stride;
      e.values.emplace_back(v, v + map.inner.value_size);
    }
    add_counters(map.inner, value, rec.counters);
    rec.entries.push_back(std::move(e));
  });
  if (!st.ok()) return read_error(st.error(), inner, map);
  rec.entry_count = rec.entries.size();
  return rec;
}

Result<std::map<std::string, uint64_t>> read_counter_totals(int fd, const OuterMapConfig& map) {
  std::map<std::string, uint64_t> totals;
  for (const CounterField& c : map.inner.counters) totals[c.name] = 0;
  if (map.inner.counters.empty()) return totals;
  POLICYD_ASSIGN_OR_RETURN(kernel::MapInfo info, kernel::map_info(fd));
  Status st = kernel::dump(fd, info, [&](const uint8_t*, const uint8_t* value) {
    add_counters(map.inner, value, totals);
  });
  if (!st.ok()) return st.error().wrap("read counters of map \"" + map.name + "\"");
  return totals;
}

}  // namespace policyd::core
