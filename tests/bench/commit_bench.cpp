// policyd_bench: what one commit costs against one raw outer-map update (the barrier unit), and
// how fast the builder fills a large inner map against a raw batch loop. Every figure is taken
// in this one run, so ratios compare like with like; README performance claims come from here.
// Not a test: it asserts nothing about speed and exits 0 unless a kernel call fails.
#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <spdlog/spdlog.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "core/builder.h"
#include "core/engine.h"
#include "core/model.h"
#include "core/slot_writer.h"
#include "core/validate.h"
#include "kernel/map.h"
#include "kernel/unique_fd.h"
#include "support/bpffs.h"
#include "util/result.h"
#include "util/worker_pool.h"

namespace policyd::bench {
namespace {

using Clock = std::chrono::steady_clock;
using core::Bytes;

constexpr uint32_t kMaxSlots = 64;
constexpr size_t kPoolThreads = 64;    // EngineConfig::barrier_threads default
constexpr uint32_t kSmallEntries = 4;  // entries per inner map in the commit cases
constexpr size_t kRawChunk = 4096;
constexpr double kCommitTarget = 1.5;  // engine commit, 64 slots over 4 maps, x one raw update
constexpr double kFillTarget = 0.8;    // engine build rate / raw batch-loop rate

struct Options {
  bool quick = false;
  int samples = 41;          // per grace-period case (odd: a true median)
  int naive64_samples = 15;  // naive 64 costs ~64 grace periods per sample
  int fill_runs = 5;
  uint32_t fill_entries = 1'000'000;
  bool commit = true;  // run the outer-map write section
  bool fill = true;    // run the fill section
};

[[noreturn]] void die(const std::string& what, const Error& e) {
  std::fprintf(stderr, "policyd_bench: %s: %s\n", what.c_str(), e.message().c_str());
  std::exit(1);
}

template <typename T>
T take(Result<T> r, const std::string& what) {
  if (!r.ok()) die(what, r.error());
  return std::move(r).value();
}

void take(const Status& st, const std::string& what) {
  if (!st.ok()) die(what, st.error());
}

template <typename F>
double time_ms(F&& f) {
  auto t0 = Clock::now();
  f();
  return ms_since(t0);
}

// ---------------------------------------------------------------------------------------------
// Outer-map writes

// One way of writing the slots of a case, and its samples.
struct Method {
  std::string name;
  int samples = 0;
  std::function<void()> prepare;  // untimed, before each sample
  std::function<void()> run;      // timed
  std::function<void()> after;    // untimed, after each sample
  std::vector<double> ms;
};

// Each round runs every method once in a fresh random order (fixed seed): a cyclic order would
// always put the same method right after the engine's drains, whose map frees finish in the
// background, and slow drift (other load, RCU state) must hit every method alike.
void run_interleaved(std::vector<Method>& methods, std::mt19937& rng) {
  int rounds = 0;
  for (const Method& m : methods) rounds = std::max(rounds, m.samples);
  std::vector<size_t> order(methods.size());
  std::iota(order.begin(), order.end(), 0);
  for (int r = 0; r < rounds; ++r) {
    std::shuffle(order.begin(), order.end(), rng);
    for (size_t i : order) {
      Method& m = methods[i];
      if (static_cast<int>(m.ms.size()) >= m.samples) continue;
      if (m.prepare) m.prepare();
      m.ms.push_back(time_ms(m.run));
      if (m.after) m.after();
    }
  }
}

struct CommitRow {
  std::string name;
  uint32_t n = 0;
  uint32_t k = 0;
  Summary s;
  std::string note;
  std::vector<double> samples;
};

// Outer maps written directly (baseline, naive, SlotWriter). Each slot alternates between two
// inner maps, so every measured write really replaces the map the slot held.
struct RawMaps {
  kernel::UniqueFd tmpl;
  std::vector<kernel::UniqueFd> outers;    // 4 ARRAY_OF_MAPS of kMaxSlots slots
  std::vector<kernel::UniqueFd> inner[2];  // kMaxSlots each, shared by the outer maps
  std::vector<std::vector<int>> held;      // [outer][slot]: which of inner[0/1] the slot holds

