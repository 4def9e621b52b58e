// Engine: outer-map ownership, the commit round with undo, atomic-group bank flips, drain.
#include "core/engine.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <set>

#include "core/drain.h"
#include "core/fd_budget.h"
#include "core/layout_check.h"
#include "kernel/map.h"
#include "util/clock.h"
#include "util/fs.h"
#include "util/hex.h"

namespace policyd::core {

struct Engine::Group {
  std::string name;
  kernel::UniqueFd bank_fd;
  uint32_t bank_id = 0;
  int active = 0;  // the bank programs read: 0 = <map>_a, 1 = <map>_b
  std::vector<Outer*> members;
};

struct Engine::Outer {
  const OuterMapConfig* config = nullptr;  // points into configs_
  Group* group = nullptr;                  // null unless an atomic-group member
  kernel::UniqueFd fd[2];                  // bank copies for group members, fd[0] otherwise
  uint32_t id[2] = {0, 0};
  std::map<Bytes, InnerRef> slots[2];  // what policyd installed in each copy
  [[nodiscard]] int active() const { return group ? group->active : 0; }
  [[nodiscard]] int banks() const { return group ? 2 : 1; }
};

// Everything one commit decided before touching the kernel.
struct Engine::Plan {
  struct Record {
    Outer* outer = nullptr;
    int bank = 0;
    Bytes slot;
    InnerRef next;  // null: delete
    InnerRef prev;  // null: slot was empty
    uint64_t generation = 0;
  };
  std::vector<uint64_t> ids;
  std::vector<OuterWrite> writes;
  std::vector<Record> records;  // parallel to writes
  std::vector<Group*> groups;   // groups that flip at this commit
  // Group members: the target contents of the bank that becomes active, and which generation
  // changed each slot.
  std::map<Outer*, std::map<Bytes, InnerRef>> group_target;
  std::map<Outer*, std::map<Bytes, uint64_t>> group_changed_by;
};

namespace {

InnerRef find_slot(const std::map<Bytes, InnerRef>& slots, const Bytes& slot) {
  auto it = slots.find(slot);
  return it == slots.end() ? nullptr : it->second;
}

void set_slot(std::map<Bytes, InnerRef>& slots, const Bytes& slot, InnerRef inner) {
  if (inner)
    slots[slot] = std::move(inner);
  else
    slots.erase(slot);
}

// An exclusive flock on the pin_dir directory itself (bpffs holds only pins, no lock file),
// taken before any map is opened: a second daemon on the same pin_dir, whatever its state_dir,
// would adopt and commit into the first one's maps.
Result<kernel::UniqueFd> lock_pin_dir(const std::string& pin_dir) {
  kernel::UniqueFd fd(::open(pin_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return sys_error(errno, "open pin_dir " + pin_dir);
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return failed_precondition("pin_dir " + pin_dir +
                                 " is in use by another policyd (its flock is held); one daemon "
                                 "owns a pin_dir, whatever its state_dir");
    }
    return sys_error(errno, "lock pin_dir " + pin_dir);
  }
  return fd;
}

// pin_dir must be on bpffs: otherwise mkdir fails with a bare ENOENT (no /sys/fs/bpf) or the
// pins fail later. Checks the nearest existing ancestor, since pin_dir may not exist yet.
Status check_on_bpffs(const std::string& pin_dir) {
  std::string path = pin_dir;
  struct statfs fs {};
  while (::statfs(path.c_str(), &fs) != 0) {
    if (errno != ENOENT || path.empty() || path == "/") {
      return sys_error(errno, "statfs " + path + " (for pin_dir " + pin_dir + ")");
    }
    const size_t slash = path.find_last_of('/');
    path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
  }
  if (static_cast<uint32_t>(fs.f_type) == BPF_FS_MAGIC) return {};
  return failed_precondition(
      "pin_dir " + pin_dir + " is not on a bpf filesystem (" + path +
      " is not on bpffs): mount one with `mount -t bpf bpf /sys/fs/bpf`, or under systemd " +
      "order the unit after it with RequiresMountsFor=/sys/fs/bpf");
}

// Applies the writes marked `first` in one round, then (if they all succeeded) the others in a
// second round; results in input order. A hash outer map holds at most max_entries slots and
// the calls of one round reach the kernel in any order, so deletes that make room for new keys
// must be done before those keys are inserted.
RoundResult apply_phased(SlotWriter& writer, const std::vector<OuterWrite>& writes,
                         const std::vector<bool>& first) {
  std::vector<OuterWrite> phase[2];
  std::vector<size_t> index[2];
  for (size_t i = 0; i < writes.size(); ++i) {
    const int p = first[i] ? 0 : 1;
    phase[p].push_back(writes[i]);
    index[p].push_back(i);
  }
  RoundResult result;
  result.applied.assign(writes.size(), false);
  for (int p = 0; p < 2; ++p) {
    if (phase[p].empty()) continue;
    RoundResult r = writer.apply(phase[p]);
    for (size_t k = 0; k < index[p].size(); ++k) result.applied[index[p][k]] = r.applied[k];
    if (r.error) {
      result.error = std::move(r.error);
      break;
    }
  }
  return result;
}

}  // namespace

Strategy choose_strategy(BarrierMode mode, const kernel::KernelFacts& facts) {
  switch (mode) {
    case BarrierMode::kBatch:
      return Strategy::kBatch;
    case BarrierMode::kConcurrent:
      return Strategy::kConcurrent;
    case BarrierMode::kAuto:
      break;
  }
  return facts.outer_batch_update && !facts.batch_waits_per_element ? Strategy::kBatch
                                                                    : Strategy::kConcurrent;
}

Engine::Engine(EngineConfig config, kernel::KernelFacts facts)
    : config_(std::move(config)),
      facts_(std::move(facts)),
      pins_(config_.pin_dir),
      build_pool_(config_.build_threads),
      barrier_pool_(config_.barrier_threads),
      inner_pool_(config_.inner_pool > 0 ? std::make_unique<InnerMapPool>(config_.inner_pool)
                                         : nullptr) {}

Engine::~Engine() = default;

Result<std::unique_ptr<Engine>> Engine::open(EngineConfig config) {
  std::set<std::string> names;
  for (const OuterMapConfig& m : config.maps) {
    POLICYD_TRY(validate_map_config(m));
    if (!names.insert(m.name).second) {
      return invalid_argument("map \"" + m.name + "\" is declared twice");
    }
  }
  kernel::KernelFacts facts = kernel::kernel_release();
  if (config.barrier == BarrierMode::kAuto) {
    POLICYD_ASSIGN_OR_RETURN(facts, kernel::probe_kernel());
  }
  const Strategy strategy = choose_strategy(config.barrier, facts);
  std::unique_ptr<Engine> engine(new Engine(std::move(config), std::move(facts)));
  POLICYD_ASSIGN_OR_RETURN(engine->writer_, SlotWriter::create(strategy, engine->barrier_pool_));
  POLICYD_TRY(engine->open_maps());
  if (engine->config_.barrier == BarrierMode::kAuto) {
    spdlog::info("barrier strategy: {} (auto; {})", to_string(strategy), engine->facts_.describe());
  } else {
    spdlog::info("barrier strategy: {} (set by config; kernel {}, not probed)", to_string(strategy),
                 engine->facts_.release);
  }
  return engine;
}

Status Engine::open_maps() {
  POLICYD_TRY(check_on_bpffs(pins_.dir()));
  POLICYD_TRY(util::make_dirs(pins_.dir()));
  POLICYD_ASSIGN_OR_RETURN(pin_dir_lock_, lock_pin_dir(pins_.dir()));
  if (config_.drain_pins) POLICYD_TRY(util::make_dirs(pins_.drain_dir()));
  return add_maps(config_.maps);
}

Status Engine::add_maps(const std::vector<OuterMapConfig>& maps) {
  for (const OuterMapConfig& m : maps) {
    POLICYD_TRY(validate_map_config(m));
    if (configs_.count(m.name)) return invalid_argument("map \"" + m.name + "\" exists already");
  }
  {
    // Against the maps held already too; Engine::open gets here (open_maps) before any map.
    std::vector<const OuterMapConfig*> all;
    for (const auto& [name, m] : configs_) all.push_back(&m);
    for (const OuterMapConfig& m : maps) all.push_back(&m);
    POLICYD_TRY(validate_pin_names(all));
  }
  // All or nothing: a map that cannot be created or adopted undoes the maps this call added,
  // and unpins only what it pinned (an adopted pin holds a data plane and stays).
  std::set<std::string> pinned_before;
  for (const OuterMapConfig& m : maps) {
    for (const std::string& path : pin_paths_of(m)) {
      if (::access(path.c_str(), F_OK) == 0) pinned_before.insert(path);
    }
  }
  std::lock_guard lock(read_mu_);
  std::vector<std::string> added;
  for (const OuterMapConfig& m : maps) {
    added.push_back(m.name);
    if (Status st = add_map(m); !st.ok()) {
      forget_added(added, pinned_before);
      return st;
    }
  }
  for (const OuterMapConfig& m : maps) {
    std::set<std::string>& before = pinned_before_add_[m.name];
    for (const std::string& path : pin_paths_of(m)) {
      if (pinned_before.count(path)) before.insert(path);
    }
  }
  if (inner_pool_) inner_pool_->configure(configs_);
  return {};
}

void Engine::forget_added_maps(const std::vector<std::string>& maps) {
  std::set<std::string> pinned_before;
  for (const std::string& name : maps) {
    auto it = pinned_before_add_.find(name);
    if (it != pinned_before_add_.end()) pinned_before.insert(it->second.begin(), it->second.end());
  }
  {
    std::lock_guard lock(read_mu_);
    forget_added(maps, pinned_before);
  }
  for (const std::string& name : maps) pinned_before_add_.erase(name);
  if (inner_pool_) inner_pool_->configure(configs_);
}

Status Engine::add_map(const OuterMapConfig& m) {
  // std::map never moves its nodes: Outer::config stays valid as maps are added.
  const OuterMapConfig& cfg = configs_.emplace(m.name, m).first->second;
  auto outer = std::make_unique<Outer>();
  outer->config = &cfg;
  Group* new_group = nullptr;
  if (!cfg.group.empty()) {
    auto& group = groups_[cfg.group];
    if (!group) {
      group = std::make_unique<Group>();
      group->name = cfg.group;
      new_group = group.get();
    }
    outer->group = group.get();
    group->members.push_back(outer.get());
  }
  Outer& o = *outers_.emplace(m.name, std::move(outer)).first->second;
  if (o.group) {
    for (int bank = 0; bank < 2; ++bank) {
      POLICYD_TRY(
          open_outer(o, bank, PinPaths::member_name(m.name, bank), pins_.member(m.name, bank)));
    }
    // The same inner map may sit in both banks of a group member: share one InnerRef.
    for (auto& [slot, inner] : o.slots[1]) {
      InnerRef other = find_slot(o.slots[0], slot);
      if (other && other->id == inner->id) inner = other;
    }
  } else {
    POLICYD_TRY(open_outer(o, 0, m.name, pins_.outer(m.name)));
  }
  if (new_group) POLICYD_TRY(open_group(*new_group));
  return {};
}

std::vector<std::string> Engine::pin_paths_of(const OuterMapConfig& m) const {
  if (m.group.empty()) return {pins_.outer(m.name)};
  return {pins_.member(m.name, 0), pins_.member(m.name, 1), pins_.bank(m.group)};
}

void Engine::forget_added(const std::vector<std::string>& names,
                          const std::set<std::string>& pinned_before) {
  for (auto name = names.rbegin(); name != names.rend(); ++name) {
    auto it = outers_.find(*name);
    if (it == outers_.end()) continue;
    if (Group* g = it->second->group) {
      g->members.erase(std::remove(g->members.begin(), g->members.end(), it->second.get()),
                       g->members.end());
      if (g->members.empty()) groups_.erase(g->name);
    }
    for (const std::string& path : pin_paths_of(configs_.at(*name))) {
      if (pinned_before.count(path) || ::access(path.c_str(), F_OK) != 0) continue;
      // A bank word another member of the group still uses stays.
      if (path == pins_.bank(configs_.at(*name).group) && groups_.count(configs_.at(*name).group)) {
        continue;
      }
      if (Status st = kernel::unpin(path); !st.ok()) {
        spdlog::warn("undo of a failed map creation: {}", st.error().message());
      }
    }
    outers_.erase(it);
    configs_.erase(*name);
  }
}

Status Engine::remove_maps(const std::vector<std::string>& maps) {
  for (const std::string& name : maps) {
    POLICYD_ASSIGN_OR_RETURN(const Outer* o, find(name));
    if (!o->slots[o->active()].empty()) {
      return failed_precondition("map \"" + name + "\" still has slots; empty it first");
    }
    for (const auto* list : {&pending_, &unsettled_}) {
      for (const PendingDrain& p : *list) {
        if (p.inner->map == name) {
          return failed_precondition("map \"" + name + "\" has inner maps waiting for their drain");
        }
      }
    }
  }
  std::lock_guard lock(read_mu_);
  for (const std::string& name : maps) {
    Outer& o = *outers_.at(name);
    if (o.group) {
      for (int bank = 0; bank < 2; ++bank) POLICYD_TRY(kernel::unpin(pins_.member(name, bank)));
      Group* g = o.group;
      g->members.erase(std::remove(g->members.begin(), g->members.end(), &o), g->members.end());
      if (g->members.empty()) {
        POLICYD_TRY(kernel::unpin(pins_.bank(g->name)));
        groups_.erase(g->name);
      }
    } else {
      POLICYD_TRY(kernel::unpin(pins_.outer(name)));
    }
    outers_.erase(name);
    configs_.erase(name);
    pinned_before_add_.erase(name);
    // Its pooled maps go with it: a later map of the same name may have another template.
    if (inner_pool_) inner_pool_->configure(configs_);
    spdlog::info("removed map \"{}\" (unpinned; programs holding it keep it until they let go)",
                 name);
  }
  return {};
}

Status Engine::open_outer(Outer& outer, int bank, const std::string& kernel_name,
                          const std::string& path) {
  const OuterMapConfig& cfg = *outer.config;
  const bpf_map_type type = outer_map_type(cfg.kind);
  Result<kernel::UniqueFd> pinned = kernel::open_pinned(path);
  if (pinned.ok()) {
    POLICYD_ASSIGN_OR_RETURN(kernel::MapInfo info, kernel::map_info(pinned->get()));
    const MapLayout pinned_layout{existing_outer_shape(info), std::nullopt};
    const std::vector<LayoutDifference> diffs =
        layout_differences(pinned_layout, expected_layout(cfg));
    if (!diffs.empty()) {
      return failed_precondition("pinned map " + path + " does not match map \"" + cfg.name +
                                 "\" (pinned -> config): " + describe(diffs) +
                                 "; policyd never replaces a pinned map, remove it or fix the "
                                 "config");
    }
    outer.fd[bank] = std::move(pinned).value();
    outer.id[bank] = info.id;
    spdlog::info("adopted pinned map {} (id {})", path, info.id);
    Status adopted = adopt_slots(outer, bank);
    if (!adopted.ok()) return adopted.error().wrap("pinned map " + path);
    return {};
  }
  if (pinned.error().code != ErrorCode::kNotFound) return pinned.error();

  POLICYD_ASSIGN_OR_RETURN(kernel::UniqueFd tmpl, create_inner_map(cfg));
  kernel::MapSpec spec{type, kernel_name, cfg.slot_key_size, 4, cfg.slots, 0, tmpl.get()};
  POLICYD_ASSIGN_OR_RETURN(kernel::UniqueFd fd, kernel::create_map(spec));
  POLICYD_TRY(kernel::pin(fd.get(), path));
  POLICYD_ASSIGN_OR_RETURN(kernel::MapInfo info, kernel::map_info(fd.get()));
  outer.fd[bank] = std::move(fd);
  outer.id[bank] = info.id;
  spdlog::info("created map {} ({}, {} slots, inner {}, id {})", path, to_string(cfg.kind),
               cfg.slots, kernel::map_type_name(cfg.inner.type), info.id);
  return {};
}

Status Engine::adopt_slots(Outer& outer, int bank) {
  const OuterMapConfig& cfg = *outer.config;
  POLICYD_ASSIGN_OR_RETURN(kernel::MapInfo info, kernel::map_info(outer.fd[bank].get()));
  std::vector<std::pair<Bytes, uint32_t>> found;
  POLICYD_TRY(kernel::dump(outer.fd[bank].get(), info, [&](const uint8_t* key, const uint8_t* v) {
    uint32_t id = 0;
    std::memcpy(&id, v, sizeof(id));
    found.emplace_back(Bytes(key, key + info.key_size), id);
  }));
  // Adoption keeps an fd per inner map, like a build: refuse before opening the first one.
  POLICYD_ASSIGN_OR_RETURN(
      FdReservation fds, reserve_fds(found.size(), "adopting the " + std::to_string(found.size()) +
                                                       " slots of map \"" + cfg.name + "\""));
  for (auto& [slot, id] : found) {
    Result<kernel::UniqueFd> fd = kernel::map_fd_by_id(id);
    if (!fd.ok()) return name_fd_exhaustion(fd.error().wrap("adopt " + describe(cfg, slot)));
    POLICYD_ASSIGN_OR_RETURN(kernel::MapInfo inner_info, kernel::map_info(fd->get()));
    const MapLayout found_layout{std::nullopt, existing_inner_shape(inner_info)};
    const std::vector<LayoutDifference> diffs =
        layout_differences(found_layout, expected_layout(cfg));
    if (!diffs.empty()) {
      return failed_precondition("adopt " + describe(cfg, slot) + ": the inner map there (id " +
                                 std::to_string(id) +
                                 ") does not match (pinned -> config): " + describe(diffs));
    }
    auto inner = std::make_shared<InnerMap>();
    inner->fd = std::move(fd).value();
    inner->id = id;
    inner->map = cfg.name;
    inner->slot = slot;
    outer.slots[bank][slot] = std::move(inner);
  }
  return {};
}

Status Engine::open_group(Group& group) {
  const std::string path = pins_.bank(group.name);
  Result<kernel::UniqueFd> pinned = kernel::open_pinned(path);
  if (pinned.ok()) {
    POLICYD_ASSIGN_OR_RETURN(kernel::MapInfo info, kernel::map_info(pinned->get()));
    if (info.type != BPF_MAP_TYPE_ARRAY || info.key_size != 4 || info.value_size != 4 ||
        info.max_entries != 1) {
      return failed_precondition("pinned map " + path + " is not group \"" + group.name +
                                 "\"'s bank word (a one-entry u32 array)");
    }
    const uint32_t key = 0;
    uint32_t value = 0;
    POLICYD_TRY(kernel::lookup_elem(pinned->get(), &key, &value));
    group.active = value == 0 ? 0 : 1;
    group.bank_fd = std::move(pinned).value();
    group.bank_id = info.id;
    return {};
  }
  if (pinned.error().code != ErrorCode::kNotFound) return pinned.error();
  kernel::MapSpec spec{BPF_MAP_TYPE_ARRAY, PinPaths::bank_name(group.name), 4, 4, 1, 0, -1};
  POLICYD_ASSIGN_OR_RETURN(group.bank_fd, kernel::create_map(spec));
  POLICYD_TRY(kernel::pin(group.bank_fd.get(), path));
  POLICYD_ASSIGN_OR_RETURN(kernel::MapInfo info, kernel::map_info(group.bank_fd.get()));
  group.bank_id = info.id;
  return {};
}

Status Engine::validate(const Generation& gen) const { return validate_generation(gen, configs_); }

Result<BuiltGeneration> Engine::build(const Generation& gen) {
  return build_generation(gen, configs_, build_pool_, inner_pool_.get());
}

Engine::Plan Engine::plan(std::vector<BuiltGeneration>& batch) {
  Plan plan;
  // Final target per map and slot; a later generation in the batch wins. Superseded inner
  // maps were never installed and are closed with the batch.
  std::map<std::string, std::map<Bytes, std::pair<InnerRef, uint64_t>>> target;
  uint64_t id = current_;
  for (BuiltGeneration& gen : batch) {
    plan.ids.push_back(++id);
    for (BuiltChange& change : gen.changes) {
      if (change.inner) change.inner->installed_by = id;
      target[change.map][change.slot] = {change.inner, id};
    }
  }
  auto add_write = [&](Outer& o, int bank, const Bytes& slot, InnerRef next, InnerRef prev,
                       uint64_t gen) {
    OuterWrite w;
    w.outer_fd = o.fd[bank].get();
    w.array = o.config->kind == OuterKind::kArray;
    w.slot = slot;
    w.inner_fd = next ? next->fd.get() : -1;
    w.what = describe(*o.config, slot) + (o.group ? (bank ? " (bank b)" : " (bank a)") : "");
    plan.writes.push_back(std::move(w));
    plan.records.push_back({&o, bank, slot, std::move(next), std::move(prev), gen});
  };

  std::set<Group*> groups;
  for (auto& [name, slots] : target) {
    Outer& o = *outers_.at(name);
    if (o.group) {
      groups.insert(o.group);
      continue;
    }
    for (auto& [slot, change] : slots) {
      InnerRef prev = find_slot(o.slots[0], slot);
      if (!change.first && !prev) continue;  // deleting an empty slot changes nothing
      add_write(o, 0, slot, change.first, prev, change.second);
    }
  }
  // Atomic groups: bring the inactive bank of every member to the target generation.
  for (Group* g : groups) {
    plan.groups.push_back(g);
    const int inactive = 1 - g->active;
    for (Outer* m : g->members) {
      std::map<Bytes, InnerRef> want = m->slots[g->active];
      auto t = target.find(m->config->name);
      if (t != target.end()) {
        for (auto& [slot, change] : t->second) {
          set_slot(want, slot, change.first);
          plan.group_changed_by[m][slot] = change.second;
        }
      }
      std::set<Bytes> keys;
      for (auto& [slot, inner] : want) keys.insert(slot);
      for (auto& [slot, inner] : m->slots[inactive]) keys.insert(slot);
      for (const Bytes& slot : keys) {
        InnerRef w = find_slot(want, slot);
        InnerRef h = find_slot(m->slots[inactive], slot);
        if (w == h) continue;
        uint64_t gen = plan.group_changed_by[m].count(slot) ? plan.group_changed_by[m][slot] : 0;
        add_write(*m, inactive, slot, w, h, gen);
      }
      plan.group_target[m] = std::move(want);
    }
  }
  return plan;
}

Status Engine::undo(Plan& plan, const RoundResult& round) {
  // New maps that were live for a moment leave the data plane again: pinned first, so that a
  // crash during the undo still drains them at the next start.
  if (config_.drain_pins) {
    for (size_t i = 0; i < plan.records.size(); ++i) {
      Plan::Record& r = plan.records[i];
      if (!round.applied[i] || r.outer->group || !r.next) continue;
      if (Status st = pin_for_drain(*r.next); !st.ok()) spdlog::warn("{}", st.error().message());
    }
  }
  // Group banks being prepared are invisible to programs: keep what the kernel now holds.
  // Plain outer maps: write back what each applied slot held before.
  std::vector<OuterWrite> inverse;
  std::vector<size_t> inverse_of;
  for (size_t i = 0; i < plan.records.size(); ++i) {
    if (!round.applied[i]) continue;
    Plan::Record& r = plan.records[i];
    if (r.outer->group) {
      std::lock_guard lock(read_mu_);
      set_slot(r.outer->slots[r.bank], r.slot, r.next);
      continue;
    }
    OuterWrite w = plan.writes[i];
    w.inner_fd = r.prev ? r.prev->fd.get() : -1;
    inverse.push_back(std::move(w));
    inverse_of.push_back(i);
  }
  // Deletes first: re-inserting an old key into a full hash outer map needs the element the
  // new key holds. Undo is rare; the extra grace period does not matter.
  std::vector<bool> deletes(inverse.size());
  for (size_t k = 0; k < inverse.size(); ++k) deletes[k] = inverse[k].inner_fd < 0;
  RoundResult undone = apply_phased(*writer_, inverse, deletes);
  std::lock_guard lock(read_mu_);
  for (size_t k = 0; k < inverse.size(); ++k) {
    Plan::Record& r = plan.records[inverse_of[k]];
    if (undone.applied[k]) {
      // The new map was live for a moment: drain it, nothing a program wrote is lost.
      if (r.next) {
        r.next->installed_by = 0;  // never committed; its id goes to the next commit
        pending_.push_back({r.next, 0});
      }
    } else {
      // Could not restore: record the truth so later commits and drains stay correct.
      set_slot(r.outer->slots[r.bank], r.slot, r.next);
      if (r.prev) pending_.push_back({r.prev, r.generation});
    }
  }
  if (undone.error) {
    return Error{
        ErrorCode::kInternal, undone.error->sys_errno,
        "undo failed, the data plane may hold a mix of generations: " + undone.error->context};
  }
  return {};
}

Status Engine::flip_groups(Plan& plan) {
  const uint32_t key = 0;
  std::vector<Group*> flipped;
  for (Group* g : plan.groups) {
    const uint32_t next = 1 - g->active;
    Status st = kernel::update_elem(g->bank_fd.get(), &key, &next);
    if (st.ok()) {
      flipped.push_back(g);
      continue;
    }
    for (Group* f : flipped) {
      const auto back = static_cast<uint32_t>(f->active);
      (void)kernel::update_elem(f->bank_fd.get(), &key, &back);
    }
    return st.error().wrap("flip group \"" + g->name + "\"");
  }
  return {};
}

Result<CommitReport> Engine::commit(std::vector<BuiltGeneration> batch) {
  if (batch.empty()) return invalid_argument("commit of an empty batch");
  std::string last_label = batch.back().label;
  const uint64_t rounds_before = writer_->stats().rounds + writer_->stats().barriers;
  Plan plan = this->plan(batch);
  CommitReport report;
  report.first_generation = plan.ids.front();
  report.last_generation = plan.ids.back();
  report.slots_written = plan.writes.size();
  const std::string what = plan.ids.size() == 1
                               ? "commit generation " + std::to_string(plan.ids.front())
                               : "commit generations " + std::to_string(plan.ids.front()) + ".." +
                                     std::to_string(plan.ids.back());

  // G8: what leaves the data plane is pinned before the swap, so a crash before its drain is
  // durable leaves it for the next start to drain.
  if (config_.drain_pins) {
    Status pinned = pin_leaving(plan);
    if (!pinned.ok()) {
      stats_.failed_commits++;
      unpin_unless_pending(plan);
      return pinned.error().wrap(what);
    }
  }

  auto t0 = std::chrono::steady_clock::now();
  // Hash outer maps whose new keys only fit once this commit's deletes are done: those deletes
  // go in a round of their own (one more grace period, only in that case).
  std::map<std::pair<const Outer*, int>, size_t> inserts;
  for (const Plan::Record& r : plan.records) {
    if (r.outer->config->kind == OuterKind::kHash && r.next && !r.prev)
      inserts[{r.outer, r.bank}]++;
  }
  std::vector<bool> first(plan.records.size(), false);
  for (size_t i = 0; i < plan.records.size(); ++i) {
    const Plan::Record& r = plan.records[i];
    if (r.next || !r.prev) continue;
    auto it = inserts.find({r.outer, r.bank});
    first[i] =
        it != inserts.end() && r.outer->slots[r.bank].size() + it->second > r.outer->config->slots;
  }
  RoundResult round = apply_phased(*writer_, plan.writes, first);
  report.write_ms = util::ms_since(t0);
  if (round.error) {
    stats_.failed_commits++;
    Status undone = undo(plan, round);
    unpin_unless_pending(plan);
    Error e = round.error->wrap(what);
    if (!undone.ok())
      e.context += "; " + undone.error().context;
    else
      e.context += "; undone, the data plane keeps generation " + std::to_string(current_);
    return e;
  }
  if (!plan.groups.empty()) {
    Status flipped = flip_groups(plan);
    if (!flipped.ok()) {
      stats_.failed_commits++;
      round.applied.assign(plan.records.size(), true);
      Status undone = undo(plan, round);
      unpin_unless_pending(plan);
      Error e = flipped.error().wrap(what);
      if (!undone.ok()) e.context += "; " + undone.error().context;
      return e;
    }
    auto t1 = std::chrono::steady_clock::now();
    const int injected = fail_next_barrier_.exchange(0);
    Status barrier =
        injected != 0 ? Status(sys_error(injected, "explicit barrier")) : writer_->barrier();
    report.barrier_ms = util::ms_since(t1);
    if (!barrier.ok()) {
      // The flip is done and cannot be waited for: the caller must not ack (CommitReport).
      report.barrier_failed = barrier.error().wrap("the barrier after the group flip of " + what);
    }
  }

  // The kernel now holds the plan: record it and queue what left the data plane for drain.
  // A commit that waited (a write round or a barrier) successfully also settles what an earlier
  // failed barrier held back; one that wrote nothing waited for nothing.
  std::lock_guard lock(read_mu_);
  std::vector<PendingDrain>& leaving = report.barrier_failed ? unsettled_ : pending_;
  const bool waited = writer_->stats().rounds + writer_->stats().barriers > rounds_before;
  if (!report.barrier_failed && waited) release_unsettled();
  for (Plan::Record& r : plan.records) {
    set_slot(r.outer->slots[r.bank], r.slot, r.next);
    if (!r.outer->group && r.prev) leaving.push_back({r.prev, r.generation});
  }
  for (Group* g : plan.groups) {
    const int old_active = g->active;
    g->active = 1 - old_active;
    for (Outer* m : g->members) {
      const auto& target = plan.group_target[m];
      for (auto& [slot, old] : m->slots[old_active]) {
        if (find_slot(target, slot) == old) continue;
        auto changed = plan.group_changed_by[m].find(slot);
        leaving.push_back({old, changed == plan.group_changed_by[m].end() ? report.last_generation
                                                                          : changed->second});
      }
    }
  }
  current_ = report.last_generation;
  current_label_ = std::move(last_label);
  stats_.commits++;
  stats_.generations += plan.ids.size();
  report.rounds = writer_->stats().rounds + writer_->stats().barriers - rounds_before;
  return report;
}

Status Engine::pin_for_drain(InnerMap& inner) {
  if (!inner.drain_pin.empty() || !inner.fd.valid()) return {};
  const std::string path =
      pins_.drain_pin(inner.map, util::to_hex(inner.slot), inner.installed_by, inner.id);
  POLICYD_TRY(kernel::pin(inner.fd.get(), path));
  inner.drain_pin = path;
  return {};
}

// Pins the inner maps a plan takes out of the data plane: replaced or deleted slots of plain
// outer maps, and for atomic groups the active bank's maps the flip leaves behind.
Status Engine::pin_leaving(const Plan& plan) {
  std::vector<InnerRef> leaving;
  for (const Plan::Record& r : plan.records) {
    if (!r.outer->group && r.prev) leaving.push_back(r.prev);
  }
  for (Group* g : plan.groups) {
    for (Outer* m : g->members) {
      const auto& target = plan.group_target.at(m);
      for (auto& [slot, old] : m->slots[g->active]) {
        if (find_slot(target, slot) != old) leaving.push_back(old);
      }
    }
  }
  for (const InnerRef& inner : leaving) {
    Status st = pin_for_drain(*inner);
    if (!st.ok()) return st.error().wrap("pin the replaced inner map for its drain");
  }
  return {};
}

// After a failed commit: maps pinned for a drain that will not happen (they are live again).
void Engine::unpin_unless_pending(const Plan& plan) {
  std::set<const InnerMap*> pending;
  for (const auto* list : {&pending_, &unsettled_}) {
    for (const PendingDrain& p : *list) pending.insert(p.inner.get());
  }
  auto release = [&](const InnerRef& inner) {
    if (!inner || inner->drain_pin.empty() || pending.count(inner.get())) return;
    (void)kernel::unpin(inner->drain_pin);
    inner->drain_pin.clear();
  };
  for (const Plan::Record& r : plan.records) release(r.prev);
  for (Group* g : plan.groups) {
    for (Outer* m : g->members) {
      for (auto& [slot, old] : m->slots[g->active]) release(old);
    }
  }
  // Maps the undo took back out of the data plane are drained like any other.
  for (const PendingDrain& p : pending_) {
    Status st = pin_for_drain(*p.inner);
    if (!st.ok()) spdlog::warn("{}", st.error().message());
  }
}

Result<CommitReport> Engine::restore(BuiltGeneration gen, uint64_t id) {
  const uint64_t before = current_;
  current_ = id > 0 ? id - 1 : 0;
  std::vector<BuiltGeneration> batch;
  batch.push_back(std::move(gen));
  Result<CommitReport> report = commit(std::move(batch));
  current_ = report.ok() ? id : before;
  return report;
}

std::vector<uint32_t> Engine::unreleased_drains() const {
  std::vector<uint32_t> ids;
  for (const InnerRef& inner : drained_) ids.push_back(inner->id);
  return ids;
}

Status Engine::barrier() {
  POLICYD_TRY(writer_->barrier());
  std::lock_guard lock(read_mu_);
  release_unsettled();
  return {};
}

void Engine::release_unsettled() {
  pending_.insert(pending_.end(), unsettled_.begin(), unsettled_.end());
  unsettled_.clear();
}

void Engine::release_drained() {
  for (const InnerRef& inner : drained_) {
    Status st = kernel::unpin(inner->drain_pin);
    if (!st.ok()) spdlog::warn("{}", st.error().message());
    inner->drain_pin.clear();
  }
  drained_.clear();
}

Status Engine::recover_drain_pins(const std::set<uint32_t>& counted) {
  const std::string dir = pins_.drain_dir();
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') names.emplace_back(e->d_name);
    }
    ::closedir(d);
  } else if (errno != ENOENT) {
    return sys_error(errno, "open " + dir);
  }
  // What programs can reach: for atomic groups the active bank only. A map the last flip took
  // out of the data plane still sits in the inactive bank, but it is the one to drain.
  std::set<uint32_t> live;
  for (auto& [name, o] : outers_) {
    for (auto& [slot, inner] : o->slots[o->active()]) live.insert(inner->id);
  }
  size_t recovered = 0;
  for (const std::string& name : names) {
    const std::string path = dir + "/" + name;
    Result<kernel::UniqueFd> pinned = kernel::open_pinned(path);
    Result<kernel::MapInfo> info_or =
        pinned.ok() ? kernel::map_info(pinned->get()) : Result<kernel::MapInfo>(pinned.error());
    if (!info_or.ok()) {
      spdlog::warn("{}: not a pinned map ({}); left in place", path, info_or.error().message());
      continue;
    }
    kernel::UniqueFd fd = std::move(pinned).value();
    const kernel::MapInfo& info = *info_or;
    if (counted.count(info.id) || live.count(info.id)) {
      // Drained before the crash (its totals are durable), or the swap never happened.
      POLICYD_TRY(kernel::unpin(path));
      continue;
    }
    const std::optional<PinPaths::DrainPin> parsed = PinPaths::parse_drain_pin_name(name);
    Result<Bytes> slot =
        parsed ? util::from_hex(parsed->slot_hex) : Result<Bytes>(invalid_argument("bad name"));
    if (!slot.ok() || !configs_.count(parsed->map)) {
      spdlog::warn("{}: not a drain pin of a configured map; left in place", path);
      continue;
    }
    auto inner = std::make_shared<InnerMap>();
    inner->fd = std::move(fd);
    inner->id = info.id;
    inner->map = parsed->map;
    inner->slot = std::move(slot).value();
    inner->installed_by = parsed->installed_by;
    inner->drain_pin = path;
    std::lock_guard lock(read_mu_);
    pending_.push_back({std::move(inner), 0});
    ++recovered;
  }
  if (recovered)
    spdlog::info("{}: {} replaced inner map(s) left by the last run, to drain", dir, recovered);
  return {};
}

