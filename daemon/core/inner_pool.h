// InnerMapPool: empty inner maps created ahead of time, per outer map, so that a push's build
// only fills them: creating a map is most of a generation's cost once the barrier is cheap
// (DESIGN.md, Commit pipeline). A background thread tops the pools up while no build runs.
//
// Freshness: every pooled map was created empty by the pool and is handed out once; a map
// that was in the data plane (installed, replaced, drained) never comes back here.
// Staleness: a pool belongs to one inner template. configure() drops the maps of outer maps
// that are gone or whose template changed, and take() checks the template again.
// Bounds (DESIGN.md, Scale): at most kMaxPooledPerMap maps per outer map, fewer when its inner
// maps are large (about kPoolBytesPerMap of map memory each), never more than its slots; the
// refill opens a descriptor only while the fd budget keeps kPoolFdSpare (or a quarter of the
// soft limit) free besides, and a build that does not fit the budget gets the pooled fds back
// first (release_all()). Pooled fds are UniqueFds, so the budget counts them like any other.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/model.h"
#include "core/validate.h"
#include "kernel/unique_fd.h"

namespace policyd::core {

inline constexpr size_t kMaxPooledPerMap = 64;
inline constexpr size_t kPoolBytesPerMap = 16u << 20;
inline constexpr size_t kPoolFdSpare = 256;

// A fresh, empty inner map and its kernel id.
struct PooledMap {
  kernel::UniqueFd fd;
  uint32_t id = 0;
};

struct PoolStats {
  uint64_t pooled = 0;   // maps in the pools now
  uint64_t created = 0;  // maps the refill created
  uint64_t taken = 0;    // handed to builds
  uint64_t missed = 0;   // builds that found the pool empty and created the map themselves
  uint64_t dropped = 0;  // closed unused: template changed, map removed, fd pressure
};

// How many maps the pool keeps for `map` (0: none, its inner maps are too large to pre-create).
[[nodiscard]] size_t pool_target(const OuterMapConfig& map, size_t max_per_map);

class InnerMapPool {
 public:
  // max_per_map 0: the pool stays empty (take() always misses).
  explicit InnerMapPool(size_t max_per_map);
  ~InnerMapPool();
  InnerMapPool(const InnerMapPool&) = delete;
  InnerMapPool& operator=(const InnerMapPool&) = delete;

  // The outer maps to serve. Pools of maps not in `maps`, or whose inner template differs from
  // the one they were filled for, are closed.
  void configure(const MapConfigs& maps);
  // A fresh map for `map` when one is pooled for exactly this template; counts a miss otherwise.
  [[nodiscard]] std::optional<PooledMap> take(const OuterMapConfig& map);
  // Closes every pooled map (a build needs the descriptors); returns how many.
  size_t release_all();

  // Builds in flight: the refill waits until none runs, so that it never competes with one.
  void build_started();
  void build_finished();

  // Blocks until every pool is at its target or the refill cannot go on (fd budget, a create
  // that failed), at most `timeout_ms`. Returns true when every pool is full. Tests and start-up.
  bool wait_full(int timeout_ms);
  [[nodiscard]] PoolStats stats() const;
  // Ids of the pooled maps (engine-owned; tests compare them with the kernel's list).
  [[nodiscard]] std::vector<uint32_t> ids() const;

 private:
  struct Pool {
    OuterMapConfig config;  // the template the maps were created for
    size_t target = 0;
    std::vector<PooledMap> maps;
  };
  void refill_loop();
  // The pool most in need of a map, or null.
  Pool* neediest();

  const size_t max_per_map_;
  mutable std::mutex mu_;
  std::condition_variable cv_;       // wakes the refill
  std::condition_variable full_cv_;  // wakes wait_full()
  std::map<std::string, Pool> pools_;
  uint64_t epoch_ = 0;  // bumped by configure(): a map created for an older one is dropped
  size_t builds_ = 0;
  bool stalled_ = false;  // the last refill attempt failed: wait for a take or configure
  bool stopping_ = false;
  PoolStats stats_;
  std::thread refill_;
};

}  // namespace policyd::core