  // The inner map to write next into a slot (the one it does not hold); records the write.
  int next_inner(uint32_t outer, uint32_t slot) {
    int& h = held[outer][slot];
    h ^= 1;
    return inner[h][slot].get();
  }
};

kernel::MapSpec small_inner_spec(const std::string& name) {
  return kernel::MapSpec{BPF_MAP_TYPE_HASH, name, 4, 8, 16, 0, -1};
}

RawMaps make_raw_maps() {
  RawMaps m;
  m.tmpl = take(kernel::create_map(small_inner_spec("pb_tmpl")), "create inner template");
  for (uint32_t k = 0; k < 4; ++k) {
    kernel::MapSpec spec{
        BPF_MAP_TYPE_ARRAY_OF_MAPS, "pb_raw" + std::to_string(k), 4, 4, kMaxSlots, 0, m.tmpl.get()};
    m.outers.push_back(take(kernel::create_map(spec), "create raw outer map"));
    m.held.emplace_back(kMaxSlots, 1);
  }
  for (auto& set : m.inner) {
    for (uint32_t s = 0; s < kMaxSlots; ++s) {
      set.push_back(take(kernel::create_map(small_inner_spec("pb_in")), "create inner"));
    }
  }
  // Fill every slot once, with one batch per map, so the measured writes all replace a map.
  for (auto& outer : m.outers) {
    std::vector<uint32_t> keys, values;
    for (uint32_t s = 0; s < kMaxSlots; ++s) {
      keys.push_back(s);
      values.push_back(static_cast<uint32_t>(m.inner[1][s].get()));
    }
    kernel::BatchOutcome out =
        kernel::update_batch(outer.get(), keys.data(), values.data(), kMaxSlots);
    if (out.error) die("populate raw outer map", *out.error);
  }
  return m;
}

void raw_update(RawMaps& m, uint32_t outer, uint32_t slot) {
  const auto value = static_cast<uint32_t>(m.next_inner(outer, slot));
  take(kernel::update_elem(m.outers[outer].get(), &slot, &value), "raw outer-map update");
}

std::vector<core::OuterWrite> writes_for(RawMaps& m, uint32_t n, uint32_t k) {
  std::vector<core::OuterWrite> writes;
  for (uint32_t o = 0; o < k; ++o) {
    for (uint32_t s = 0; s < n / k; ++s) {
      core::OuterWrite w;
      w.outer_fd = m.outers[o].get();
      w.array = true;
      w.slot = core::array_slot(s);
      w.inner_fd = m.next_inner(o, s);
      w.what = "raw map " + std::to_string(o) + " slot " + std::to_string(s);
      writes.push_back(std::move(w));
    }
  }
  return writes;
}

void apply_round(core::SlotWriter& writer, const std::vector<core::OuterWrite>& writes) {
  core::RoundResult r = writer.apply(writes);
  if (r.error) die(std::string("SlotWriter ") + core::to_string(writer.strategy()), *r.error);
}

std::string calls(uint64_t n) { return std::to_string(n) + (n == 1 ? " call" : " calls"); }

std::string engine_map_name(uint32_t k) { return "pb_eng" + std::to_string(k); }

core::Generation small_generation(uint32_t n, uint32_t k, uint32_t tag) {
  core::Generation gen;
  gen.label = "bench";
  for (uint32_t o = 0; o < k; ++o) {
    for (uint32_t s = 0; s < n / k; ++s) {
      core::SlotChange c;
      c.map = engine_map_name(o);
      c.slot = core::array_slot(s);
      for (uint32_t e = 0; e < kSmallEntries; ++e) {
        core::Entry entry;
        entry.key.resize(4);
        std::memcpy(entry.key.data(), &e, 4);
        entry.value.assign(8, static_cast<uint8_t>(tag));
        c.entries.push_back(std::move(entry));
      }
      gen.changes.push_back(std::move(c));
    }
  }
  return gen;
}

struct CommitResults {
  Summary baseline;
  std::vector<double> baseline_samples;
  std::vector<CommitRow> rows;
  std::string engine_strategy;
  std::string engine_facts;
};

CommitResults run_commit_section(const Options& opt, const std::string& pin_dir) {
  CommitResults res;
  RawMaps raw = make_raw_maps();
  util::WorkerPool pool(kPoolThreads);
  auto batch_writer = take(core::SlotWriter::create(core::Strategy::kBatch, pool), "SlotWriter");
  auto conc_writer =
      take(core::SlotWriter::create(core::Strategy::kConcurrent, pool), "SlotWriter");

  core::EngineConfig cfg;
  cfg.pin_dir = pin_dir + "/commit";
  cfg.barrier = core::BarrierMode::kAuto;
  for (uint32_t k = 0; k < 4; ++k) {
    core::OuterMapConfig m;
    m.name = engine_map_name(k);
    m.kind = core::OuterKind::kArray;
    m.slots = kMaxSlots;
    m.inner.type = BPF_MAP_TYPE_HASH;
    m.inner.key_size = 4;
    m.inner.value_size = 8;
    m.inner.max_entries = 16;
    cfg.maps.push_back(std::move(m));
  }
  progress("opening engine (auto barrier mode: probes the kernel)");
  auto engine = take(core::Engine::open(cfg), "Engine::open");
  res.engine_strategy = core::to_string(engine->strategy());
  res.engine_facts = engine->kernel_facts().describe();
  {
    // Occupy every slot the cases touch, so engine commits replace maps like raw writes do.
    core::Generation all = small_generation(kMaxSlots * 4, 4, 0);
    take(engine->push(all), "engine warm-up push");
    take(engine->drain(), "engine drain");
  }

  std::vector<double> baseline_ms;
  std::mt19937 rng(20240611);
  uint32_t tag = 1;
  const struct { uint32_t n, k; } cases[] = {{1, 1}, {8, 1}, {8, 4}, {64, 1}, {64, 4}};
  for (const auto& c : cases) {
    const uint32_t n = c.n, k = c.k;
    progress("N=" + std::to_string(n) + " K=" + std::to_string(k));
    std::vector<core::OuterWrite> writes;
    std::vector<core::BuiltGeneration> built;
    core::Generation gen;
    auto plan_writes = [&] { writes = writes_for(raw, n, k); };
    core::CommitReport report;
    // Untimed: the commit did what the row claims (N slots, one write round), then drain so
    // the next commit starts from the same state.
    auto check_and_drain = [&] {
      if (report.slots_written != n || report.rounds != 1) {
        die("engine commit", Error{ErrorCode::kInternal, 0,
                                   "wrote " + std::to_string(report.slots_written) + " slots in " +
                                       std::to_string(report.rounds) + " rounds, expected " +
                                       std::to_string(n) + " in 1"});
      }
      take(engine->drain(), "engine drain");
    };

    std::vector<Method> methods;
    methods.push_back(
        Method{"baseline", opt.samples, nullptr, [&] { raw_update(raw, 0, 0); }, nullptr, {}});
    methods.push_back(Method{"naive",
                             n == 64 ? opt.naive64_samples : opt.samples,
                             nullptr,
                             [&] {
                               for (uint32_t o = 0; o < k; ++o)
                                 for (uint32_t s = 0; s < n / k; ++s) raw_update(raw, o, s);
                             },
                             nullptr,
                             {}});
    methods.push_back(Method{"writer_batch",
                             opt.samples,
                             plan_writes,
                             [&] { apply_round(*batch_writer, writes); },
                             nullptr,
                             {}});
    methods.push_back(Method{"writer_concurrent",
                             opt.samples,
                             plan_writes,
                             [&] { apply_round(*conc_writer, writes); },
                             nullptr,
                             {}});
    methods.push_back(Method{"engine_commit",
                             opt.samples,
                             [&] {
                               built.clear();
                               built.push_back(take(engine->build(small_generation(n, k, ++tag)),
                                                    "engine build"));
                             },
                             [&] { report = take(engine->commit(std::move(built)), "commit"); },
                             check_and_drain,
                             {}});
    methods.push_back(Method{"engine_push",
                             opt.samples,
                             [&] { gen = small_generation(n, k, ++tag); },
                             [&] { report = take(engine->push(gen), "engine push"); },
                             check_and_drain,
                             {}});
    run_interleaved(methods, rng);

    baseline_ms.insert(baseline_ms.end(), methods[0].ms.begin(), methods[0].ms.end());
    const char* labels[] = {"",
                            "naive: sequential single updates",
                            "SlotWriter batch (1 round)",
                            "SlotWriter concurrent (1 round)",
                            "Engine::commit (prebuilt)",
                            "Engine::push (build+commit)"};
    for (size_t i = 1; i < methods.size(); ++i) {
      CommitRow row{labels[i], n, k, summarize(methods[i].ms), "", methods[i].ms};
      if (methods[i].name == "writer_batch") {
        row.note = calls(batch_writer->stats().last_round_calls);
      } else if (methods[i].name == "writer_concurrent") {
        row.note = calls(conc_writer->stats().last_round_calls);
      } else if (methods[i].name == "naive") {
        row.note = calls(n);
      } else if (methods[i].name == "engine_commit" || methods[i].name == "engine_push") {
        row.note = calls(engine->stats().writer.last_round_calls) + ", " + res.engine_strategy;
      }
      res.rows.push_back(std::move(row));
    }
  }
  res.baseline = summarize(baseline_ms);
  res.baseline_samples = std::move(baseline_ms);
  return res;
}

// ---------------------------------------------------------------------------------------------
// Fill rate

struct FillRow {
  std::string name;
  Summary s;  // ms
  std::string note;
};

struct FillResults {
  uint32_t entries = 0;
  double gen_construct_ms = 0;
  std::vector<FillRow> rows;
  double engine_build_ms = 0;     // median Engine::build
  double raw_loop_ms = 0;         // median raw batch loop (map created beforehand)
  double raw_create_loop_ms = 0;  // median create + raw batch loop
  double engine_fill_ms = 0;      // median kernel::fill inside the builder's path
};

// The same packing as builder.cpp's pack_entries (not exported): for phase timing only.
struct Packed {
  Bytes keys;
  Bytes values;
};
Packed pack_like_builder(const core::OuterMapConfig& map, const std::vector<core::Entry>& entries) {
  const core::InnerTemplate& inner = map.inner;
  Packed p;
  const size_t stride = kernel::syscall_value_size(inner.type, inner.value_size);
  p.keys.resize(entries.size() * inner.key_size);
  p.values.assign(entries.size() * stride, 0);
  for (size_t i = 0; i < entries.size(); ++i) {
    std::memcpy(p.keys.data() + i * inner.key_size, entries[i].key.data(), inner.key_size);
    Bytes value = entries[i].value;  // the builder copies each value to zero counter fields
    for (const core::CounterField& c : inner.counters) {
      std::memset(value.data() + c.offset, 0, c.size);
    }
    std::memcpy(p.values.data() + i * stride, value.data(), inner.value_size);
  }
  return p;
}

void settle() {
  // Freeing a 1M-entry map runs in a kworker after a grace period; let it finish so it does
  // not steal one of the two CPUs from the next timed run.
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
}

FillResults run_fill_section(const Options& opt, const std::string& pin_dir) {
  FillResults res;
  res.entries = opt.fill_entries;
  const uint32_t n = opt.fill_entries;

  core::OuterMapConfig map;
  map.name = "pb_fill";
  map.kind = core::OuterKind::kArray;
  map.slots = 1;
  map.drain = core::DrainMode::kNone;
  map.inner.type = BPF_MAP_TYPE_HASH;
  map.inner.key_size = 4;
  map.inner.value_size = 16;
  map.inner.max_entries = n;
  core::EngineConfig cfg;
  cfg.pin_dir = pin_dir + "/fill";
  cfg.barrier = core::BarrierMode::kBatch;  // no probe: this engine never commits
  cfg.maps.push_back(map);
  progress("opening fill engine");
  auto engine = take(core::Engine::open(cfg), "Engine::open (fill)");

  progress("constructing a generation of " + std::to_string(n) + " entries");
  core::Generation gen;
  res.gen_construct_ms = time_ms([&] {
    gen.label = "fill";
    core::SlotChange c;
    c.map = map.name;
    c.slot = core::array_slot(0);
    c.entries.resize(n);
    for (uint32_t i = 0; i < n; ++i) {
      c.entries[i].key.resize(4);
      std::memcpy(c.entries[i].key.data(), &i, 4);
      c.entries[i].value.resize(16);
      const uint64_t a = i, b = ~uint64_t{i};
      std::memcpy(c.entries[i].value.data(), &a, 8);
      std::memcpy(c.entries[i].value.data() + 8, &b, 8);
    }
    gen.changes.push_back(std::move(c));
  });
  const std::vector<core::Entry>& entries = gen.changes[0].entries;

  // The raw side's contiguous buffers, prepared once, outside every timing.
  Bytes raw_keys(size_t{n} * 4), raw_values(size_t{n} * 16);
  for (uint32_t i = 0; i < n; ++i) {
    std::memcpy(raw_keys.data() + size_t{i} * 4, entries[i].key.data(), 4);
    std::memcpy(raw_values.data() + size_t{i} * 16, entries[i].value.data(), 16);
  }
  auto raw_create = [&] {
    bpf_map_create_opts o{};
    o.sz = sizeof(o);
    const int fd = bpf_map_create(BPF_MAP_TYPE_HASH, "pb_raw_fill", 4, 16, n, &o);
    if (fd < 0) die("bpf_map_create (raw fill)", sys_error(errno, "create"));
    return kernel::UniqueFd(fd);
  };
  auto raw_loop = [&](int fd) {
    bpf_map_batch_opts o{};
    o.sz = sizeof(o);
    for (size_t done = 0; done < n;) {
      auto count = static_cast<uint32_t>(std::min(kRawChunk, n - done));
      if (bpf_map_update_batch(fd, raw_keys.data() + done * 4, raw_values.data() + done * 16,
                               &count, &o) != 0) {
        die("bpf_map_update_batch (raw fill)", sys_error(errno, "batch update"));
      }
      done += count;
    }
  };

  util::WorkerPool phase_pool(1);
  std::vector<double> build, raw_only, raw_with_create, raw_create_ms;
  std::vector<double> ph_validate, ph_create, ph_pack, ph_fill;
  for (int r = 0; r < opt.fill_runs; ++r) {
    progress("fill run " + std::to_string(r + 1) + "/" + std::to_string(opt.fill_runs));
    // Alternate which side goes first, so neither always runs on a freshly settled machine.
    auto engine_side = [&] {
      {
        core::BuiltGeneration b;
        build.push_back(time_ms([&] { b = take(engine->build(gen), "Engine::build (fill)"); }));
        if (b.entries != n) die("Engine::build", invalid_argument("wrong entry count"));
      }
      settle();
      // The builder's phases one by one, each where the builder runs it: validation on the
      // calling thread, create + pack + fill in a pool task (pack is a replica, not exported).
      ph_validate.push_back(
          time_ms([&] { take(core::validate_generation(gen, engine->maps()), "validate"); }));
      std::vector<std::function<void()>> task;
      task.emplace_back([&] {
        kernel::UniqueFd fd;
        ph_create.push_back(
            time_ms([&] { fd = take(core::create_inner_map(map), "create_inner_map"); }));
        Packed p;
        ph_pack.push_back(time_ms([&] { p = pack_like_builder(map, entries); }));
        ph_fill.push_back(time_ms([&] {
          take(kernel::fill(fd.get(), p.keys.data(), 4, p.values.data(), 16, n), "kernel::fill");
        }));
      });
      phase_pool.run_all(std::move(task));
    };
    auto raw_side = [&] {
      {
        kernel::UniqueFd fd;
        raw_with_create.push_back(time_ms([&] {
          fd = raw_create();
          raw_loop(fd.get());
        }));
      }
      settle();
      kernel::UniqueFd fd;
      raw_create_ms.push_back(time_ms([&] { fd = raw_create(); }));
      raw_only.push_back(time_ms([&] { raw_loop(fd.get()); }));
    };
    if (r % 2 == 0) {
      engine_side();
      settle();
      raw_side();
    } else {
      raw_side();
      settle();
      engine_side();
    }
    settle();
  }

  Summary sb = summarize(build), sro = summarize(raw_only), src = summarize(raw_with_create);
  Summary sf = summarize(ph_fill);
  res.engine_build_ms = sb.median;
  res.raw_loop_ms = sro.median;
  res.raw_create_loop_ms = src.median;
  res.engine_fill_ms = sf.median;
  res.rows.push_back({"Engine::build (validate+create+pack+fill)", sb, ""});
  res.rows.push_back({"  phase: validate_generation", summarize(ph_validate), ""});
  res.rows.push_back({"  phase: create_inner_map", summarize(ph_create), ""});
  res.rows.push_back(
      {"  phase: pack entries", summarize(ph_pack), "builder replica, on a pool thread"});
  res.rows.push_back({"  phase: kernel::fill (pure fill)", sf, "chunk 4096"});
  res.rows.push_back({"raw: create + update_batch loop", src, ""});
  res.rows.push_back({"  raw: bpf_map_create", summarize(raw_create_ms), ""});
  res.rows.push_back({"  raw: update_batch loop (pure fill)", sro, "chunk 4096"});
  return res;
}

// ---------------------------------------------------------------------------------------------

Options parse_options(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const std::string& prefix) -> long {
      return std::strtol(a.c_str() + prefix.size(), nullptr, 10);
    };
    if (a == "--quick") {
      opt.quick = true;
      opt.samples = 3;
      opt.naive64_samples = 2;
      opt.fill_runs = 1;
      opt.fill_entries = 100'000;
    } else if (a.rfind("--samples=", 0) == 0) {
      opt.samples = static_cast<int>(value("--samples="));
      opt.naive64_samples = std::min(opt.naive64_samples, opt.samples);
    } else if (a.rfind("--fill-runs=", 0) == 0) {
      opt.fill_runs = static_cast<int>(value("--fill-runs="));
    } else if (a.rfind("--fill-entries=", 0) == 0) {
      opt.fill_entries = static_cast<uint32_t>(value("--fill-entries="));
    } else if (a == "--only=commit") {
      opt.fill = false;
    } else if (a == "--only=fill") {
      opt.commit = false;
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: policyd_bench [--quick] [--samples=N] [--fill-runs=N] [--fill-entries=N] "
          "[--only=commit|fill]\n"
          "  --quick          smoke run: 3 samples, 1 fill run of 100000 entries\n"
          "  --samples=N      samples per grace-period case (default 41; naive N=64: 15)\n"
          "  --fill-runs=N    runs of the fill comparison (default 5)\n"
          "  --fill-entries=N entries (and max_entries) of the fill map (default 1000000)\n"
          "  --only=commit    only the outer-map write section; --only=fill: only the fill\n"
          "Needs root (bpf syscall, bpffs mount). Exit 0: ran; 77: bpf not permitted "
          "(skip); 1: a kernel call failed.\n");
      std::exit(0);
    } else {
      std::fprintf(stderr, "policyd_bench: unknown option %s (try --help)\n", a.c_str());
      std::exit(2);
    }
  }
  if (opt.samples < 1 || opt.naive64_samples < 1 || opt.fill_runs < 1 || opt.fill_entries < 1) {
    std::fprintf(stderr, "policyd_bench: counts must be positive\n");
    std::exit(2);
  }
  return opt;
}

