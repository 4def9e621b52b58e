// FakeEngine: the data plane as a map of slots, commits as all-or-nothing batch applications.
#include "fake_engine.h"

#include <algorithm>

#include "core/validate.h"

namespace policyd::core::testing {

FakeEngine::FakeEngine(std::vector<OuterMapConfig> maps, std::shared_ptr<FakeDataPlane> plane,
                       std::string pin_dir)
    : plane_(std::move(plane)), pin_dir_(std::move(pin_dir)) {
  for (OuterMapConfig& m : maps) configs_.emplace(m.name, std::move(m));
}

// ---- controls ------------------------------------------------------------------------------

void FakeEngine::close_gate() {
  std::lock_guard lock(mu_);
  gate_closed_ = true;
}

void FakeEngine::open_gate() {
  {
    std::lock_guard lock(mu_);
    gate_closed_ = false;
  }
  cv_.notify_all();
}

void FakeEngine::wait_at_gate() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return waiting_at_gate_; });
}

void FakeEngine::refuse_label(std::string label, Error error) {
  std::lock_guard lock(mu_);
  refused_labels_.insert_or_assign(std::move(label), std::move(error));
}

void FakeEngine::fail_build_of(std::string label, Error error) {
  std::lock_guard lock(mu_);
  failed_builds_.insert_or_assign(std::move(label), std::move(error));
}

void FakeEngine::fail_next_barrier(Error error) {
  std::lock_guard lock(mu_);
  fail_barrier_ = std::move(error);
}

void FakeEngine::refuse_barriers(bool refuse) {
  std::lock_guard lock(mu_);
  refuse_barriers_ = refuse;
}

void FakeEngine::add_hits(const std::string& map, const Bytes& slot, const std::string& field,
                          uint64_t n) {
  std::lock_guard lock(mu_);
  plane_->slots.at({map, slot}).counters[field] += n;
}

// ---- observations --------------------------------------------------------------------------

std::vector<FakeEngine::Call> FakeEngine::calls() const {
  std::lock_guard lock(mu_);
  return calls_;
}

std::vector<std::string> FakeEngine::built_labels() const {
  std::lock_guard lock(mu_);
  return built_labels_;
}

std::optional<FakeInner> FakeEngine::live(const std::string& map, const Bytes& slot) const {
  std::lock_guard lock(mu_);
  auto it = plane_->slots.find({map, slot});
  if (it == plane_->slots.end()) return std::nullopt;
  return it->second;
}

size_t FakeEngine::live_count() const {
  std::lock_guard lock(mu_);
  return plane_->slots.size();
}

size_t FakeEngine::barriers() const {
  std::lock_guard lock(mu_);
  return barriers_;
}

size_t FakeEngine::drained() const {
  std::lock_guard lock(mu_);
  return stats_.drained_maps;
}

// ---- maps ----------------------------------------------------------------------------------

Status FakeEngine::known(const std::string& map) const {
  if (configs_.count(map)) return {};
  return Error{ErrorCode::kNotFound, 0, "unknown map \"" + map + "\""};
}

Status FakeEngine::add_maps(const std::vector<OuterMapConfig>& maps) {
  for (const OuterMapConfig& m : maps) {
    if (configs_.count(m.name)) {
      return Error{ErrorCode::kFailedPrecondition, 0, "map \"" + m.name + "\" exists"};
    }
  }
  for (const OuterMapConfig& m : maps) configs_.emplace(m.name, m);
  return {};
}

void FakeEngine::forget_added_maps(const std::vector<std::string>& maps) {
  for (const std::string& m : maps) configs_.erase(m);
}

Status FakeEngine::remove_maps(const std::vector<std::string>& maps) {
  std::lock_guard lock(mu_);
  for (const std::string& m : maps) {
    for (const auto& [key, inner] : plane_->slots) {
      if (key.first == m) {
        return Error{ErrorCode::kFailedPrecondition, 0, "map \"" + m + "\" has live slots"};
      }
    }
  }
  for (const std::string& m : maps) configs_.erase(m);
  return {};
}

// ---- the commit path -----------------------------------------------------------------------

Result<BuiltGeneration> FakeEngine::build(const Generation& gen) {
  POLICYD_TRY(validate_generation(gen, configs_));
  std::lock_guard lock(mu_);
  built_labels_.push_back(gen.label);
  if (auto it = failed_builds_.find(gen.label); it != failed_builds_.end()) return it->second;
  BuiltGeneration out;
  out.label = gen.label;
  for (const SlotChange& c : gen.changes) {
    BuiltChange change{c.map, c.slot, nullptr};
    if (!c.remove) {
      auto inner = std::make_shared<InnerMap>();
      inner->id = plane_->next_id++;
      inner->map = c.map;
      inner->slot = c.slot;
      built_[inner->id] = FakeInner{inner->id, 0, c.entries, {}};
      out.entries += c.entries.size();
      change.inner = std::move(inner);
    }
    out.changes.push_back(std::move(change));
  }
  return out;
}