Result<CommitReport> Engine::push(const Generation& gen) {
  POLICYD_ASSIGN_OR_RETURN(BuiltGeneration built, build(gen));
  std::vector<BuiltGeneration> batch;
  batch.push_back(std::move(built));
  return commit(std::move(batch));
}

Result<std::vector<DrainRecord>> Engine::drain() {
  std::vector<DrainRecord> records;
  // Drained maps leave pending_ in one erase at the end (also when one fails: it and the
  // ones after it stay for the next drain), not one front erase each.
  size_t done = 0;
  std::optional<Error> failed;
  for (; done < pending_.size(); ++done) {
    PendingDrain& p = pending_[done];
    if (!p.inner->fd.valid()) continue;
    const OuterMapConfig& cfg = configs_.at(p.inner->map);
    Result<DrainRecord> rec = drain_inner(*p.inner, cfg, p.replaced_by);
    if (!rec.ok()) {
      failed = std::move(rec).error();  // stays pending; retried next time
      break;
    }
    // Its totals and the end of its fd together: a snapshot sees it drained or pending.
    std::lock_guard lock(read_mu_);
    for (auto& [field, total] : rec->counters) {
      drained_totals_[CounterKey{cfg.name, p.inner->slot, field}] += total;
    }
    stats_.drained_maps++;
    stats_.drained_entries += rec->entry_count;
    records.push_back(std::move(rec).value());
    if (!p.inner->drain_pin.empty()) drained_.push_back(p.inner);
    // A group member's old bank may still reference the map until the next commit writes
    // that bank; the kernel frees it then. policyd is done with it now.
    p.inner->fd.reset();
  }
  {
    std::lock_guard lock(read_mu_);
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(done));
  }
  if (failed) return *std::move(failed);
  return records;
}

