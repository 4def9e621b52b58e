// G8 end to end: what policyd records in state_dir and what it does with it at the next start.
// Restart with maps pinned (adopt, touch nothing), reboot (empty bpffs: re-create before ready),
// drains a previous run left pinned, corrupt records (refuse to start, say how to recover), map
// removal on reload, and the crash loop: SIGKILL at random moments while pushes stream in and a
// counter program runs, 50 times.
#include <bpf/libbpf.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "core/pin_paths.h"
#include "daemon_fixture.h"
#include "kernel/map.h"
#include "support/prog_run.h"
#include "test_progs.h"
#include "test_progs_ptr.h"

namespace policyd::e2e {
namespace {

namespace fs = std::filesystem;

using test::SkelPtr;

constexpr uint32_t kSlot = 5;  // the slot the counter program looks up

class DurabilityTest : public DaemonTest {
 protected:
  DaemonOptions daemon_options() const override {
    DaemonOptions o;
    o.barrier = "batch";  // no probe at every start: the crash loop restarts 50 times
    o.log_level = "info";
    return o;
  }

  // test_progs with arr_lpm replaced by the pinned acl; the program looks up 10.1.2.3 in
  // acl slot kSlot and bumps the hit counter of the entry it finds.
  SkelPtr load_counter_program() {
    auto acl = kernel::open_pinned(pin("acl"));
    EXPECT_TRUE(acl.ok()) << acl.error().message();
    if (!acl.ok()) return nullptr;
    std::string error;
    SkelPtr skel = test::load_counting_acl(acl->get(), kSlot, error);
    EXPECT_TRUE(skel) << error;
    return skel;
  }

  uint64_t counter_total(const std::string& map, const std::string& field) {
    return counter_sum(map, field).total();
  }
  uint64_t total_hits() { return counter_total("acl", "hits"); }

  std::string state_db() const { return daemon_state_dir() + "/state.db"; }
  std::string daemon_state_dir() const {
    return const_cast<DurabilityTest*>(this)->daemon().state_dir();
  }

  // Where the daemon pins a replaced inner map until its drain is durable.
  std::string drain_pin(const std::string& map, const std::string& slot_hex, uint64_t installed_by,
                        uint32_t id) {
    return core::PinPaths(pin_dir()).drain_pin(map, slot_hex, installed_by, id);
  }

  // Names under <pin_dir>/_drain.
  std::vector<std::string> drain_pins() {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(core::PinPaths(pin_dir()).drain_dir(), ec)) {
      names.push_back(e.path().filename());
    }
    return names;
  }

  // Ids of the lpm_trie maps named "acl" alive in the kernel (acl's inner maps, and any other
  // test's that happen to be alive).
  static std::set<uint32_t> acl_tries_alive() {
    std::set<uint32_t> alive;
    auto ids = kernel::list_map_ids();
    EXPECT_TRUE(ids.ok()) << ids.error().message();
    if (!ids.ok()) return alive;
    for (uint32_t id : *ids) {
      auto fd = kernel::map_fd_by_id(id);
      if (!fd.ok()) continue;
      auto info = kernel::map_info(fd->get());
      if (info.ok() && info->type == BPF_MAP_TYPE_LPM_TRIE && info->name == "acl") alive.insert(id);
    }
    return alive;
  }

  // Map ids the running daemon holds an fd of (/proc/<pid>/fdinfo "map_id:").
  std::set<uint32_t> daemon_held_maps() {
    std::set<uint32_t> ids;
    const std::string dir = "/proc/" + std::to_string(daemon().pid()) + "/fdinfo";
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      std::ifstream in(e.path());
      std::string line;
      while (std::getline(in, line)) {
        if (line.rfind("map_id:", 0) == 0) ids.insert(std::stoul(line.substr(7)));
      }
    }
    return ids;
  }