Result<CommitReport> FakeEngine::commit(std::vector<BuiltGeneration> batch) {
  Call call;
  for (const BuiltGeneration& b : batch) call.labels.push_back(b.label);
  std::unique_lock lock(mu_);
  if (gate_closed_) {
    waiting_at_gate_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !gate_closed_; });
    waiting_at_gate_ = false;
  }
  for (const std::string& label : call.labels) {
    if (auto it = refused_labels_.find(label); it != refused_labels_.end()) {
      call.refused = true;
      for (const BuiltGeneration& b : batch) {
        for (const BuiltChange& c : b.changes) {
          if (c.inner) built_.erase(c.inner->id);  // the kernel engine closes them
        }
      }
      calls_.push_back(std::move(call));
      ++stats_.failed_commits;
      return it->second;
    }
  }
  const uint64_t first = current_ + 1;
  lock.unlock();
  return apply(std::move(batch), first, std::move(call));
}

Status FakeEngine::barrier() {
  std::lock_guard lock(mu_);
  if (refuse_barriers_) return Error{ErrorCode::kInternal, EAGAIN, "explicit barrier (refused)"};
  ++barriers_;
  pending_.insert(pending_.end(), held_.begin(), held_.end());
  held_.clear();
  return {};
}

Result<CommitReport> FakeEngine::restore(BuiltGeneration gen, uint64_t id) {
  Call call;
  call.restore = true;
  call.id = id;
  call.labels.push_back(gen.label);
  std::vector<BuiltGeneration> batch;
  batch.push_back(std::move(gen));
  return apply(std::move(batch), id, std::move(call));
}

// Installs the batch: per slot the last generation wins; what was live before goes to drain.
Result<CommitReport> FakeEngine::apply(std::vector<BuiltGeneration> batch, uint64_t first_id,
                                       Call call) {
  std::lock_guard lock(mu_);
  CommitReport report;
  report.first_generation = first_id;
  report.last_generation = first_id + batch.size() - 1;
  std::map<Key, bool> touched;
  std::vector<Pending> leaving;
  for (size_t i = 0; i < batch.size(); ++i) {
    for (BuiltChange& c : batch[i].changes) {
      Key key{c.map, c.slot};
      call.changes.push_back(c);
      auto live = plane_->slots.find(key);
      if (live != plane_->slots.end() && !touched.count(key)) {
        leaving.push_back({c.map, c.slot, std::move(live->second), first_id + i});
      }
      if (live != plane_->slots.end() || c.inner) touched[key] = true;  // a slot write
      if (live != plane_->slots.end()) plane_->slots.erase(live);
      if (c.inner) {
        FakeInner inner = std::move(built_.at(c.inner->id));
        built_.erase(c.inner->id);
        inner.installed_by = first_id + i;
        plane_->slots.emplace(key, std::move(inner));
      }
    }
  }
  report.slots_written = touched.size();
  // A slot write waits a grace period; a batch that changes nothing (deletes of empty slots)
  // waits for none.
  report.rounds = touched.empty() ? 0 : 1;
  current_ = report.last_generation;
  label_ = batch.empty() ? label_ : batch.back().label;
  ++stats_.commits;
  stats_.generations += batch.size();
  if (fail_barrier_) {
    report.barrier_failed = std::move(fail_barrier_);
    fail_barrier_.reset();
    held_.insert(held_.end(), leaving.begin(), leaving.end());
  } else {
    if (report.rounds > 0) {
      pending_.insert(pending_.end(), held_.begin(), held_.end());
      held_.clear();
    }
    pending_.insert(pending_.end(), leaving.begin(), leaving.end());
  }
  calls_.push_back(std::move(call));
  return report;
}

DrainRecord FakeEngine::record_of(const std::string& map, const Bytes& slot,
                                  const FakeInner& inner) const {
  DrainRecord r;
  r.map = map;
  r.slot = slot;
  r.map_id = inner.id;
  r.installed_by = inner.installed_by;
  r.entry_count = inner.entries.size();
  for (const CounterField& f : configs_.at(map).inner.counters) {
    auto it = inner.counters.find(f.name);
    r.counters[f.name] = it == inner.counters.end() ? 0 : it->second;
  }
  return r;
}