std::string histogram(const std::vector<double>& ms) {
  std::map<long, int> buckets;
  for (double v : ms) buckets[std::lround(v / 4.0) * 4]++;
  std::string out;
  for (auto [b, count] : buckets) out += std::to_string(b) + "ms:" + std::to_string(count) + " ";
  return out;
}

void print_commit(const CommitResults& c) {
  std::printf("engine:  barrier strategy %s (auto; %s)\n", c.engine_strategy.c_str(),
              c.engine_facts.c_str());
  std::printf("\n== Outer-map slot writes: N slots over K ARRAY_OF_MAPS (N/K each), ms ==\n");
  std::printf(
      "ratio = median / baseline median (mean ratio: mean / baseline mean; grace periods "
      "come in 4 ms jiffies, so samples are multimodal); SlotWriter pool %zu threads; "
      "inner maps: hash, %u entries\n",
      kPoolThreads, kSmallEntries);
  std::printf("%-34s %3s %2s %4s %8s %8s %8s %8s %6s  %s\n", "case", "N", "K", "n", "median", "p90",
              "mean", "ratio", "mean r", "notes");
  std::printf("%-34s %3d %2d %4zu %8.2f %8.2f %8.2f %7.2fx %5.2fx  %s\n",
              "baseline: one raw update_elem", 1, 1, c.baseline.n, c.baseline.median,
              c.baseline.p90, c.baseline.mean, 1.0, 1.0, "the barrier unit (all cases pooled)");
  uint32_t last_n = 0, last_k = 0;
  for (const CommitRow& r : c.rows) {
    if (r.n != last_n || r.k != last_k) std::printf("\n");
    last_n = r.n;
    last_k = r.k;
    std::printf("%-34s %3u %2u %4zu %8.2f %8.2f %8.2f %7.2fx %5.2fx  %s\n", r.name.c_str(), r.n,
                r.k, r.s.n, r.s.median, r.s.p90, r.s.mean, r.s.median / c.baseline.median,
                r.s.mean / c.baseline.mean, r.note.c_str());
  }
  std::printf("\n-- sample distributions, 4 ms buckets (one jiffy at HZ=250) --\n");
  std::printf("%-34s %3u %2u  %s\n", "baseline: one raw update_elem", 1u, 1u,
              histogram(c.baseline_samples).c_str());
  for (const CommitRow& r : c.rows) {
    std::printf("%-34s %3u %2u  %s\n", r.name.c_str(), r.n, r.k, histogram(r.samples).c_str());
  }
}