  // Every acl inner map alive in the kernel that was not there before the test (`before`)
  // sits in an acl slot, once the kernel has finished freeing what a killed process left
  // (frees are deferred); the only others are the running daemon's pool of fresh inner maps
  // (core/inner_pool.h): held by its fds and at most kAclPooled of them. A fatal failure, so
  // that the crash loop stops at the first leak.
  void assert_no_leaked_inner_maps(const std::set<uint32_t>& before, const std::string& when) {
    constexpr size_t kAclPooled = 64;  // pool_target(acl): min(64, its 64 slots, memory bound)
    std::set<uint32_t> leaked;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    do {
      std::set<uint32_t> in_slots;
      const KernelSnapshot snap = snapshot();
      for (const auto& [slot, id] : snap.at("acl")) in_slots.insert(id);
      const std::set<uint32_t> held = daemon_held_maps();
      leaked.clear();
      size_t pooled = 0;
      for (uint32_t id : acl_tries_alive()) {
        if (before.count(id) || in_slots.count(id)) continue;
        if (held.count(id) && pooled < kAclPooled) {
          ++pooled;
          continue;
        }
        leaked.insert(id);
      }
      if (leaked.empty()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    } while (std::chrono::steady_clock::now() < deadline);
    FAIL() << when << ": " << leaked.size()
           << " acl inner map(s) alive in the kernel but in no slot";
  }

  // SIGKILL and wait for the exit.
  void kill_daemon() {
    daemon().signal(SIGKILL);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (daemon().running() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ASSERT_FALSE(daemon().running()) << "policyd survived SIGKILL";
  }

  // Starts the daemon and expects it to refuse; returns its log.
  std::string start_expect_refusal() {
    Status st = daemon().start(std::chrono::seconds(5));
    EXPECT_FALSE(st.ok()) << "policyd started on a corrupt record";
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (daemon().running() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_FALSE(daemon().running());
    EXPECT_NE(daemon().exit_code().value_or(0), 0);
    return daemon().log();
  }
};

// The kernel's acl entries of `slot` (nullopt: empty slot).
std::optional<std::map<Bytes, Bytes>> acl_entries(const std::string& pin_dir, uint32_t slot) {
  auto ks = read_kernel_slot(pin_dir + "/acl", u32le(slot));
  EXPECT_TRUE(ks.ok()) << ks.error().message();
  if (!ks.ok() || !ks->has_value()) return std::nullopt;
  return (*ks)->entries;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

void unpin_everything(const std::string& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_directory()) {
      unpin_everything(e.path());
      ::rmdir(e.path().c_str());
    } else {
      ::unlink(e.path().c_str());
    }
  }
}

TEST_F(DurabilityTest, G8_G9_RestartKeepsGenerationIdsHistoryAndRequestIds) {
  v1::PushGenerationRequest a = acl_push(0, {{"10.0.0.0/8", 1}}, "a");
  a.set_request_id("req-a");
  const uint64_t ga = push_ok(a);
  const uint64_t gb = push_ok(acl_push(1, {{"192.168.0.0/16", 2}}, "b"));
  ASSERT_EQ(gb, ga + 1);
  const KernelSnapshot snap = snapshot();
  stop_daemon_expect_clean();
  restart_daemon();
  ASSERT_FALSE(HasFatalFailure());

  EXPECT_EQ(snapshot(), snap) << "a restart with the maps pinned must not touch the data plane";
  EXPECT_TRUE(
      contains_all(daemon().log(), {"adopted generation " + std::to_string(gb), "not touched"}))
      << daemon().log();
  EXPECT_EQ(get_state().generation(), gb) << "the generation id must survive a restart";
  v1::ListGenerationsResponse gens = list_generations();
  ASSERT_GE(gens.generations_size(), 2);
  EXPECT_EQ(gens.generations(0).generation(), gb);
  EXPECT_EQ(gens.generations(0).label(), "b");
  EXPECT_EQ(gens.generations(1).label(), "a");

  // A client retrying an acked push after the restart gets the original answer.
  v1::PushGenerationResponse resp;
  grpc::Status s = push(a, &resp);
  ASSERT_TRUE(s.ok()) << describe(s);
  EXPECT_EQ(resp.generation(), ga);
  EXPECT_TRUE(resp.replayed());
  // Rollback reaches generations committed before the restart.
  EXPECT_EQ(push_ok(acl_push(2, {{"172.16.0.0/12", 3}}, "c")), gb + 1);
  CmdResult r = ctl({"rollback", std::to_string(ga)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(acl_entries(pin_dir(), 1).has_value()) << "rollback to a did not empty slot 1";
  EXPECT_TRUE(acl_entries(pin_dir(), 0).has_value());
}

TEST_F(DurabilityTest, G8_RebootRecreatesTheRecordedGenerationBeforeReady) {
  push_ok(acl_push(0, {{"10.0.0.0/8", 1}}, "a"));
  v1::PushGenerationRequest req = acl_push(3, {{"10.1.0.0/16", 4}, {"10.2.0.0/16", 5}}, "b");
  add_change(req, "ports", fields_slot({{"ifindex", "7"}}),
             {typed_entry({{"port", "53"}, {"proto", "17"}}, {{"verdict", "1"}})});
  const uint64_t gb = push_ok(req);
  const auto slot0 = acl_entries(pin_dir(), 0);
  const auto slot3 = acl_entries(pin_dir(), 3);
  ASSERT_TRUE(slot0 && slot3);
  stop_daemon_expect_clean();

  unpin_everything(pin_dir());  // what a reboot leaves: an empty bpffs
  ASSERT_FALSE(kernel::open_pinned(pin("acl")).ok());
  restart_daemon();  // returns once the API answers
  ASSERT_FALSE(HasFatalFailure());

  EXPECT_EQ(acl_entries(pin_dir(), 0), slot0) << "slot 0 was not re-created before ready";
  EXPECT_EQ(acl_entries(pin_dir(), 3), slot3) << "slot 3 was not re-created before ready";
  Bytes ports_slot = {7, 0, 0, 0};
  auto ports = read_kernel_slot(pin("ports"), ports_slot);
  ASSERT_TRUE(ports.ok()) << ports.error().message();
  ASSERT_TRUE(ports->has_value()) << "ports slot 7 was not re-created";
  EXPECT_EQ((*ports)->entries.size(), 1u);
  EXPECT_EQ(get_state().generation(), gb) << "a re-commit keeps the recorded generation id";
  EXPECT_TRUE(contains_all(daemon().log(), {"restored generation " + std::to_string(gb)}))
      << daemon().log();
  // GetState agrees with the kernel.
  EXPECT_EQ(snapshot().at("acl").size(), 2u);
}

TEST_F(DurabilityTest, G5_G8_DrainsLeftPinnedByAnEarlierRunAreFinishedAtStart) {
  push_ok(acl_push(kSlot, {{"10.1.2.0/24", 7}}, "a"));
  stop_daemon_expect_clean();

  // What a crash between swap and durable drain record leaves: a replaced inner map, pinned
  // under _drain, holding counts that no record has. Made by hand with acl's inner layout.
  kernel::MapSpec spec{BPF_MAP_TYPE_LPM_TRIE, "acl", kAclKeySize, kAclValueSize, kAclInnerMax,
                       BPF_F_NO_PREALLOC,     -1};
  auto inner = kernel::create_map(spec);
  ASSERT_TRUE(inner.ok()) << inner.error().message();
  ASSERT_TRUE(
      kernel::update_elem(inner->get(), acl_key(24, 10, 1, 2, 0).data(), acl_value(7, 4242).data())
          .ok());
  auto info = kernel::map_info(inner->get());
  ASSERT_TRUE(info.ok());
  const std::string pin_path = drain_pin("acl", hex(u32le(kSlot)), 1, info->id);
  ASSERT_TRUE(kernel::pin(inner->get(), pin_path).ok());
  inner->reset();

  // And one of the hash outer map ports (slot key: ifindex 9), with its packets counter.
  kernel::MapSpec ports_spec{
      BPF_MAP_TYPE_HASH, "ports", kPortsKeySize, kPortsValueSize, kPortsInnerMax, 0, -1};
  auto ports_inner = kernel::create_map(ports_spec);
  ASSERT_TRUE(ports_inner.ok()) << ports_inner.error().message();
  ASSERT_TRUE(
      kernel::update_elem(ports_inner->get(), ports_key(53, 17).data(), ports_value(1, 31).data())
          .ok());
  auto ports_info = kernel::map_info(ports_inner->get());
  ASSERT_TRUE(ports_info.ok());
  ASSERT_TRUE(
      kernel::pin(ports_inner->get(), drain_pin("ports", hex(u32le(9)), 2, ports_info->id)).ok());
  ports_inner->reset();

  restart_daemon();
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_EQ(total_hits(), 4242u) << "the pinned map's counts were not drained at start";
  EXPECT_EQ(counter_total("ports", "packets"), 31u) << "the hash slot's pin was not drained";
  EXPECT_TRUE(drain_pins().empty()) << "drain pins left after the start: " << drain_pins().size();
  // And they are durable: another restart does not count them twice.
  stop_daemon_expect_clean();
  restart_daemon();
  EXPECT_EQ(total_hits(), 4242u);
}

// That the pins matter shows in the crash loop (with drain pins turned off it loses counts);
// here: none is left once the drains are durable, and the totals survive a clean restart.
TEST_F(DurabilityTest, G5_G8_NoDrainPinIsLeftAndDrainedTotalsSurviveARestart) {
  SkelPtr skel = load_counter_program();
  ASSERT_NE(skel, nullptr);
  for (uint32_t i = 0; i < 5; ++i) {
    push_ok(acl_push(kSlot, {{"10.1.2.0/24", i}}, "g" + std::to_string(i)));
    ASSERT_TRUE(test::run_xdp(bpf_program__fd(skel->progs.count_arr_lpm), 10).ok());
  }
  // The last drain is written when the committer goes idle; then no pin is left.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!drain_pins().empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(drain_pins().empty());
  EXPECT_EQ(total_hits(), 50u);
  stop_daemon_expect_clean();
  restart_daemon();
  EXPECT_EQ(total_hits(), 50u) << "drained totals did not survive the restart";
}

// An atomic group's flip leaves the replaced map in the now inactive bank until the next commit
// writes that bank. A crash before its drain is durable leaves it pinned under _drain too: the
// next start must drain it (it is out of the data plane), not take it for a live map.
class GroupDurabilityTest : public DurabilityTest {
 protected:
  DaemonOptions daemon_options() const override {
    DaemonOptions o = DurabilityTest::daemon_options();
    o.maps_yaml += R"(  - name: g_acl
    type: array_of_maps
    slots: 4
    group: gx
    inner:
      type: hash
      max_entries: 8
      key:   [{name: k, type: u32}]
      value: [{name: hits, type: u64, counter: true}]
)";
    return o;
  }

  uint64_t push_group(uint64_t value) {
    v1::PushGenerationRequest req;
    add_change(req, "g_acl", index_slot(0), {raw_entry(u32le(1), u64le(value))});
    return push_ok(req);
  }

  static Bytes u64le(uint64_t v) {
    Bytes b(8);
    std::memcpy(b.data(), &v, 8);
    return b;
  }
};

TEST_F(GroupDurabilityTest, G7_G8_AMapTheFlipReplacedIsDrainedAtStartThoughTheOtherBankHoldsIt) {
  push_group(0);
  push_group(0);  // the first map now sits in the inactive bank only
  // One more commit elsewhere: its record no longer lists the first map among the drained
  // ones still pinned, as after a crash before that drain was recorded.
  push_ok(acl_push(0, {{"10.0.0.0/8", 1}}, "elsewhere"));
  stop_daemon_expect_clean();

  auto bank = kernel::open_pinned(pin("gx_bank"));
  ASSERT_TRUE(bank.ok()) << bank.error().message();
  uint32_t key = 0, active = 0;
  ASSERT_TRUE(kernel::lookup_elem(bank->get(), &key, &active).ok());
  const std::string inactive_pin = pin(active == 0 ? "g_acl_b" : "g_acl_a");
  auto ks = read_kernel_slot(inactive_pin, u32le(0));
  ASSERT_TRUE(ks.ok()) << ks.error().message();
  ASSERT_TRUE(ks->has_value()) << "the inactive bank does not hold the replaced map";
  auto replaced = kernel::map_fd_by_id((*ks)->map_id);
  ASSERT_TRUE(replaced.ok());
  // What the crash left: counts in the replaced map, no record of them, the drain pin.
  ASSERT_TRUE(kernel::update_elem(replaced->get(), u32le(1).data(), u64le(777).data()).ok());
  ASSERT_TRUE(
      kernel::pin(replaced->get(), drain_pin("g_acl", hex(u32le(0)), 1, (*ks)->map_id)).ok());

  restart_daemon();
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_EQ(counter_total("g_acl", "hits"), 777u)
      << "the replaced group map's counts were not drained at start";
  EXPECT_TRUE(drain_pins().empty());
}

// A state_dir records the maps of one pin_dir: pointing a config with another pin_dir at it
// is refused, not applied to (or recorded over) the wrong maps.
TEST_F(DurabilityTest, G8_ARecordIsNeverAppliedToAnotherPinDir) {
  push_ok(acl_push(0, {{"10.0.0.0/8", 1}}, "a"));
  stop_daemon_expect_clean();
  std::string yaml;
  {
    std::ifstream in(daemon().config_path());
    yaml.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string other = pin_dir() + "/other";
  const size_t at = yaml.find(pin_dir());
  ASSERT_NE(at, std::string::npos);
  {
    std::ofstream out(daemon().config_path(), std::ios::trunc);
    out << yaml.substr(0, at) << other << yaml.substr(at + pin_dir().size());
  }
  std::string log = start_expect_refusal();
  EXPECT_TRUE(
      contains_all(log, {"records the maps of pin_dir " + pin_dir(), other, "own state_dir"}))
      << log;
  {
    std::ofstream out(daemon().config_path(), std::ios::trunc);
    out << yaml;
  }
  restart_daemon();
  EXPECT_EQ(get_state().generation(), 1u);
}

TEST_F(DurabilityTest, G8_TruncatedOrEmptiedDatabaseRefusesToStartAndSaysHowToRecover) {
  for (int i = 0; i < 20; ++i) push_ok(acl_push(i, {{"10.0.0.0/8", 1}}, "a" + std::to_string(i)));
  stop_daemon_expect_clean();  // a clean stop folds the write-ahead log into state.db
  const std::string path = state_db();
  const std::string bytes = read_file(path);
  ASSERT_GT(bytes.size(), 8u * 4096);

  fs::resize_file(path, bytes.size() / 2);
  std::string log = start_expect_refusal();
  EXPECT_TRUE(contains_all(log, {path, "damaged", "to recover", "mv " + path})) << log;
  fs::resize_file(path, 0);
  log = start_expect_refusal();
  EXPECT_TRUE(contains_all(log, {path, "empty", "to recover"})) << log;
  // Restored from a backup: it starts on the recorded generation.
  write_bytes(path, bytes);
  restart_daemon();
  EXPECT_EQ(get_state().generation(), 20u);
}

TEST_F(DurabilityTest, G8_ACorruptedPageOrAWalWithoutItsDatabaseIsRefusedAndTheAdviceWorks) {
  for (int i = 0; i < 20; ++i) push_ok(acl_push(i, {{"10.0.0.0/8", 1}}, "a" + std::to_string(i)));
  stop_daemon_expect_clean();
  const std::string path = state_db();
  const std::string bytes = read_file(path);
  std::string scribbled = bytes;
  for (size_t i = 3 * 4096; i < 3 * 4096 + 64 && i < scribbled.size(); ++i) scribbled[i] = 0x5a;
  write_bytes(path, scribbled);
  std::string log = start_expect_refusal();
  EXPECT_TRUE(contains_all(log, {path, "damaged", "to recover"})) << log;
  EXPECT_EQ(read_file(path), scribbled) << "the refused start changed the database";

  // A crash leaves the last commits in the write-ahead log; then state.db is lost.
  write_bytes(path, bytes);
  restart_daemon();
  push_ok(acl_push(0, {{"10.0.0.0/8", 2}}, "in the log"));
  kill_daemon();
  ASSERT_TRUE(fs::exists(path + "-wal"));
  fs::rename(path, path + ".lost");
  log = start_expect_refusal();
  EXPECT_TRUE(contains_all(log, {path, "write-ahead log", "to recover"})) << log;
  EXPECT_FALSE(fs::exists(path)) << "a new, empty database replaced the lost one";

  // The advice works: with the state directory moved aside, policyd adopts what is pinned.
  fs::rename(daemon_state_dir(), daemon_state_dir() + ".bad");
  restart_daemon();
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_TRUE(acl_entries(pin_dir(), 0).has_value());
  EXPECT_TRUE(contains_all(daemon().log(), {"no record", "adopted the pinned maps"}));
}

TEST_F(DurabilityTest, ReloadRemovesUnlistedMapsWhenAskedAndResizesHistory) {
  v1::PushGenerationRequest req = acl_push(0, {{"10.0.0.0/8", 1}}, "a");
  add_change(req, "ports", fields_slot({{"ifindex", "3"}}),
             {typed_entry({{"port", "443"}, {"proto", "6"}}, {{"verdict", "1"}})});
  push_ok(req);
  for (int i = 0; i < 4; ++i) push_ok(acl_push(1, {{"10.0.0.0/8", 2}}, "h" + std::to_string(i)));

  DaemonOptions o = daemon_options();
  o.history = 2;
  const auto ports = o.maps_yaml.find("  - name: ports");
  const auto blob = o.maps_yaml.find("  - name: blob");
  ASSERT_NE(ports, std::string::npos);
  o.maps_yaml.erase(ports, blob - ports);
  ASSERT_TRUE(daemon().rewrite_config(o).ok());
  {
    std::ofstream out(daemon().config_path(), std::ios::app);
    out << "remove_unlisted_maps: true\n";
  }
  // Pushes to ports keep coming while the reload removes it: each is committed before the
  // removal or refused; none may crash the daemon (a generation built for a map that is gone).
  std::atomic<bool> stop{false};
  std::vector<grpc::Status> results;
  std::thread pusher([&, stub = daemon().new_stub()] {
    for (uint32_t i = 0; !stop; ++i) {
      v1::PushGenerationRequest p;
      add_change(p, "ports", fields_slot({{"ifindex", std::to_string(i % 8)}}),
                 {typed_entry({{"port", "80"}, {"proto", "6"}}, {{"verdict", "1"}})});
      grpc::ClientContext c;
      set_deadline(c);
      v1::PushGenerationResponse r;
      results.push_back(stub->PushGeneration(&c, p, &r));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  grpc::ClientContext ctx;
  set_deadline(ctx);
  v1::ReloadConfigResponse resp;
  grpc::Status s = stub().ReloadConfig(&ctx, v1::ReloadConfigRequest(), &resp);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  stop = true;
  pusher.join();
  ASSERT_TRUE(s.ok()) << describe(s);
  ASSERT_TRUE(daemon().running()) << "pushes racing a map removal killed the daemon";
  bool refused_after = false;
  for (const grpc::Status& r : results) {
    if (r.ok()) continue;
    refused_after = true;
    EXPECT_TRUE(r.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
                r.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
                r.error_code() == grpc::StatusCode::NOT_FOUND)
        << describe(r);
  }
  EXPECT_TRUE(refused_after) << "no push to ports was refused after its removal";
  EXPECT_EQ(std::vector<std::string>(resp.removed_maps().begin(), resp.removed_maps().end()),
            std::vector<std::string>{"ports"});
  EXPECT_FALSE(kernel::open_pinned(pin("ports")).ok()) << "ports is still pinned";
  EXPECT_TRUE(kernel::open_pinned(pin("acl")).ok());
  EXPECT_EQ(list_generations().generations_size(), 2) << "history: 2 did not apply live";
  const v1::GetStateResponse after = get_state();
  for (const v1::MapState& m : after.maps()) EXPECT_NE(m.name(), "ports");
  // The removal survives a restart (the record no longer names ports' slots).
  ASSERT_TRUE(daemon().rewrite_config(o).ok());
  stop_daemon_expect_clean();
  restart_daemon();
  EXPECT_FALSE(kernel::open_pinned(pin("ports")).ok());
}

// The crash loop (G8): SIGKILL at random moments while pushes stream in and the counter
// program runs. Every push writes the same action (its sequence number) to three acl slots, so
// a mix of generations within the map shows as different actions.
TEST_F(DurabilityTest, G5_G8_SurvivesFiftySigkillsWithoutLosingAGenerationOrACount) {
  constexpr int kKills = 50;
  constexpr uint32_t kSlots[] = {kSlot, kSlot + 1, kSlot + 2};
  const uint32_t seed = std::random_device{}();
  std::mt19937 rng(seed);
  SCOPED_TRACE("seed " + std::to_string(seed));

  // Maps of this name that other tests (or runs) left alive are not this test's leaks.
  std::set<uint32_t> foreign = acl_tries_alive();
  push_ok(acl_push(kSlot, {{"10.1.2.0/24", 0}}, "s0"));
  const KernelSnapshot first = snapshot();
  for (const auto& [slot, id] : first.at("acl")) foreign.erase(id);
  SkelPtr skel = load_counter_program();
  ASSERT_NE(skel, nullptr);
  const int prog = bpf_program__fd(skel->progs.count_arr_lpm);

  // The data plane keeps running across daemon deaths: the program holds the outer map.
  std::atomic<bool> stop_program{false};
  std::thread program([&] {
    while (!stop_program) (void)test::run_xdp(prog, 20);
  });

  // Four pushers, so that batches hold several generations (group commit, one record for
  // all). Sequence numbers are handed out before sending; acceptance order may differ, so
  // "nothing acked was lost" is checked on generation ids, not on sequence numbers.
  constexpr int kPushers = 4;
  std::atomic<uint64_t> seq{0};
  std::atomic<uint32_t> max_batch{0};
  uint64_t max_acked_generation = 0;
  for (int kill = 0; kill < kKills && !HasFatalFailure(); ++kill) {
    std::atomic<bool> stop_pushing{false};
    std::atomic<uint64_t> acked_generation{max_acked_generation};
    std::atomic<int> pushing{0};  // pushers that have had an ack this round, or gave up
    std::vector<std::thread> pushers;
    for (int p = 0; p < kPushers; ++p) {
      pushers.emplace_back([&, stub = daemon().new_stub()] {
        bool first_ack = true;
        while (!stop_pushing) {
          const uint64_t n = ++seq;
          v1::PushGenerationRequest req;
          req.set_label("s" + std::to_string(n));
          for (uint32_t slot : kSlots) {
            add_change(req, "acl", index_slot(slot),
                       {typed_entry({{"prefix", "10.1.2.0/24"}}, {{"action", std::to_string(n)}})});
          }
          grpc::ClientContext ctx;
          set_deadline(ctx, std::chrono::seconds(5));
          v1::PushGenerationResponse resp;
          if (!stub->PushGeneration(&ctx, req, &resp).ok()) {  // the daemon died
            if (first_ack) ++pushing;
            return;
          }
          if (first_ack) ++pushing;
          first_ack = false;
          if (resp.batch_size() > max_batch) max_batch = resp.batch_size();
          uint64_t seen = acked_generation;
          while (resp.generation() > seen &&
                 !acked_generation.compare_exchange_weak(seen, resp.generation())) {
          }
        }
      });
    }
    // The kill lands at a random point once every pusher is pushing. Without that wait, on
    // 6.1 under TCG (tests/vm/run.sh) the new channels' handshakes outlasted the whole window
    // and no two pushes ever shared a barrier.
    const auto connected_by = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (pushing < kPushers && std::chrono::steady_clock::now() < connected_by) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::this_thread::sleep_for(
        std::chrono::milliseconds(std::uniform_int_distribution<>(5, 150)(rng)));
    kill_daemon();
    stop_pushing = true;
    for (std::thread& t : pushers) t.join();
    max_acked_generation = acked_generation;

    restart_daemon();
    ASSERT_FALSE(HasFatalFailure()) << "restart " << kill;
    // One generation in the whole map: the newest recorded one, acked or in flight.
    std::set<Bytes> actions;
    for (uint32_t slot : kSlots) {
      auto entries = acl_entries(pin_dir(), slot);
      if (!entries) {
        actions.insert({});  // never written yet
        continue;
      }
      ASSERT_EQ(entries->size(), 1u);
      actions.insert(Bytes(entries->begin()->second.begin(), entries->begin()->second.begin() + 4));
    }
    ASSERT_EQ(actions.size(), 1u) << "restart " << kill << ": acl holds a mix of generations";
    const v1::ListGenerationsResponse gens = list_generations();
    ASSERT_GT(gens.generations_size(), 0);
    EXPECT_GE(gens.generations(0).generation(), max_acked_generation)
        << "restart " << kill << ": an acked generation was lost";
    const Bytes& a = *actions.begin();
    if (!a.empty()) {
      uint32_t action = 0;
      std::memcpy(&action, a.data(), 4);
      EXPECT_LE(action, seq.load()) << "restart " << kill;
      EXPECT_EQ(gens.generations(0).label(), "s" + std::to_string(action))
          << "restart " << kill << ": the record and the kernel disagree";
    }
    // GetState agrees with the kernel, slot by slot.
    std::map<Bytes, uint32_t> reported;
    const v1::GetStateResponse state = get_state();
    for (const v1::MapState& m : state.maps()) {
      if (m.name() != "acl") continue;
      for (const v1::SlotState& s : m.live_slots()) reported[u32le(s.slot().index())] = s.map_id();
    }
    EXPECT_EQ(reported, snapshot()["acl"]) << "restart " << kill;
    assert_no_leaked_inner_maps(foreign, "after restart " + std::to_string(kill));
  }

  EXPECT_GT(max_batch.load(), 1u) << "no two pushes ever shared a barrier: group commit untested";
  stop_program = true;
  program.join();
  // Wait for the last drains, then: no leaks, and every count is somewhere.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!drain_pins().empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(drain_pins().empty());
  EXPECT_EQ(total_hits(), skel->bss->hits_found)
      << "drained totals + live counters != program hits after " << kKills << " SIGKILLs";

  assert_no_leaked_inner_maps(foreign, "at the end");
}

// A state_dir that fills up (a 256 KiB tmpfs here, a full disk in real life): the generation
// whose record cannot be written is live but not acknowledged; while the record still cannot
// be written, further pushes are refused before they touch the data plane; once there is room
// again, the record catches up and a restart finds what the kernel holds (G8).
TEST_F(DurabilityTest, G8_AStateDirThatIsFullRefusesPushesUntilTheRecordCatchesUp) {
  const std::string work = work_dir() + "/full";
  const std::string state = work + "/state";
  fs::create_directories(state);
  ASSERT_EQ(::mount("tmpfs", state.c_str(), "tmpfs", 0, "size=256k,mode=0700"), 0)
      << std::strerror(errno);
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{state};
  const std::string pins = fs::path(pin_dir()).parent_path() / "pd-full";
  DaemonProcess d(work, pins, daemon_options());
  Status started = d.start();
  ASSERT_TRUE(started.ok()) << started.error().message() << "\n" << d.log();
  auto stub = d.new_stub();
  auto push = [&](const v1::PushGenerationRequest& req, v1::PushGenerationResponse* resp) {
    grpc::ClientContext ctx;
    set_deadline(ctx, std::chrono::seconds(10));
    return stub->PushGeneration(&ctx, req, resp);
  };
  auto action_of = [&](uint32_t slot) -> uint32_t {
    auto ks = read_kernel_slot(pins + "/acl", u32le(slot));
    if (!ks.ok() || !ks->has_value() || (*ks)->entries.empty()) return 0;
    uint32_t a = 0;
    std::memcpy(&a, (*ks)->entries.begin()->second.data(), 4);
    return a;
  };
  v1::PushGenerationResponse resp;
  ASSERT_TRUE(push(acl_push(0, {{"10.0.0.0/8", 1}}, "one"), &resp).ok());

  // Fill the file system.
  {
    std::ofstream filler(state + "/filler", std::ios::binary);
    const std::string block(4096, 'x');
    while (filler.write(block.data(), block.size())) {
    }
  }
  // Big enough to need new pages of the log.
  v1::PushGenerationRequest two = acl_push(0, {{"10.0.0.0/8", 2}}, "two");
  for (uint32_t slot = 1; slot < 40; ++slot) {
    v1::PushGenerationRequest more = acl_push(slot, {{"10.0.0.0/8", 2}});
    for (const auto& c : more.changes()) *two.add_changes() = c;
  }
  grpc::Status st = push(two, &resp);
  ASSERT_FALSE(st.ok()) << "a push was acknowledged though its record could not be written";
  EXPECT_NE(st.error_message().find("could not be recorded"), std::string::npos)
      << st.error_message();
  EXPECT_EQ(action_of(0), 2u) << "the unacknowledged generation is live (G8 allows it)";
  st = push(acl_push(0, {{"10.0.0.0/8", 3}}, "three"), &resp);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_NE(st.error_message().find("changed nothing"), std::string::npos) << st.error_message();
  EXPECT_EQ(action_of(0), 2u) << "a push refused for the record changed the data plane";

  fs::remove(state + "/filler");
  ASSERT_TRUE(push(acl_push(0, {{"10.0.0.0/8", 4}}, "four"), &resp).ok());
  const uint64_t four = resp.generation();
  EXPECT_EQ(four, 3u) << "one, the unacknowledged two (recorded late), then four";
  EXPECT_EQ(d.stop(), 0) << d.log();
  started = d.start();
  ASSERT_TRUE(started.ok()) << started.error().message() << "\n" << d.log();
  auto stub2 = d.new_stub();
  grpc::ClientContext ctx;
  v1::GetStateRequest greq;
  v1::GetStateResponse state_resp;
  ASSERT_TRUE(stub2->GetState(&ctx, greq, &state_resp).ok());
  EXPECT_EQ(state_resp.generation(), four);
  EXPECT_EQ(action_of(0), 4u);
  EXPECT_EQ(action_of(5), 2u);
  EXPECT_TRUE(contains_all(d.log(), {"adopted generation 3"})) << d.log();
  EXPECT_EQ(d.stop(), 0);
  unpin_everything(pins);
}

// The crash loop at scale: 4,096 populated slots of a hash outer map. Every generation writes
// its sequence number into a marker slot and three random slots; after each SIGKILL the start
// must bring back exactly one recorded generation (the newest, acked or in flight), every slot
// that the record names, and a GetState that matches the kernel slot by slot.
class HashCrashLoopTest : public DurabilityTest {
 protected:
  static constexpr uint32_t kTenants = 4096;
  DaemonOptions daemon_options() const override {
    DaemonOptions o = DurabilityTest::daemon_options();
    o.log_level = "warn";
    o.max_message_bytes = 4 << 20;
    o.max_entries_per_push = 1 << 16;
    o.maps_yaml = R"(maps:
  - name: tenants
    type: hash_of_maps
    slots: 4200
    slot_key: [{name: tenant, type: u32}]
    drain: entries
    inner:
      type: hash
      max_entries: 1
      key:   [{name: k, type: u32}]
      value: [{name: seq, type: u64, counter: true}]
)";
    return o;
  }

  static v1::SlotRef tenant(uint32_t t) { return fields_slot({{"tenant", std::to_string(t)}}); }
  static void set_tenant(v1::PushGenerationRequest& req, uint32_t t, uint64_t seq) {
    add_change(req, "tenants", tenant(t),
               {typed_entry({{"k", "0"}}, {{"seq", std::to_string(seq)}})});
  }
  // The seq value the kernel holds in tenant `t` (nullopt: empty slot).
  std::optional<uint64_t> kernel_seq(uint32_t t) {
    auto ks = read_kernel_slot(pin("tenants"), u32le(t));
    EXPECT_TRUE(ks.ok()) << ks.error().message();
    if (!ks.ok() || !ks->has_value() || (*ks)->entries.size() != 1) return std::nullopt;
    uint64_t v = 0;
    std::memcpy(&v, (*ks)->entries.begin()->second.data(), sizeof v);
    return v;
  }
};

TEST_F(HashCrashLoopTest, G8_G9_SurvivesSigkillsAt4096SlotsOfAHashOuterMap) {
  constexpr int kKills = 8;
  constexpr uint32_t kMarker = 0;
  const uint32_t seed = std::random_device{}();
  std::mt19937 rng(seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (uint32_t first = 0; first < kTenants; first += 1024) {
    v1::PushGenerationRequest fill;
    fill.set_label("fill");
    for (uint32_t t = first; t < first + 1024; ++t) set_tenant(fill, t, 0);
    push_ok(fill);
  }
  std::atomic<uint64_t> seq{0};
  uint64_t max_acked = 0;
  for (int kill = 0; kill < kKills && !HasFatalFailure(); ++kill) {
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> acked{max_acked};
    std::atomic<int> pushing{0};
    std::vector<std::thread> pushers;
    for (int p = 0; p < 3; ++p) {
      pushers.emplace_back([&, p, stub = daemon().new_stub()] {
        std::mt19937 local(seed + static_cast<uint32_t>(p) + static_cast<uint32_t>(kill) * 7);
        bool first_ack = true;
        while (!stop) {
          const uint64_t n = ++seq;
          v1::PushGenerationRequest req;
          req.set_label("s" + std::to_string(n));
          set_tenant(req, kMarker, n);
          std::set<uint32_t> picked;
          while (picked.size() < 3) picked.insert(1 + local() % (kTenants - 1));
          for (uint32_t t : picked) set_tenant(req, t, n);
          grpc::ClientContext ctx;
          set_deadline(ctx, std::chrono::seconds(10));
          v1::PushGenerationResponse resp;
          const bool ok = stub->PushGeneration(&ctx, req, &resp).ok();
          if (first_ack) ++pushing;
          first_ack = false;
          if (!ok) return;  // the daemon died
          uint64_t seen = acked;
          while (resp.generation() > seen &&
                 !acked.compare_exchange_weak(seen, resp.generation())) {
          }
        }
      });
    }
    const auto connected_by = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (pushing < 3 && std::chrono::steady_clock::now() < connected_by) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::this_thread::sleep_for(
        std::chrono::milliseconds(std::uniform_int_distribution<>(5, 200)(rng)));
    kill_daemon();
    stop = true;
    for (std::thread& t : pushers) t.join();
    max_acked = acked;

    restart_daemon();
    ASSERT_FALSE(HasFatalFailure()) << "restart " << kill;
    const v1::ListGenerationsResponse gens = list_generations();
    ASSERT_GT(gens.generations_size(), 0);
    EXPECT_GE(gens.generations(0).generation(), max_acked)
        << "restart " << kill << ": an acked generation was lost";
    const std::optional<uint64_t> marker = kernel_seq(kMarker);
    ASSERT_TRUE(marker.has_value());
    if (*marker != 0) {
      EXPECT_EQ(gens.generations(0).label(), "s" + std::to_string(*marker))
          << "restart " << kill << ": the record and the kernel disagree";
    }
    // Every tenant is populated, and GetState agrees with the kernel slot by slot.
    Result<KernelSnapshot> snap = kernel_snapshot(pin_dir(), {"tenants"});
    ASSERT_TRUE(snap.ok()) << snap.error().message();
    const KernelSnapshot& kernel = *snap;
    ASSERT_EQ(kernel.at("tenants").size(), kTenants) << "restart " << kill;
    std::map<Bytes, uint32_t> reported;
    const v1::GetStateResponse state = get_state();
    for (const v1::MapState& m : state.maps()) {
      if (m.name() != "tenants") continue;
      for (const v1::SlotState& s : m.live_slots())
        reported[Bytes(s.slot().key().begin(), s.slot().key().end())] = s.map_id();
    }
    EXPECT_EQ(reported, kernel.at("tenants")) << "restart " << kill;
  }
}

// A state_dir in the format written before the SQLite store (tests/e2e/fixtures/state_v1: how
// it was made is in tests/e2e/fixtures/README.md). Its pin_dir is fixed, on the host's bpffs,
// and empty: policyd re-commits the recorded generation as after a reboot.
TEST_F(DurabilityTest, G8_AStateDirOfTheV1FormatKeepsGenerationHistoryTotalsAndRequestIds) {
  const std::string fixture_pins = "/sys/fs/bpf/policyd-fixture-state-v1";
  unpin_everything(fixture_pins);
  ::rmdir(fixture_pins.c_str());
  const std::string work = work_dir() + "/v1";
  fs::create_directories(work);
  fs::copy(STATE_V1_FIXTURE, work + "/state", fs::copy_options::recursive);
  fs::permissions(work + "/state", fs::perms::owner_all);  // not the checkout's mode
  DaemonOptions options = daemon_options();
  options.history = 64;
  DaemonProcess old(work, fixture_pins, options);
  Status st = old.start();
  ASSERT_TRUE(st.ok()) << st.error().message() << "\n" << old.log();

  CmdResult status = run_policyctl(old.socket_path(), {"status"});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_TRUE(contains_all(status.out, {"2 (b)"})) << status.out;
  CmdResult gens = run_policyctl(old.socket_path(), {"generations"});
  EXPECT_TRUE(contains_all(gens.out, {"fixture-req-b", "fixture-req-a"})) << gens.out;
  EXPECT_LT(gens.out.find("fixture-req-b"), gens.out.find("fixture-req-a")) << gens.out;
  CmdResult counters = run_policyctl(old.socket_path(), {"counters", "--map", "acl"});
  EXPECT_TRUE(contains_all(counters.out, {"hits", "42"})) << counters.out;
  auto slot5 = acl_entries(fixture_pins, kSlot);
  EXPECT_TRUE(slot5.has_value()) << "acl slot 5 was not re-created from the record";
  // A retry of the push recorded with request id fixture-req-a gets its original answer.
  const std::string a = write_file("a.yaml",
                                   "label: a\nchanges:\n  - map: acl\n    slot: 5\n    entries:\n"
                                   "      - {key: {prefix: 10.1.2.0/24}, value: {action: 1}}\n");
  CmdResult replay = run_policyctl(old.socket_path(), {"push", a, "--request-id", "fixture-req-a"});
  EXPECT_EQ(replay.exit_code, 0) << replay.err;
  EXPECT_TRUE(contains_all(replay.out, {"generation 1", "replay"})) << replay.out;
  EXPECT_EQ(old.stop(), 0) << old.log();
  if (HasFailure()) std::fprintf(stderr, "%s\n", old.log().c_str());
  unpin_everything(fixture_pins);
  ::rmdir(fixture_pins.c_str());
}

}  // namespace
}  // namespace policyd::e2e