EngineStats Engine::stats() const {
  EngineStats s = stats_;
  s.writer = writer_->stats();
  s.build_threads_started = build_pool_.started();
  s.barrier_threads_started = barrier_pool_.started();
  if (inner_pool_) s.pool = inner_pool_->stats();
  for (auto& [name, o] : outers_) {
    for (int bank = 0; bank < o->banks(); ++bank) s.live_inner_maps += o->slots[bank].size();
  }
  return s;
}

Result<const Engine::Outer*> Engine::find(const std::string& map) const {
  auto it = outers_.find(map);
  if (it == outers_.end()) {
    return Error{ErrorCode::kNotFound, 0, "unknown map \"" + map + "\""};
  }
  return static_cast<const Outer*>(it->second.get());
}

Result<std::vector<SlotInfo>> Engine::slots(const std::string& map) const {
  POLICYD_ASSIGN_OR_RETURN(const Outer* o, find(map));
  std::vector<SlotInfo> out;
  for (auto& [slot, inner] : o->slots[o->active()]) {
    out.push_back({slot, inner->id, inner->installed_by});
  }
  return out;
}

Result<int> Engine::outer_fd(const std::string& map) const {
  POLICYD_ASSIGN_OR_RETURN(const Outer* o, find(map));
  return o->fd[o->active()].get();
}