void print_fill(const FillResults& f) {
  const double n = f.entries;
  auto rate = [&](double ms) { return n / (ms / 1000.0); };
  std::printf(
      "\n== Fill: one HASH inner map, u32 key, 16-byte value, %u entries "
      "(max_entries %u), ms ==\n",
      f.entries, f.entries);
  std::printf("(building the Generation itself, untimed below: %.1f ms)\n", f.gen_construct_ms);
  std::printf("%-42s %4s %9s %9s %14s  %s\n", "case", "n", "median", "p90", "entries/s", "notes");
  for (const FillRow& r : f.rows) {
    std::printf("%-42s %4zu %9.1f %9.1f %14.0f  %s\n", r.name.c_str(), r.s.n, r.s.median, r.s.p90,
                rate(r.s.median), r.note.c_str());
  }
  std::printf(
      "engine/raw rate ratio: build vs create+loop %.2fx | build vs loop only %.2fx | "
      "pure fill vs loop %.2fx\n",
      f.raw_create_loop_ms / f.engine_build_ms, f.raw_loop_ms / f.engine_build_ms,
      f.raw_loop_ms / f.engine_fill_ms);
}

void print_targets(const Options& opt, const CommitResults& c, const FillResults& f) {
  std::printf("\n== Targets ==\n");
  std::printf("%-58s %8s %8s  %s\n", "target", "measured", "goal", "verdict");
  if (opt.commit) {
    double commit64 = 0, commit64_1 = 0, naive64 = 0;
    for (const CommitRow& r : c.rows) {
      if (r.n != 64) continue;
      const double ratio = r.s.median / c.baseline.median;
      if (r.name.rfind("Engine::commit", 0) == 0) (r.k == 4 ? commit64 : commit64_1) = ratio;
      if (r.k == 4 && r.name.rfind("naive", 0) == 0) naive64 = ratio;
    }
    std::printf("%-58s %7.2fx %7s  %s\n", "Engine::commit 64 slots / 4 maps vs one raw update",
                commit64, "<=1.5x", verdict(commit64 <= kCommitTarget));
    std::printf("%-58s %7.2fx %7s  %s\n", "Engine::commit 64 slots / 1 map (reference)", commit64_1,
                "<=1.5x", "info");
    std::printf("%-58s %7.2fx %7s  %s\n", "naive 64 slots / 4 maps (reference)", naive64, "~64x",
                "info");
  }
  if (opt.fill) {
    const double fresh = f.raw_create_loop_ms / f.engine_build_ms;
    const double loop = f.raw_loop_ms / f.engine_build_ms;
    std::printf("%-58s %7.2fx %7s  %s\n", "fill rate: Engine::build vs raw create + batch loop",
                fresh, ">=0.8x", verdict(fresh >= kFillTarget));
    std::printf("%-58s %7.2fx %7s  %s\n", "fill rate: Engine::build vs raw batch loop alone", loop,
                ">=0.8x", verdict(loop >= kFillTarget));
  }
}