Result<std::vector<DrainRecord>> FakeEngine::drain() {
  std::lock_guard lock(mu_);
  std::vector<DrainRecord> out;
  for (Pending& p : pending_) {
    DrainRecord r = record_of(p.map, p.slot, p.inner);
    r.replaced_by = p.replaced_by;
    for (const auto& [field, sum] : r.counters) drained_totals_[{p.map, p.slot, field}] += sum;
    ++stats_.drained_maps;
    plane_->drain_pins.push_back({p.map, p.slot, std::move(p.inner)});
    out.push_back(std::move(r));
  }
  pending_.clear();
  return out;
}

std::vector<uint32_t> FakeEngine::unreleased_drains() const {
  std::lock_guard lock(mu_);
  std::vector<uint32_t> ids;
  for (const FakeDrainPin& pin : plane_->drain_pins) ids.push_back(pin.inner.id);
  return ids;
}

void FakeEngine::release_drained() {
  std::lock_guard lock(mu_);
  plane_->drain_pins.clear();
}

uint64_t FakeEngine::current_generation() const {
  std::lock_guard lock(mu_);
  return current_;
}

EngineStats FakeEngine::stats() const {
  std::lock_guard lock(mu_);
  EngineStats s = stats_;
  s.live_inner_maps = plane_->slots.size();
  return s;
}

// ---- recovery ------------------------------------------------------------------------------

void FakeEngine::set_generation(uint64_t id, std::string label) {
  std::lock_guard lock(mu_);
  current_ = id;
  label_ = std::move(label);
}

void FakeEngine::restore_drained_totals(std::map<CounterKey, uint64_t> totals) {
  std::lock_guard lock(mu_);
  drained_totals_ = std::move(totals);
}

// Pins of maps the record counted go; the others are drained again (their counts are not in
// the record's totals).
Status FakeEngine::recover_drain_pins(const std::set<uint32_t>& counted) {
  std::lock_guard lock(mu_);
  for (FakeDrainPin& pin : plane_->drain_pins) {
    if (!counted.count(pin.inner.id)) pending_.push_back({pin.map, pin.slot, pin.inner, 0});
  }
  plane_->drain_pins.clear();
  return {};
}

Result<std::vector<SlotInfo>> FakeEngine::slots(const std::string& map) const {
  POLICYD_TRY(known(map));
  std::lock_guard lock(mu_);
  std::vector<SlotInfo> out;
  for (const auto& [key, inner] : plane_->slots) {
    if (key.first == map) out.push_back({key.second, inner.id, inner.installed_by});
  }
  return out;
}

Result<DrainRecord> FakeEngine::dump_slot(const std::string& map, const Bytes& slot) const {
  POLICYD_TRY(known(map));
  std::lock_guard lock(mu_);
  auto it = plane_->slots.find({map, slot});
  if (it == plane_->slots.end()) {
    return Error{ErrorCode::kNotFound, 0, describe(configs_.at(map), slot) + " is empty"};
  }
  DrainRecord r = record_of(map, slot, it->second);
  for (const Entry& e : it->second.entries) r.entries.push_back({e.key, {e.value}});
  return r;
}

// ---- reads ---------------------------------------------------------------------------------

StateSnapshot FakeEngine::state_snapshot() const {
  std::lock_guard lock(mu_);
  StateSnapshot out;
  out.generation = current_;
  out.label = label_;
  for (const auto& [name, cfg] : configs_) {
    MapSnapshot& m = out.maps.emplace_back();
    m.config = cfg;
    m.pin = pin_dir_ + "/" + name;
    for (const auto& [key, inner] : plane_->slots) {
      if (key.first == name) m.live.push_back({key.second, inner.id, inner.installed_by});
    }
  }
  return out;
}

Result<CounterReading> FakeEngine::read_counters(const std::string& only) const {
  if (!only.empty()) POLICYD_TRY(known(only));
  std::lock_guard lock(mu_);
  CounterReading out;
  for (const auto& [key, total] : drained_totals_) {
    if (only.empty() || key.map == only) out.table[{key.map, key.slot}].drained[key.field] += total;
  }
  for (const auto* list : {&pending_, &held_}) {
    for (const Pending& p : *list) {
      if (!only.empty() && p.map != only) continue;
      for (const auto& [field, n] : p.inner.counters) {
        out.table[{p.map, p.slot}].drained[field] += n;
      }
    }
  }
  for (const auto& [key, inner] : plane_->slots) {
    if (!only.empty() && key.first != only) continue;
    for (const auto& [field, n] : inner.counters) out.table[key].live[field] += n;
    out.maps.emplace(key.first, configs_.at(key.first));
  }
  return out;
}

Result<DrainRecord> FakeEngine::read_slot(const std::string& map, const Bytes& slot) const {
  return dump_slot(map, slot);
}

}  // namespace policyd::core::testing