Result<std::map<std::string, uint64_t>> Engine::live_counters(const std::string& map,
                                                              const Bytes& slot) const {
  POLICYD_ASSIGN_OR_RETURN(const Outer* o, find(map));
  InnerRef inner = find_slot(o->slots[o->active()], slot);
  if (!inner) return std::map<std::string, uint64_t>{};
  return read_counter_totals(inner->fd.get(), *o->config);
}

Result<DrainRecord> Engine::dump_slot(const std::string& map, const Bytes& slot) const {
  POLICYD_ASSIGN_OR_RETURN(const Outer* o, find(map));
  InnerRef inner = find_slot(o->slots[o->active()], slot);
  if (!inner) {
    return Error{ErrorCode::kNotFound, 0, describe(*o->config, slot) + " is empty"};
  }
  return read_inner(*inner, *o->config);
}

StateSnapshot Engine::state_snapshot() const {
  std::lock_guard lock(read_mu_);
  StateSnapshot out;
  out.generation = current_;
  out.label = current_label_;
  out.maps.reserve(outers_.size());
  for (const auto& [name, o] : outers_) {
    MapSnapshot& m = out.maps.emplace_back();
    m.config = *o->config;
    m.pin = o->group ? pins_.member(name, 0) : pins_.outer(name);
    m.live.reserve(o->slots[o->active()].size());
    for (const auto& [slot, inner] : o->slots[o->active()]) {
      m.live.push_back({slot, inner->id, inner->installed_by});
    }
  }
  return out;
}

