// The daemon's life: SIGTERM/SIGINT exit 0 and leave the pinned maps and the data plane as they
// were (same outer and inner map ids, read through the pins after the process is gone); pushes
// in flight at SIGTERM are finished, never half-applied; a restart re-adopts the pinned maps
// without touching the data plane; configuration reloads (API, policyctl, SIGHUP); the
// grpc.health.v1 and reflection services; the command line (--version, --help, --check-config).
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "daemon_fixture.h"

namespace policyd::e2e {
namespace {

class LifecycleTest : public DaemonTest {
 protected:
  // Outer map ids by name, read through the pins.
  std::map<std::string, uint32_t> outer_ids() {
    std::map<std::string, uint32_t> ids;
    for (const std::string& name : map_names()) {
      auto fd = kernel::open_pinned(pin(name));
      EXPECT_TRUE(fd.ok()) << name << " is no longer pinned: " << fd.error().message();
      if (!fd.ok()) continue;
      auto info = kernel::map_info(fd->get());
      EXPECT_TRUE(info.ok()) << info.error().message();
      if (info.ok()) ids[name] = info->id;
    }
    return ids;
  }

  void push_some() {
    v1::PushGenerationRequest req = acl_push(0, {{"10.0.0.0/8", 1}}, "before-exit");
    add_change(req, "ports", fields_slot({{"ifindex", "3"}}),
               {typed_entry({{"port", "443"}, {"proto", "6"}}, {{"verdict", "1"}})});
    push_ok(req);
  }