int run(int argc, char** argv) {
  const Options opt = parse_options(argc, argv);
  const auto t_start = Clock::now();

  std::string cmd;
  for (int i = 0; i < argc; ++i) cmd += (i ? " " : "") + std::string(argv[i]);
  utsname uts{};
  ::uname(&uts);
  std::printf("policyd_bench\n");
  std::printf("command: %s\n", cmd.c_str());
  std::printf("kernel:  %s %s (%s), online cpus %ld, possible cpus %u\n", uts.sysname, uts.release,
              uts.machine, ::sysconf(_SC_NPROCESSORS_ONLN), kernel::possible_cpus());
  std::printf("load:    %s at start\n", load_average(true).c_str());
  std::fflush(stdout);

  require_bpf("policyd_bench");
  spdlog::set_level(spdlog::level::warn);
  Result<test::PrivateBpffs> fs = test::PrivateBpffs::create();
  if (!fs.ok()) {
    if (fs.error().sys_errno == EPERM && !test::privileged_required()) {
      std::printf("SKIP: cannot mount a private bpffs (%s)\n", fs.error().message().c_str());
      return kExitSkip;
    }
    die("private bpffs", fs.error());
  }

  CommitResults c;
  FillResults f;
  if (opt.commit) c = run_commit_section(opt, fs->path());
  if (opt.fill) f = run_fill_section(opt, fs->path());

  std::printf(
      "samples: %d per grace-period case (naive N=64: %d), interleaved in random order; "
      "fill: %d run(s) of %u entries%s\n",
      opt.samples, opt.naive64_samples, opt.fill_runs, opt.fill_entries,
      opt.quick ? "  [--quick: smoke run, figures not meaningful]" : "");
  if (opt.commit) print_commit(c);
  if (opt.fill) print_fill(f);
  print_targets(opt, c, f);
  // Not judged: this run's own grace-period waits (uninterruptible sleep) count in it.
  std::printf("\nload:    %s at end\n", load_average(false).c_str());
  std::printf("total bench time %.1f s\n", ms_since(t_start) / 1000.0);
  return 0;
}

}  // namespace
}  // namespace policyd::bench

int main(int argc, char** argv) {
  try {
    return policyd::bench::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "policyd_bench: %s\n", e.what());
    return 1;
  }
}