Result<CounterSnapshot> Engine::counter_snapshot(const std::string& only) const {
  std::lock_guard lock(read_mu_);
  if (!only.empty()) POLICYD_TRY(find(only));
  auto wanted = [&](const std::string& map) {
    return (only.empty() || map == only) && !configs_.at(map).inner.counters.empty();
  };
  CounterSnapshot out;
  // Keys order by map first: one map's totals are one range.
  auto it = only.empty() ? drained_totals_.begin() : drained_totals_.lower_bound({only, {}, {}});
  for (; it != drained_totals_.end() && (only.empty() || it->first.map == only); ++it) {
    if (configs_.count(it->first.map) && wanted(it->first.map))
      out.drained.emplace_hint(out.drained.end(), it->first, it->second);
  }
  for (const auto& [name, o] : outers_) {
    if (!wanted(name)) continue;
    out.maps.emplace(name, *o->config);
    for (const auto& [slot, inner] : o->slots[o->active()]) {
      out.sources.push_back({name, slot, inner->id, true});
    }
  }
  // Replaced maps not drained yet (drain() closes a map's fd as it adds its totals).
  for (const auto* list : {&pending_, &unsettled_}) {
    for (const PendingDrain& p : *list) {
      if (p.inner->fd.valid() && out.maps.count(p.inner->map)) {
        out.sources.push_back({p.inner->map, p.inner->slot, p.inner->id, false});
      }
    }
  }
  return out;
}