  void stop_with(int sig) {
    push_some();
    const std::map<std::string, uint32_t> outers = outer_ids();
    const KernelSnapshot snap = snapshot();
    const std::optional<KernelSlot> acl0 = kernel_slot("acl", 0u);
    ASSERT_TRUE(acl0.has_value());

    daemon().signal(sig);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (daemon().running() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_FALSE(daemon().running()) << "policyd still runs 20 s after signal " << sig;
    EXPECT_EQ(daemon().exit_code().value_or(-1), 0) << "exit code after signal " << sig;

    // The process is gone; the pins, the outer maps and the data plane are not.
    EXPECT_EQ(outer_ids(), outers);
    EXPECT_EQ(snapshot(), snap);
    std::optional<KernelSlot> after = kernel_slot("acl", 0u);
    ASSERT_TRUE(after.has_value()) << "acl slot 0 lost its inner map at exit";
    EXPECT_EQ(after->map_id, acl0->map_id);
    EXPECT_EQ(after->entries, acl0->entries);
  }
};

TEST_F(LifecycleTest, G8_SigtermExitsZeroAndPinnedMapsStay) { stop_with(SIGTERM); }

TEST_F(LifecycleTest, G8_SigintExitsZeroAndPinnedMapsStay) { stop_with(SIGINT); }

TEST_F(LifecycleTest, G4_SigtermFinishesInFlightPushes) {
  // Eight clients push as fast as they can, each into its own slot with increasing actions;
  // SIGTERM arrives mid-stream. Every push acked OK must be in the kernel afterwards, and a
  // slot never holds anything but a value some push of its client sent.
  constexpr uint32_t kClients = 8;
  std::atomic<bool> stop{false};
  std::vector<uint32_t> last_acked(kClients, 0);
  std::vector<uint32_t> last_sent(kClients, 0);
  std::vector<std::string> odd_errors(kClients);
  std::vector<std::thread> threads;
  std::atomic<uint32_t> acks{0};
  for (uint32_t c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      auto stub = daemon().new_stub();
      for (uint32_t action = 1; !stop.load(); ++action) {
        v1::PushGenerationRequest req = acl_push(c, {{"10.0.0.0/8", action}});
        grpc::ClientContext ctx;
        set_deadline(ctx, std::chrono::seconds(10));
        v1::PushGenerationResponse resp;
        last_sent[c] = action;
        grpc::Status s = stub->PushGeneration(&ctx, req, &resp);
        if (s.ok()) {
          last_acked[c] = action;
          acks.fetch_add(1);
          continue;
        }
        // After SIGTERM: refused (UNAVAILABLE) or the connection went away.
        if (s.error_code() != grpc::StatusCode::UNAVAILABLE &&
            s.error_code() != grpc::StatusCode::CANCELLED) {
          odd_errors[c] = describe(s);
        }
        return;
      }
    });
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (acks.load() < 3 * kClients && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_GE(acks.load(), 3 * kClients) << "pushes did not get going";
  daemon().signal(SIGTERM);
  const auto exit_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (daemon().running() && std::chrono::steady_clock::now() < exit_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop.store(true);
  for (auto& t : threads) t.join();
  ASSERT_FALSE(daemon().running()) << "policyd still runs 20 s after SIGTERM";
  EXPECT_EQ(daemon().exit_code().value_or(-1), 0);

  for (uint32_t c = 0; c < kClients; ++c) {
    SCOPED_TRACE("client " + std::to_string(c));
    EXPECT_TRUE(odd_errors[c].empty()) << "a push failed with " << odd_errors[c];
    std::optional<KernelSlot> ks = kernel_slot("acl", c);
    // A client whose connection failed before any ack (under qemu TCG the fixture's 100 ms
    // connect timeout can expire) has nothing that must be in; its slot may be empty.
    if (last_acked[c] == 0 && !ks.has_value()) continue;
    ASSERT_TRUE(ks.has_value());
    ASSERT_EQ(ks->entries.size(), 1u);
    uint32_t action = 0;
    std::memcpy(&action, ks->entries.begin()->second.data(), 4);
    // An acked push is in; at most the one push that was in flight when the reply was lost
    // may be newer.
    EXPECT_GE(action, last_acked[c]);
    EXPECT_LE(action, last_sent[c]);
  }
}

// 200 SIGTERMs, each at a random moment while six clients push: every push gets an answer (an
// ack, or UNAVAILABLE/CANCELLED once the daemon stops; never a hang to the deadline), every exit
// is 0 within 5 s, and every acked push is in the kernel afterwards.
TEST_F(LifecycleTest,
       G4_TwoHundredSigtermsUnderPushLoadAnswerEveryPushAndExitZeroWithinFiveSeconds) {
  constexpr uint32_t kClients = 6;
  constexpr int kRounds = 200;
  const uint32_t seed = std::random_device{}();
  std::mt19937 rng(seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::vector<uint32_t> last_acked(kClients, 0);
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    if (round > 0) {
      ASSERT_TRUE(daemon().start().ok()) << daemon().log();
    }
    std::atomic<bool> stop{false};
    std::atomic<uint32_t> acks{0};
    std::vector<uint32_t> last_sent(kClients, 0);
    std::vector<std::string> odd(kClients);
    std::vector<std::thread> threads;
    for (uint32_t c = 0; c < kClients; ++c) {
      threads.emplace_back([&, c] {
        auto stub = daemon().new_stub();
        for (uint32_t action = last_acked[c] + 1; !stop.load(); ++action) {
          grpc::ClientContext ctx;
          set_deadline(ctx, std::chrono::seconds(10));
          v1::PushGenerationResponse resp;
          last_sent[c] = action;
          grpc::Status st =
              stub->PushGeneration(&ctx, acl_push(c, {{"10.0.0.0/8", action}}), &resp);
          if (st.ok()) {
            last_acked[c] = action;
            acks.fetch_add(1);
            continue;
          }
          if (st.error_code() != grpc::StatusCode::UNAVAILABLE &&
              st.error_code() != grpc::StatusCode::CANCELLED) {
            odd[c] = describe(st);
          }
          return;
        }
      });
    }
    const auto start = std::chrono::steady_clock::now();
    while (acks.load() == 0 &&
           std::chrono::steady_clock::now() - start < std::chrono::seconds(10)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::this_thread::sleep_for(
        std::chrono::microseconds(std::uniform_int_distribution<int>(0, 100'000)(rng)));
    daemon().signal(SIGTERM);
    const auto signalled = std::chrono::steady_clock::now();
    while (daemon().running() &&
           std::chrono::steady_clock::now() - signalled < std::chrono::seconds(20)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    const auto took = std::chrono::steady_clock::now() - signalled;
    stop.store(true);
    for (auto& t : threads) t.join();
    ASSERT_FALSE(daemon().running()) << "policyd still runs 20 s after SIGTERM";
    ASSERT_EQ(daemon().exit_code().value_or(-1), 0);
    ASSERT_LT(took, std::chrono::seconds(5))
        << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms to exit";
    for (uint32_t c = 0; c < kClients; ++c) {
      ASSERT_TRUE(odd[c].empty()) << "client " << c << ": a push was answered with " << odd[c];
      if (last_acked[c] == 0) continue;
      std::optional<KernelSlot> ks = kernel_slot("acl", c);
      ASSERT_TRUE(ks.has_value()) << "client " << c << ": its acked push is gone";
      ASSERT_EQ(ks->entries.size(), 1u);
      uint32_t action = 0;
      std::memcpy(&action, ks->entries.begin()->second.data(), 4);
      ASSERT_GE(action, last_acked[c]) << "client " << c << ": an acked push is not in";
      ASSERT_LE(action, last_sent[c]) << "client " << c;
    }
  }
}

TEST_F(LifecycleTest, G8_RestartReadoptsPinnedMapsWithoutTouchingTheDataPlane) {
  push_some();
  const std::map<std::string, uint32_t> outers = outer_ids();
  const KernelSnapshot snap = snapshot();
  stop_daemon_expect_clean();
  restart_daemon();
  ASSERT_FALSE(HasFatalFailure());

  EXPECT_EQ(outer_ids(), outers) << "a restart must re-adopt the pinned outer maps";
  EXPECT_EQ(snapshot(), snap) << "a restart must not touch the data plane";
  // GetState lists the adopted slots with their kernel ids.
  v1::GetStateResponse st = get_state();
  bool found = false;
  for (const v1::MapState& m : st.maps()) {
    if (m.name() != "acl") continue;
    for (const v1::SlotState& s : m.live_slots()) {
      if (s.slot().slot_case() == v1::SlotRef::kIndex && s.slot().index() == 0) {
        found = true;
        EXPECT_EQ(s.map_id(), snap.at("acl").at(u32le(0)));
      }
    }
  }
  EXPECT_TRUE(found) << "GetState does not list the adopted acl slot 0";

  // And it keeps working: a push replaces the adopted slot.
  push_ok(acl_push(0, {{"10.0.0.0/8", 2}}, "after-restart"));
  std::optional<KernelSlot> ks = kernel_slot("acl", 0u);
  ASSERT_TRUE(ks.has_value());
  EXPECT_EQ(ks->entries, (std::map<Bytes, Bytes>{{acl_key(8, 10, 0, 0, 0), acl_value(2)}}));
}

// A reloaded configuration: `extra` added, `blob` no longer listed (kept: remove_unlisted_maps
// is false), everything else unchanged.
DaemonOptions with_extra_map(DaemonOptions o) {
  std::string maps = o.maps_yaml;
  const auto blob = maps.find("  - name: blob");
  maps = maps.substr(0, blob);
  maps += extra_map_yaml();
  o.maps_yaml = maps;
  return o;
}

grpc::Status reload_via_api(v1::Policy::Stub& stub, v1::ReloadConfigResponse* resp) {
  grpc::ClientContext ctx;
  set_deadline(ctx);
  return stub.ReloadConfig(&ctx, v1::ReloadConfigRequest(), resp);
}

bool saw_reloaded(const std::vector<v1::Event>& ev) {
  for (const v1::Event& e : ev) {
    if (e.kind_case() == v1::Event::kReloaded) return true;
  }
  return false;
}

// Pins in pin_dir/_drain, by name (the drain pins a crash would leave for the next start).
std::set<std::string> drain_pins(const std::string& pin_dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator(pin_dir + "/_drain", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    out.insert(it->path().filename().string());
  }
  return out;
}

// A second daemon on the same pin_dir, with a state_dir of its own, would adopt the first one's
// maps and commit into them: it is refused before it opens any map.
TEST_F(LifecycleTest, G8_ASecondDaemonOnTheSamePinDirIsRefusedAndTouchesNothing) {
  push_some();
  const uint64_t generation = get_state().generation();
  const std::map<std::string, uint32_t> outers = outer_ids();
  const KernelSnapshot snap = snapshot();
  const std::set<std::string> pins = drain_pins(pin_dir());

  const std::string other = work_dir() + "/second";
  ASSERT_TRUE(std::filesystem::create_directories(other));
  DaemonProcess second(other, pin_dir(), daemon_options());
  Status st = second.start(std::chrono::seconds(5));
  ASSERT_FALSE(st.ok()) << "a second daemon started on the same pin_dir";
  for (int i = 0; i < 100 && second.running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_FALSE(second.running());
  EXPECT_NE(second.exit_code().value_or(0), 0);
  EXPECT_TRUE(contains_all(second.log(), {"pin_dir " + pin_dir(), "in use by another policyd"}))
      << second.log();

  EXPECT_EQ(outer_ids(), outers);
  EXPECT_EQ(snapshot(), snap) << "the refused daemon touched the data plane";
  EXPECT_EQ(drain_pins(pin_dir()), pins);
  EXPECT_EQ(get_state().generation(), generation) << "the first daemon must keep serving";

  // The control: the same configuration on a pin_dir of its own starts.
  const std::string third_dir = work_dir() + "/third";
  ASSERT_TRUE(std::filesystem::create_directories(third_dir));
  DaemonProcess third(third_dir, pin_dir() + "_third", daemon_options());
  ASSERT_TRUE(third.start().ok()) << third.log();
  EXPECT_EQ(third.stop(), 0);
}

TEST_F(LifecycleTest, ReloadRefusesIncompatibleChangesAndTheOldConfigKeepsRunning) {
  push_some();
  std::unique_ptr<EventWatch> watch = synced_watch();
  const KernelSnapshot snap = snapshot();
  const uint64_t gen = get_state().generation();

  // The same file again: accepted, nothing added, a reloaded event.
  v1::ReloadConfigResponse resp;
  grpc::Status s = reload_via_api(stub(), &resp);
  ASSERT_TRUE(s.ok()) << describe(s);
  EXPECT_TRUE(resp.added_maps().empty());
  EXPECT_TRUE(watch->wait_for(saw_reloaded, std::chrono::seconds(5))) << "no reloaded event";
  CmdResult r = ctl({"reload"});
  EXPECT_EQ(r.exit_code, 0) << r.err;

  // acl: 64 -> 32 slots and 256 -> 512 inner entries are incompatible with the pinned map: the
  // whole reload is refused, naming both changes with their old and new values.
  DaemonOptions bad;
  const auto pos = bad.maps_yaml.find("slots: 64");
  ASSERT_NE(pos, std::string::npos);
  bad.maps_yaml.replace(pos, 9, "slots: 32");
  const auto inner_pos = bad.maps_yaml.find("max_entries: 256");
  ASSERT_NE(inner_pos, std::string::npos);
  bad.maps_yaml.replace(inner_pos, 16, "max_entries: 512");
  ASSERT_TRUE(daemon().rewrite_config(bad).ok());
  const std::vector<std::string> named = {"acl", "slots 64 -> 32", "inner.max_entries 256 -> 512"};
  s = reload_via_api(stub(), &resp);
  EXPECT_TRUE(has_error(s, grpc::StatusCode::FAILED_PRECONDITION, named));
  r = ctl({"reload"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains_all(r.err, named)) << r.err;
  // A file that does not parse: refused with file:line.
  ASSERT_TRUE(daemon().rewrite_config(DaemonOptions{}).ok());
  {
    std::ofstream out(daemon().config_path(), std::ios::app);
    out << "  - name: [broken\n";
  }
  s = reload_via_api(stub(), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << describe(s);
  EXPECT_TRUE(std::regex_search(s.error_message(), std::regex("policyd\\.yaml:[0-9]+")))
      << describe(s);
  // SIGHUP with the bad file: logged, the daemon keeps running on the old config.
  daemon().signal(SIGHUP);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_TRUE(daemon().running()) << "SIGHUP with a bad config killed the daemon";

  v1::GetStateResponse state = get_state();
  EXPECT_EQ(state.generation(), gen) << "a reload is not a generation";
  for (const auto& m : state.maps()) {
    if (m.name() == "acl") {
      EXPECT_EQ(m.slots(), kAclSlots);
    }
  }
  EXPECT_EQ(snapshot(), snap) << "a refused reload touched the data plane";
  // Still serving writes on the old config.
  push_ok(acl_push(kAclSlots - 1, {{"10.0.0.0/8", 5}}));
  ASSERT_TRUE(daemon().rewrite_config(DaemonOptions{}).ok());  // a clean file for teardown
}

// A reload is honest about what it cannot apply: a changed state_dir (or pin_dir, api.socket,
// api.tls paths) and a max_message_bytes above the value at start refuse the whole reload,
// naming the key; a lower max_message_bytes applies live.
TEST_F(LifecycleTest, ReloadRefusesKeysThatNeedARestartAndAppliesALowerMessageLimitLive) {
  v1::PushGenerationRequest big;  // about 52 KB encoded
  std::vector<v1::Entry> entries;
  for (uint32_t i = 0; i < 100; ++i) entries.push_back(raw_entry(u32le(i), blob_value(7)));
  add_change(big, "blob", index_slot(0), entries);
  ASSERT_GT(push_ok(big), 0u) << "the control: under the 256 KiB limit the push fits";

  std::string moved;
  {
    std::ifstream in(daemon().config_path());
    std::stringstream text;
    text << in.rdbuf();
    moved = text.str();
  }
  const std::string key = "state_dir: ";
  const auto at = moved.find(key);
  ASSERT_NE(at, std::string::npos);
  moved.insert(moved.find('\n', at), "-elsewhere");
  { std::ofstream(daemon().config_path(), std::ios::trunc) << moved; }
  v1::ReloadConfigResponse resp;
  grpc::Status s = reload_via_api(stub(), &resp);
  EXPECT_TRUE(has_error(s, grpc::StatusCode::FAILED_PRECONDITION,
                        {"state_dir changed", "-elsewhere", "needs a restart"}));

  DaemonOptions raised;
  raised.max_message_bytes = 512 * 1024;
  ASSERT_TRUE(daemon().rewrite_config(raised).ok());
  s = reload_via_api(stub(), &resp);
  EXPECT_TRUE(has_error(s, grpc::StatusCode::FAILED_PRECONDITION,
                        {"limits.max_message_bytes", "262144", "524288", "needs a restart"}));

  DaemonOptions mode;
  mode.socket_mode = "0640";
  ASSERT_TRUE(daemon().rewrite_config(mode).ok());
  s = reload_via_api(stub(), &resp);
  EXPECT_TRUE(has_error(s, grpc::StatusCode::FAILED_PRECONDITION,
                        {"api.socket_mode changed", "0660", "0640", "needs a restart"}));
  DaemonOptions barrier;
  barrier.barrier = "concurrent";
  ASSERT_TRUE(daemon().rewrite_config(barrier).ok());
  s = reload_via_api(stub(), &resp);
  EXPECT_TRUE(has_error(s, grpc::StatusCode::FAILED_PRECONDITION,
                        {"barrier changed", "\"auto\"", "\"concurrent\"", "needs a restart"}));

  DaemonOptions lowered;
  lowered.max_message_bytes = 16 * 1024;
  ASSERT_TRUE(daemon().rewrite_config(lowered).ok());
  s = reload_via_api(stub(), &resp);
  ASSERT_TRUE(s.ok()) << describe(s);
  v1::PushGenerationResponse pr;
  s = push(big, &pr);
  EXPECT_TRUE(
      has_error(s, grpc::StatusCode::RESOURCE_EXHAUSTED, {"limits.max_message_bytes (16384)"}));
  ASSERT_TRUE(daemon().rewrite_config(DaemonOptions{}).ok());  // a clean file for teardown
}

// ReloadConfigResponse (proto/policyd/v1/policyd.proto): new maps are created; maps no longer
// in the file are kept unless remove_unlisted_maps says to remove them.
TEST_F(LifecycleTest, ReloadCreatesNewMapsAndKeepsUnlistedOnes) {
  push_some();
  std::unique_ptr<EventWatch> watch = synced_watch();
  const KernelSnapshot snap = snapshot();

  ASSERT_TRUE(daemon().rewrite_config(with_extra_map(DaemonOptions{})).ok());
  v1::ReloadConfigResponse resp;
  grpc::Status s = reload_via_api(stub(), &resp);
  ASSERT_TRUE(s.ok()) << describe(s);
  EXPECT_EQ(std::vector<std::string>(resp.added_maps().begin(), resp.added_maps().end()),
            std::vector<std::string>{"extra"});
  EXPECT_EQ(std::vector<std::string>(resp.kept_maps().begin(), resp.kept_maps().end()),
            std::vector<std::string>{"blob"});
  EXPECT_TRUE(resp.removed_maps().empty());
  EXPECT_TRUE(kernel::open_pinned(pin("extra")).ok()) << "extra is not pinned";
  EXPECT_TRUE(kernel::open_pinned(pin("blob")).ok()) << "blob lost its pin";
  EXPECT_EQ(snapshot(), snap) << "a reload touched the data plane";
  EXPECT_TRUE(watch->wait_for(
      [](const std::vector<v1::Event>& ev) {
        for (const v1::Event& e : ev) {
          if (e.kind_case() == v1::Event::kReloaded && e.reloaded().added_maps_size() == 1 &&
              e.reloaded().added_maps(0) == "extra") {
            return true;
          }
        }
        return false;
      },
      std::chrono::seconds(5)))
      << "no reloaded event naming extra";

  v1::PushGenerationRequest req;
  add_change(req, "extra", index_slot(1), {raw_entry(u32le(7), u32le(70))});
  push_ok(req);
  auto ks = read_kernel_slot(pin("extra"), u32le(1));
  ASSERT_TRUE(ks.ok()) << ks.error().message();
  ASSERT_TRUE(ks->has_value());
  EXPECT_EQ((*ks)->entries, (std::map<Bytes, Bytes>{{u32le(7), u32le(70)}}));

  // SIGHUP does the same.
  DaemonOptions more = with_extra_map(DaemonOptions{});
  more.maps_yaml += R"(  - name: extra2
    type: array_of_maps
    slots: 1
    drain: none
    inner: {type: array, max_entries: 4, key: [{name: k, type: u32}], value: [{name: v, type: u64}]}
)";
  ASSERT_TRUE(daemon().rewrite_config(more).ok());
  daemon().signal(SIGHUP);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  bool pinned = false;
  while (!pinned && std::chrono::steady_clock::now() < deadline) {
    pinned = kernel::open_pinned(pin("extra2")).ok();
    if (!pinned) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(pinned) << "SIGHUP did not create extra2";
  EXPECT_TRUE(daemon().running());
}

// grpc.health.v1 and server reflection answer on the same socket (so grpcurl works).
class GenericBidi : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  GenericBidi(grpc::GenericStub& stub, grpc::ClientContext* ctx, const std::string& method,
              const std::string& request) {
    grpc::Slice slice(request);
    request_ = grpc::ByteBuffer(&slice, 1);
    stub.PrepareBidiStreamingCall(ctx, method, grpc::StubOptions(), this);
    StartWrite(&request_);
    StartRead(&response_);
    StartCall();
  }
  void OnWriteDone(bool ok) override {
    if (ok) StartWritesDone();
  }
  void OnReadDone(bool ok) override {
    if (ok) got_ = true;
  }
  void OnDone(const grpc::Status& s) override { done_.set_value(s); }

  // Status and the first response's bytes.
  std::pair<grpc::Status, std::string> wait() {
    grpc::Status s = done_.get_future().get();
    std::string bytes;
    if (got_) {
      std::vector<grpc::Slice> slices;
      (void)response_.Dump(&slices);
      for (const auto& sl : slices)
        bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
    }
    return {s, bytes};
  }

 private:
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  bool got_ = false;
  std::promise<grpc::Status> done_;
};

TEST_F(LifecycleTest, HealthAndReflectionServicesAnswer) {
  grpc::GenericStub generic(daemon().new_channel());
  {
    // HealthCheckRequest{service: ""} is empty; SERVING is HealthCheckResponse{status: 1}.
    grpc::ClientContext ctx;
    set_deadline(ctx);
    grpc::Slice empty(std::string{});
    grpc::ByteBuffer req(&empty, 1), resp;  // a default ByteBuffer is no message at all
    std::promise<grpc::Status> done;
    generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req, &resp,
                      [&](grpc::Status s) { done.set_value(s); });
    grpc::Status s = done.get_future().get();
    ASSERT_TRUE(s.ok()) << describe(s);
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(resp.Dump(&slices).ok());
    std::string bytes;
    for (const auto& sl : slices)
      bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
    EXPECT_EQ(bytes, std::string("\x08\x01", 2)) << "health status is not SERVING";
  }
  {
    // ServerReflectionRequest{list_services: ""}: field 7, length 0.
    grpc::ClientContext ctx;
    set_deadline(ctx);
    GenericBidi call(generic, &ctx,
                     "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                     std::string("\x3a\x00", 2));
    auto [s, bytes] = call.wait();
    ASSERT_TRUE(s.ok()) << describe(s);
    EXPECT_NE(bytes.find("policyd.v1.Policy"), std::string::npos)
        << "reflection does not list policyd.v1.Policy";
  }
}

// The command line, without a running daemon.
TEST(PolicydCommandLine, VersionHelpAndCheckConfig) {
  CmdResult v = run_command({policyd_bin(), "--version"});
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_TRUE(contains_all(v.out + v.err, {"0.1.0"})) << v.out << v.err;

  CmdResult h = run_command({policyd_bin(), "--help"});
  EXPECT_EQ(h.exit_code, 0) << h.err;
  EXPECT_TRUE(contains_all(h.out + h.err, {"--config"})) << h.out << h.err;

  char tmpl[] = "/tmp/policyd-e2e-cli-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string good = dir + "/good.yaml";
  const std::string bad = dir + "/bad.yaml";
  {
    std::ofstream(good) << config_yaml(DaemonOptions{}, dir + "/s.sock", "/sys/fs/bpf/pd-unused",
                                       dir + "/state");
    // A map name over the kernel's 15 characters.
    std::string text =
        config_yaml(DaemonOptions{}, dir + "/s.sock", "/sys/fs/bpf/pd-unused", dir + "/state");
    text +=
        "  - name: this-name-is-far-too-long\n    type: array_of_maps\n    slots: 1\n"
        "    inner: {type: hash, max_entries: 1, key: [{name: k, type: u32}], "
        "value: [{name: v, type: u32}]}\n";
    std::ofstream(bad) << text;
  }
  CmdResult ok = run_command({policyd_bin(), "--check-config", good});
  EXPECT_EQ(ok.exit_code, 0) << ok.out << ok.err;
  CmdResult ko = run_command({policyd_bin(), "--check-config", bad});
  EXPECT_NE(ko.exit_code, 0) << ko.out;
  EXPECT_TRUE(std::regex_search(ko.out + ko.err, std::regex("bad\\.yaml:[0-9]+")))
      << "no file:line in: " << ko.out << ko.err;
  EXPECT_TRUE(contains_all(ko.out + ko.err, {"this-name-is-far-too-long"})) << ko.out << ko.err;
  CmdResult none = run_command({policyd_bin(), "--config", dir + "/missing.yaml"});
  EXPECT_NE(none.exit_code, 0);
  EXPECT_TRUE(contains_all(none.out + none.err, {"missing.yaml"})) << none.out << none.err;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace policyd::e2e
