// InnerMapPool: pre-created empty inner maps per outer map, refilled by one background thread
// while no build runs.
#include "core/inner_pool.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "core/builder.h"
#include "core/fd_budget.h"
#include "kernel/map.h"

namespace policyd::core {
namespace {

// What create_inner_map() makes of a config: two configs that agree here make the same maps.
bool same_template(const OuterMapConfig& a, const OuterMapConfig& b) {
  return a.name == b.name && a.inner.type == b.inner.type && a.inner.key_size == b.inner.key_size &&
         a.inner.value_size == b.inner.value_size && a.inner.max_entries == b.inner.max_entries &&
         a.inner.flags == b.inner.flags;
}

// Rough kernel memory of one empty inner map: preallocated maps hold every element up front.
size_t map_bytes(const InnerTemplate& inner) {
  const bool prealloc =
      inner.type != BPF_MAP_TYPE_LPM_TRIE && (inner.flags & BPF_F_NO_PREALLOC) == 0;
  if (!prealloc) return 4096;
  const size_t value = (static_cast<size_t>(inner.value_size) + 7) / 8 * 8;
  const size_t per_entry = inner.key_size + value * kernel::value_copies(inner.type) + 64;
  return 4096 + per_entry * inner.max_entries;
}

}  // namespace

size_t pool_target(const OuterMapConfig& map, size_t max_per_map) {
  const size_t by_memory = kPoolBytesPerMap / std::max<size_t>(map_bytes(map.inner), 1);
  return std::min({max_per_map, static_cast<size_t>(map.slots), by_memory});
}

InnerMapPool::InnerMapPool(size_t max_per_map) : max_per_map_(max_per_map) {
  if (max_per_map_ > 0) refill_ = std::thread([this] { refill_loop(); });
}

InnerMapPool::~InnerMapPool() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (refill_.joinable()) refill_.join();
}

void InnerMapPool::configure(const MapConfigs& maps) {
  std::vector<PooledMap> closing;  // closed after the lock is released
  {
    std::lock_guard lock(mu_);
    ++epoch_;
    for (auto it = pools_.begin(); it != pools_.end();) {
      auto m = maps.find(it->first);
      if (m != maps.end() && same_template(it->second.config, m->second)) {
        ++it;
        continue;
      }
      stats_.dropped += it->second.maps.size();
      for (PooledMap& p : it->second.maps) closing.push_back(std::move(p));
      it = pools_.erase(it);
    }
    for (const auto& [name, cfg] : maps) {
      Pool& pool = pools_[name];
      pool.config = cfg;
      pool.target = pool_target(cfg, max_per_map_);
      while (pool.maps.size() > pool.target) {
        closing.push_back(std::move(pool.maps.back()));
        pool.maps.pop_back();
        ++stats_.dropped;
      }
    }
    stalled_ = false;
  }
  cv_.notify_all();
}

std::optional<PooledMap> InnerMapPool::take(const OuterMapConfig& map) {
  std::optional<PooledMap> out;
  {
    std::lock_guard lock(mu_);
    auto it = pools_.find(map.name);
    if (it != pools_.end() && same_template(it->second.config, map) && !it->second.maps.empty()) {
      out = std::move(it->second.maps.back());
      it->second.maps.pop_back();
      ++stats_.taken;
    } else {
      ++stats_.missed;
    }
    stalled_ = false;
  }
  cv_.notify_all();
  return out;
}

size_t InnerMapPool::release_all() {
  std::vector<PooledMap> closing;
  {
    std::lock_guard lock(mu_);
    for (auto& [name, pool] : pools_) {
      for (PooledMap& p : pool.maps) closing.push_back(std::move(p));
      pool.maps.clear();
    }
    stats_.dropped += closing.size();
    // Refilling right away would take the descriptors back: wait for the next take.
    stalled_ = true;
  }
  return closing.size();
}

void InnerMapPool::build_started() {
  std::lock_guard lock(mu_);
  ++builds_;
}

void InnerMapPool::build_finished() {
  {
    std::lock_guard lock(mu_);
    --builds_;
  }
  cv_.notify_all();
}

bool InnerMapPool::wait_full(int timeout_ms) {
  std::unique_lock lock(mu_);
  full_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                    [&] { return stalled_ || neediest() == nullptr; });
  return neediest() == nullptr;
}

PoolStats InnerMapPool::stats() const {
  std::lock_guard lock(mu_);
  PoolStats s = stats_;
  for (const auto& [name, pool] : pools_) s.pooled += pool.maps.size();
  return s;
}

std::vector<uint32_t> InnerMapPool::ids() const {
  std::lock_guard lock(mu_);
  std::vector<uint32_t> out;
  for (const auto& [name, pool] : pools_) {
    for (const PooledMap& p : pool.maps) out.push_back(p.id);
  }
  return out;
}

InnerMapPool::Pool* InnerMapPool::neediest() {
  Pool* best = nullptr;
  size_t need = 0;
  for (auto& [name, pool] : pools_) {
    if (pool.maps.size() < pool.target && pool.target - pool.maps.size() > need) {
      need = pool.target - pool.maps.size();
      best = &pool;
    }
  }
  return best;
}

void InnerMapPool::refill_loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stopping_ || (!stalled_ && builds_ == 0 && neediest()); });
    if (stopping_) return;
    const OuterMapConfig cfg = neediest()->config;
    const uint64_t epoch = epoch_;
    lock.unlock();

    // Only from spare descriptors, and without the /proc scan: builds come first.
    std::optional<PooledMap> made;
    std::optional<Error> failed;
    Result<FdReservation> fds = reserve_spare_fds(1, kPoolFdSpare);
    if (fds.ok()) {
      Result<kernel::UniqueFd> fd = create_inner_map(cfg);
      Result<kernel::MapInfo> info =
          fd.ok() ? kernel::map_info(fd->get()) : Result<kernel::MapInfo>(fd.error());
      if (info.ok()) {
        made = PooledMap{std::move(fd).value(), info->id};
      } else {
        failed = info.error();
      }
    }

    lock.lock();
    if (!made) {
      if (failed) spdlog::warn("inner-map pool for \"{}\": {}", cfg.name, failed->message());
      stalled_ = true;  // until the next take() or configure()
      full_cv_.notify_all();
      continue;
    }
    auto it = pools_.find(cfg.name);
    if (epoch != epoch_ || it == pools_.end() || !same_template(it->second.config, cfg) ||
        it->second.maps.size() >= it->second.target) {
      ++stats_.dropped;  // configured away meanwhile: never handed out
      lock.unlock();
      made.reset();
      lock.lock();
      continue;
    }
    it->second.maps.push_back(std::move(*made));
    ++stats_.created;
    if (!neediest()) full_cv_.notify_all();
  }
}

}  // namespace policyd::core