Result<SlotSnapshot> Engine::slot_snapshot(const std::string& map, const Bytes& slot) const {
  std::lock_guard lock(read_mu_);
  POLICYD_ASSIGN_OR_RETURN(const Outer* o, find(map));
  SlotSnapshot out;
  out.config = *o->config;
  if (InnerRef inner = find_slot(o->slots[o->active()], slot)) {
    out.id = inner->id;
    out.installed_by = inner->installed_by;
  }
  return out;
}

std::vector<uint32_t> Engine::owned_map_ids() const {
  std::set<uint32_t> ids;
  for (auto& [name, o] : outers_) {
    for (int bank = 0; bank < o->banks(); ++bank) {
      ids.insert(o->id[bank]);
      for (auto& [slot, inner] : o->slots[bank]) {
        if (inner->fd.valid()) ids.insert(inner->id);
      }
    }
  }
  for (auto& [name, g] : groups_) ids.insert(g->bank_id);
  for (const auto* list : {&pending_, &unsettled_}) {
    for (const PendingDrain& p : *list) {
      if (p.inner->fd.valid()) ids.insert(p.inner->id);
    }
  }
  for (uint32_t id : writer_->own_map_ids()) ids.insert(id);
  if (inner_pool_) {
    for (uint32_t id : inner_pool_->ids()) ids.insert(id);
  }
  return {ids.begin(), ids.end()};
}

}  // namespace policyd::core
