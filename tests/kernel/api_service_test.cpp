// PolicyService over a real Engine + Committer on a private bpffs, served by an in-process
// grpc::Server on a unix socket and driven by the generated stub: every RPC once, the error
// codes of the status table as seen by a client, authorization, the push stream, and the
// watch stream (events, reloads, a watcher that falls behind, cancellation).
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "api/auth.h"
#include "api/service.h"
#include "config/config.h"
#include "core/committer.h"
#include "core/engine.h"
#include "core/sqlite_db.h"
#include "core/state_store.h"
#include "support/bpffs.h"
#include "support/scope_exit.h"

namespace policyd::api {
namespace {

using std::chrono::seconds;

std::string config_yaml(const std::string& pin_dir) {
  return "pin_dir: " + pin_dir + R"(
barrier: concurrent
history: 8
limits: {max_entries_per_push: 100}
maps:
  - name: acl
    type: array_of_maps
    slots: 4
    inner:
      type: hash
      max_entries: 64
      key: [{name: id, type: u32}]
      value: [{name: action, type: u32}, {name: hits, type: u64, counter: true}]
  - name: ports
    type: hash_of_maps
    slots: 4
    slot_key: [{name: ifindex, type: u32}]
    inner:
      type: percpu_hash
      max_entries: 64
      key: [{name: port, type: be16}, {name: pad, type: "pad[2]"}]
      value: [{name: packets, type: u64, counter: true}]
)";
}

// Access decided by the test.
struct TestAuthorizer final : Authorizer {
  std::atomic<Access> granted{Access::kWrite};
  Access access(const grpc::CallbackServerContext& /*ctx*/) const override { return granted; }
  std::string describe(const grpc::CallbackServerContext& /*ctx*/) const override {
    return "uid 1234 gid 5678";
  }
};

void set_fields(v1::Fields* f, std::initializer_list<std::pair<const char*, std::string>> kv) {
  for (auto& [k, v] : kv) (*f->mutable_values())[k] = v;
}

// A push replacing acl slot `slot` with entries id -> action.
v1::PushGenerationRequest acl_push(uint32_t slot,
                                   const std::vector<std::pair<uint32_t, uint32_t>>& rules,
                                   const std::string& label = "") {
  v1::PushGenerationRequest req;
  req.set_label(label);
  v1::SlotChange* c = req.add_changes();
  c->set_map("acl");
  c->mutable_slot()->set_index(slot);
  for (auto [id, action] : rules) {
    v1::Entry* e = c->add_entries();
    set_fields(e->mutable_key_fields(), {{"id", std::to_string(id)}});
    set_fields(e->mutable_value_fields(), {{"action", std::to_string(action)}});
  }
  return req;
}

class ApiServiceTest : public test::BpffsTest {
 protected:
  void SetUp() override {
    test::BpffsTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;

    Result<config::DaemonConfig> cfg =
        config::parse_config(config_yaml(bpffs_->join("policyd")), "test.yaml");
    ASSERT_TRUE(cfg.ok()) << cfg.error().message();
    config_ = std::make_shared<const config::DaemonConfig>(std::move(cfg).value());
    Result<std::unique_ptr<core::Engine>> engine = core::Engine::open(config_->engine);
    ASSERT_TRUE(engine.ok()) << engine.error().message();
    if (state_dir_.empty()) {
      committer_ = std::make_unique<core::Committer>(std::move(engine).value(),
                                                     core::CommitterOptions{config_->history});
    } else {
      auto store = core::StateStore::open(state_dir_);
      ASSERT_TRUE(store.ok()) << store.error().message();
      auto committer = core::Committer::open(std::move(engine).value(), std::move(store).value(),
                                             core::CommitterOptions{config_->history});
      ASSERT_TRUE(committer.ok()) << committer.error().message();
      committer_ = std::move(committer).value();
    }
    auth_ = std::make_shared<TestAuthorizer>();
    service_ = std::make_unique<PolicyService>(
        *committer_, [this] { return config_; }, auth_,
        [this]() -> Result<ReloadSummary> {
          std::lock_guard lock(reload_mu_);
          if (reload_result_) return *reload_result_;
          return ReloadSummary{{"new"}, {"old"}, {}};
        });

    socket_ = std::filesystem::temp_directory_path() /
              ("policyd-api-test-" + std::to_string(::getpid()) + ".sock");
    std::filesystem::remove(socket_);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + socket_.string(), grpc::InsecureServerCredentials());
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_) << "cannot listen on " << socket_;
    stub_ = v1::Policy::NewStub(
        grpc::CreateChannel("unix:" + socket_.string(), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + seconds(5));
    server_.reset();
    service_.reset();
    committer_.reset();
    if (!socket_.empty()) std::filesystem::remove(socket_);
  }

  static std::unique_ptr<grpc::ClientContext> ctx() {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + seconds(10));
    return c;
  }

  grpc::Status push(const v1::PushGenerationRequest& req, v1::PushGenerationResponse* resp) {
    return stub_->PushGeneration(ctx().get(), req, resp);
  }

  // Writes `hits` into entry `id` of the inner map live in acl `slot`, as a program would.
  void bump_hits(uint32_t slot, uint32_t id, uint64_t hits) {
    v1::GetStateResponse state;
    ASSERT_TRUE(stub_->GetState(ctx().get(), {}, &state).ok());
    uint32_t map_id = 0;
    for (const auto& m : state.maps()) {
      if (m.name() != "acl") continue;
      for (const auto& s : m.live_slots()) {
        if (s.slot().index() == slot) map_id = s.map_id();
      }
    }
    ASSERT_NE(map_id, 0u) << "acl slot " << slot << " is empty";
    int fd = bpf_map_get_fd_by_id(map_id);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    uint8_t value[12] = {};
    ASSERT_EQ(bpf_map_lookup_elem(fd, &id, value), 0) << std::strerror(errno);
    std::memcpy(value + 4, &hits, sizeof(hits));
    ASSERT_EQ(bpf_map_update_elem(fd, &id, value, BPF_EXIST), 0) << std::strerror(errno);
    ::close(fd);
  }

  std::string state_dir_;  // set before SetUp: the committer records there
  std::shared_ptr<const config::DaemonConfig> config_;
  std::unique_ptr<core::Committer> committer_;
  std::shared_ptr<TestAuthorizer> auth_;
  std::unique_ptr<PolicyService> service_;
  std::filesystem::path socket_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Policy::Stub> stub_;
  std::mutex reload_mu_;
  std::optional<Result<ReloadSummary>> reload_result_;
};

TEST_F(ApiServiceTest, PushStateDumpAndHistory) {
  v1::PushGenerationResponse pushed;
  grpc::Status st = push(acl_push(1, {{10, 1}, {20, 2}}, "first"), &pushed);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(pushed.generation(), 1u);
  EXPECT_EQ(pushed.batch_size(), 1u);
  EXPECT_FALSE(pushed.replayed());

  v1::GetStateResponse state;
  st = stub_->GetState(ctx().get(), {}, &state);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(state.generation(), 1u);
  EXPECT_EQ(state.label(), "first");
  EXPECT_EQ(state.barrier_strategy(), "concurrent");
  EXPECT_FALSE(state.kernel().empty());
  EXPECT_GE(state.barriers(), 1u);
  EXPECT_EQ(state.generations_committed(), 1u);
  ASSERT_EQ(state.maps_size(), 2);
  const v1::MapState& acl = state.maps(0);
  EXPECT_EQ(acl.name(), "acl");
  EXPECT_EQ(acl.pin_path(), bpffs_->join("policyd/acl"));
  EXPECT_TRUE(std::filesystem::exists(acl.pin_path()));
  EXPECT_EQ(acl.value_size(), 12u);
  ASSERT_EQ(acl.value_layout_size(), 2);
  EXPECT_EQ(acl.value_layout(1).name(), "hits");
  EXPECT_EQ(acl.value_layout(1).offset(), 4u);
  EXPECT_TRUE(acl.value_layout(1).counter());
  ASSERT_EQ(acl.live_slots_size(), 1);
  EXPECT_EQ(acl.live_slots(0).slot().index(), 1u);
  EXPECT_EQ(acl.live_slots(0).generation(), 1u);
  EXPECT_NE(acl.live_slots(0).map_id(), 0u);
  EXPECT_EQ(state.maps(1).name(), "ports");
  EXPECT_EQ(state.maps(1).slot_key_layout_size(), 1);

  v1::DumpSlotRequest dump_req;
  dump_req.set_map("acl");
  dump_req.mutable_slot()->set_index(1);
  v1::DumpSlotResponse dump;
  st = stub_->DumpSlot(ctx().get(), dump_req, &dump);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(dump.map_id(), acl.live_slots(0).map_id());
  EXPECT_EQ(dump.generation(), 1u);
  ASSERT_EQ(dump.entries_size(), 2);
  std::map<std::string, std::string> actions;
  for (const auto& e : dump.entries()) {
    actions[e.key_fields().values().at("id")] = e.value_fields().values().at("action");
    EXPECT_EQ(e.value().size(), 12u);
    EXPECT_EQ(e.per_cpu_values_size(), 0);
  }
  EXPECT_EQ(actions, (std::map<std::string, std::string>{{"10", "1"}, {"20", "2"}}));

  v1::ListGenerationsResponse gens;
  st = stub_->ListGenerations(ctx().get(), {}, &gens);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(gens.current(), 1u);
  ASSERT_EQ(gens.generations_size(), 1);
  EXPECT_EQ(gens.generations(0).label(), "first");
  EXPECT_EQ(gens.generations(0).changes(), 1u);
  EXPECT_EQ(gens.generations(0).entries(), 2u);
  EXPECT_GT(gens.generations(0).committed_unix_ms(), 0);
}

TEST_F(ApiServiceTest, TypedHashSlotAndPerCpuDump) {
  v1::PushGenerationRequest req;
  v1::SlotChange* c = req.add_changes();
  c->set_map("ports");
  set_fields(c->mutable_slot()->mutable_fields(), {{"ifindex", "7"}});
  v1::Entry* e = c->add_entries();
  set_fields(e->mutable_key_fields(), {{"port", "443"}});
  v1::PushGenerationResponse pushed;
  grpc::Status st = push(req, &pushed);
  ASSERT_TRUE(st.ok()) << st.error_message();

  v1::DumpSlotRequest dump_req;
  dump_req.set_map("ports");
  dump_req.mutable_slot()->set_key(std::string("\x07\0\0\0", 4));  // raw form of the same slot
  v1::DumpSlotResponse dump;
  st = stub_->DumpSlot(ctx().get(), dump_req, &dump);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(dump.entries_size(), 1);
  EXPECT_EQ(dump.entries(0).key(), std::string("\x01\xbb\0\0", 4));
  EXPECT_EQ(dump.entries(0).key_fields().values().at("port"), "443");
  EXPECT_EQ(dump.entries(0).per_cpu_values_size(), libbpf_num_possible_cpus());
  EXPECT_EQ(dump.entries(0).value_fields().values().at("packets"), "0");

  v1::GetStateResponse state;
  ASSERT_TRUE(stub_->GetState(ctx().get(), {}, &state).ok());
  ASSERT_EQ(state.maps(1).live_slots_size(), 1);
  EXPECT_EQ(state.maps(1).live_slots(0).slot().key(), std::string("\x07\0\0\0", 4));
}

TEST_F(ApiServiceTest, G5_CountersAreDrainedPlusLive) {
  v1::PushGenerationResponse pushed;
  ASSERT_TRUE(push(acl_push(0, {{1, 1}}), &pushed).ok());
  bump_hits(0, 1, 5);

  v1::GetCountersRequest creq;
  creq.set_map("acl");
  v1::GetCountersResponse counters;
  grpc::Status st = stub_->GetCounters(ctx().get(), creq, &counters);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(counters.counters_size(), 1);
  EXPECT_EQ(counters.counters(0).slot(), "0");
  EXPECT_EQ(counters.counters(0).field(), "hits");
  EXPECT_EQ(counters.counters(0).drained(), 0u);
  EXPECT_EQ(counters.counters(0).live(), 5u);

  // Replacing the slot drains the old inner map: its 5 hits move to `drained`.
  ASSERT_TRUE(push(acl_push(0, {{1, 1}}), &pushed).ok());
  bump_hits(0, 1, 2);
  counters.Clear();
  ASSERT_TRUE(stub_->GetCounters(ctx().get(), creq, &counters).ok());
  ASSERT_EQ(counters.counters_size(), 1);
  EXPECT_EQ(counters.counters(0).drained(), 5u);
  EXPECT_EQ(counters.counters(0).live(), 2u);

  // Deleting the slot leaves only the drained total.
  v1::PushGenerationRequest del;
  v1::SlotChange* c = del.add_changes();
  c->set_map("acl");
  c->mutable_slot()->set_index(0);
  c->set_delete_(true);
  ASSERT_TRUE(push(del, &pushed).ok());
  counters.Clear();
  ASSERT_TRUE(stub_->GetCounters(ctx().get(), {}, &counters).ok());
  ASSERT_EQ(counters.counters_size(), 1);
  EXPECT_EQ(counters.counters(0).drained(), 7u);
  EXPECT_EQ(counters.counters(0).live(), 0u);

  creq.set_map("nope");
  EXPECT_EQ(stub_->GetCounters(ctx().get(), creq, &counters).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ApiServiceTest, ErrorsReachTheClientWithTheirCodes) {
  v1::PushGenerationResponse pushed;
  v1::PushGenerationRequest bad = acl_push(0, {{1, 1}});
  bad.mutable_changes(0)->set_map("nope");
  grpc::Status st = push(bad, &pushed);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "changes[0].map: unknown map \"nope\"");

  // Core validation (G1) names map, slot and entry too.
  st = push(acl_push(9, {{1, 1}}), &pushed);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("out of range"), std::string::npos) << st.error_message();

  std::vector<std::pair<uint32_t, uint32_t>> many;
  for (uint32_t i = 0; i < 101; ++i) many.emplace_back(i, 1);
  st = push(acl_push(0, many), &pushed);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("max_entries_per_push"), std::string::npos);

  v1::PushGenerationRequest stale = acl_push(0, {{1, 1}});
  stale.set_expected_generation(42);
  st = push(stale, &pushed);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  v1::DumpSlotRequest dump_req;
  dump_req.set_map("acl");
  dump_req.mutable_slot()->set_index(2);
  v1::DumpSlotResponse dump;
  EXPECT_EQ(stub_->DumpSlot(ctx().get(), dump_req, &dump).error_code(),
            grpc::StatusCode::NOT_FOUND);  // empty slot
  dump_req.set_map("nope");
  EXPECT_EQ(stub_->DumpSlot(ctx().get(), dump_req, &dump).error_code(),
            grpc::StatusCode::NOT_FOUND);
  dump_req.set_map("ports");
  st = stub_->DumpSlot(ctx().get(), dump_req, &dump);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "slot.index: map \"ports\" is a hash_of_maps: give key or fields");

  v1::RollbackRequest rb;
  rb.set_generation(77);
  v1::RollbackResponse rolled;
  EXPECT_EQ(stub_->Rollback(ctx().get(), rb, &rolled).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ApiServiceTest, G9_IdempotentRetryIsReplayed) {
  v1::PushGenerationRequest req = acl_push(0, {{1, 1}});
  req.set_request_id("once");
  v1::PushGenerationResponse first, again;
  ASSERT_TRUE(push(req, &first).ok());
  ASSERT_TRUE(push(req, &again).ok());
  EXPECT_EQ(again.generation(), first.generation());
  EXPECT_TRUE(again.replayed());
}

TEST_F(ApiServiceTest, PushStreamCommitsOneGeneration) {
  // Three messages; slots 0 and 3 are each continued in the following message.
  v1::PushGenerationRequest head = acl_push(0, {{1, 1}, {2, 2}}, "streamed");
  head.set_request_id("s-1");
  v1::PushGenerationRequest middle = acl_push(0, {{4, 4}});
  *middle.add_changes() = acl_push(3, {{3, 3}}).changes(0);
  v1::PushGenerationRequest last = acl_push(3, {{5, 5}});

  auto c = ctx();
  v1::PushGenerationResponse resp;
  auto writer = stub_->PushGenerationStream(c.get(), &resp);
  ASSERT_TRUE(writer->Write(head));
  ASSERT_TRUE(writer->Write(middle));
  ASSERT_TRUE(writer->Write(last));
  ASSERT_TRUE(writer->WritesDone());
  grpc::Status st = writer->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.generation(), 1u);

  v1::ListGenerationsResponse gens;
  ASSERT_TRUE(stub_->ListGenerations(ctx().get(), {}, &gens).ok());
  ASSERT_EQ(gens.generations_size(), 1);
  EXPECT_EQ(gens.generations(0).label(), "streamed");
  EXPECT_EQ(gens.generations(0).request_id(), "s-1");
  EXPECT_EQ(gens.generations(0).changes(), 2u);
  EXPECT_EQ(gens.generations(0).entries(), 5u);

  // A slot named again later in a message (not as its opening continuation) is a second change
  // of the same slot: core validation refuses the push, naming the change by its global index.
  auto c2 = ctx();
  auto writer2 = stub_->PushGenerationStream(c2.get(), &resp);
  ASSERT_TRUE(writer2->Write(acl_push(1, {{1, 1}})));
  v1::PushGenerationRequest again = acl_push(2, {{1, 1}});
  *again.add_changes() = acl_push(1, {{2, 2}}).changes(0);
  ASSERT_TRUE(writer2->Write(again));
  ASSERT_TRUE(writer2->WritesDone());
  st = writer2->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("changes[2]"), std::string::npos) << st.error_message();
  EXPECT_NE(st.error_message().find("changes[0]"), std::string::npos) << st.error_message();
}

TEST_F(ApiServiceTest, PushStreamCancelledMidwayCommitsNothing) {
  auto c = ctx();
  v1::PushGenerationResponse resp;
  auto writer = stub_->PushGenerationStream(c.get(), &resp);
  ASSERT_TRUE(writer->Write(acl_push(0, {{1, 1}})));
  c->TryCancel();
  EXPECT_FALSE(writer->Finish().ok());
  // Give the server time to see the cancellation, then check nothing was committed.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  v1::ListGenerationsResponse gens;
  ASSERT_TRUE(stub_->ListGenerations(ctx().get(), {}, &gens).ok());
  EXPECT_EQ(gens.current(), 0u);
}

TEST_F(ApiServiceTest, RollbackRestoresAnEarlierGeneration) {
  v1::PushGenerationResponse pushed;
  ASSERT_TRUE(push(acl_push(0, {{1, 1}}, "a"), &pushed).ok());
  ASSERT_TRUE(push(acl_push(0, {{1, 9}}, "b"), &pushed).ok());
  v1::RollbackResponse rolled;
  grpc::Status st = stub_->Rollback(ctx().get(), {}, &rolled);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(rolled.generation(), 3u);
  EXPECT_EQ(rolled.restored(), 1u);

  v1::DumpSlotRequest dump_req;
  dump_req.set_map("acl");
  dump_req.mutable_slot()->set_index(0);
  v1::DumpSlotResponse dump;
  ASSERT_TRUE(stub_->DumpSlot(ctx().get(), dump_req, &dump).ok());
  ASSERT_EQ(dump.entries_size(), 1);
  EXPECT_EQ(dump.entries(0).value_fields().values().at("action"), "1");
}

TEST_F(ApiServiceTest, AccessIsCheckedPerRpc) {
  auth_->granted = Access::kRead;
  v1::PushGenerationResponse pushed;
  grpc::Status st = push(acl_push(0, {{1, 1}}), &pushed);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(st.error_message(),
            "PushGeneration needs write access; the caller (uid 1234 gid 5678) has read");
  v1::RollbackResponse rolled;
  EXPECT_EQ(stub_->Rollback(ctx().get(), {}, &rolled).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::ReloadConfigResponse reloaded;
  EXPECT_EQ(stub_->ReloadConfig(ctx().get(), {}, &reloaded).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  {
    auto c = ctx();
    v1::PushGenerationResponse resp;
    auto writer = stub_->PushGenerationStream(c.get(), &resp);
    writer->Write(acl_push(0, {{1, 1}}));
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  v1::GetStateResponse state;
  EXPECT_TRUE(stub_->GetState(ctx().get(), {}, &state).ok());

  auth_->granted = Access::kNone;
  st = stub_->GetState(ctx().get(), {}, &state);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(st.error_message().find("GetState needs read access"), std::string::npos);
  v1::ListGenerationsResponse gens;
  EXPECT_EQ(stub_->ListGenerations(ctx().get(), {}, &gens).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::GetCountersResponse counters;
  EXPECT_EQ(stub_->GetCounters(ctx().get(), {}, &counters).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::DumpSlotResponse dump;
  EXPECT_EQ(stub_->DumpSlot(ctx().get(), {}, &dump).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  auto c = ctx();
  auto reader = stub_->WatchEvents(c.get(), {});
  v1::Event ev;
  EXPECT_FALSE(reader->Read(&ev));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(ApiServiceTest, WatchSeesCommittedDrainedAndReloaded) {
  auto c = ctx();
  auto reader = stub_->WatchEvents(c.get(), {});
  reader->WaitForInitialMetadata();  // the watch is registered
  EXPECT_EQ(service_->watchers(), 1u);

  v1::PushGenerationResponse pushed;
  ASSERT_TRUE(push(acl_push(2, {{1, 1}}, "one"), &pushed).ok());
  ASSERT_TRUE(push(acl_push(2, {{1, 2}}, "two"), &pushed).ok());
  // Events follow the acks (the committer publishes after acking): read up to the drain of
  // the inner map that generation 2 replaced.
  std::vector<v1::Event> events;
  v1::Event ev;
  while (events.size() < 3 && reader->Read(&ev)) events.push_back(ev);
  ASSERT_EQ(events.size(), 3u);
  ASSERT_TRUE(events[0].has_committed());
  EXPECT_EQ(events[0].committed().generations(0), 1u);
  EXPECT_EQ(events[0].committed().labels(0), "one");
  EXPECT_GT(events[0].unix_ms(), 0);
  ASSERT_TRUE(events[1].has_committed());
  EXPECT_EQ(events[1].committed().generations(0), 2u);
  EXPECT_EQ(events[1].committed().slots_written(), 1u);
  ASSERT_TRUE(events[2].has_drained());
  EXPECT_EQ(events[2].drained().map(), "acl");
  EXPECT_EQ(events[2].drained().slot(), "2");
  EXPECT_EQ(events[2].drained().installed_by(), 1u);
  EXPECT_EQ(events[2].drained().replaced_by(), 2u);
  EXPECT_EQ(events[2].drained().entries(), 1u);
  EXPECT_EQ(events[2].drained().counters().at("hits"), 0u);

  v1::ReloadConfigResponse reloaded;
  grpc::Status st = stub_->ReloadConfig(ctx().get(), {}, &reloaded);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(reloaded.added_maps_size(), 1);
  EXPECT_EQ(reloaded.added_maps(0), "new");
  ASSERT_TRUE(reader->Read(&ev));
  ASSERT_TRUE(ev.has_reloaded());
  EXPECT_EQ(ev.reloaded().added_maps(0), "new");
  EXPECT_EQ(ev.reloaded().kept_maps(0), "old");

  // A SIGHUP reload is published by the app through the same path.
  service_->publish_reloaded(ReloadSummary{{}, {}, {"gone"}});
  ASSERT_TRUE(reader->Read(&ev));
  ASSERT_TRUE(ev.has_reloaded());
  EXPECT_EQ(ev.reloaded().removed_maps(0), "gone");

  c->TryCancel();  // the server side finishes and unregisters the watcher
  while (reader->Read(&ev)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  for (int i = 0; i < 100 && service_->watchers() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(service_->watchers(), 0u);
}

TEST_F(ApiServiceTest, ReloadFailureKeepsItsCode) {
  {
    std::lock_guard lock(reload_mu_);
    reload_result_ = Result<ReloadSummary>(
        failed_precondition("maps[0].inner.type: map \"acl\" cannot change type"));
  }
  v1::ReloadConfigResponse reloaded;
  grpc::Status st = stub_->ReloadConfig(ctx().get(), {}, &reloaded);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(st.error_message(), "maps[0].inner.type: map \"acl\" cannot change type");
}

TEST_F(ApiServiceTest, G6_LaggingWatcherIsDropped) {
  auto c = ctx();
  auto reader = stub_->WatchEvents(c.get(), {});
  reader->WaitForInitialMetadata();
  ASSERT_EQ(service_->watchers(), 1u);
  // Nobody reads: once the transport's flow-control window is full, events queue up in the
  // service until the watcher is dropped.
  const ReloadSummary big{{std::string(1024, 'm')}, {}, {}};
  const auto give_up = std::chrono::steady_clock::now() + seconds(8);
  size_t published = 0;
  while (service_->watchers() > 0 && std::chrono::steady_clock::now() < give_up) {
    for (int i = 0; i < 1000; ++i) service_->publish_reloaded(big);
    published += 1000;
  }
  ASSERT_EQ(service_->watchers(), 0u) << "still fed after " << published << " events";
  size_t received = 0;
  v1::Event ev;
  while (reader->Read(&ev)) ++received;
  grpc::Status st = reader->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_NE(st.error_message().find("behind"), std::string::npos) << st.error_message();
  EXPECT_LT(received, published);

  // Others are unaffected.
  v1::GetStateResponse state;
  EXPECT_TRUE(stub_->GetState(ctx().get(), {}, &state).ok());
}

// Reads of live kernel state do not queue on the committer thread: with that thread held by
// a job that blocks until the test lets go, and a push waiting behind it, GetState,
// GetCounters and DumpSlot are still answered, and show the state before the push.
TEST_F(ApiServiceTest, G6_ReadsAreAnsweredWhileTheCommitterIsBusy) {
  v1::PushGenerationResponse pushed;
  ASSERT_TRUE(push(acl_push(0, {{1, 1}}, "before"), &pushed).ok());
  bump_hits(0, 1, 5);

  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::promise<void> holding;
  committer_->post([released, &holding](core::CommitEngine* /*engine*/) {
    holding.set_value();
    released.wait();
  });
  holding.get_future().wait();
  v1::PushGenerationResponse later;
  std::thread pusher([&] { (void)push(acl_push(1, {{2, 2}}, "after"), &later); });
  bool let_go = false;
  auto let_go_and_join = [&] {
    if (!std::exchange(let_go, true)) release.set_value();
    if (pusher.joinable()) pusher.join();
  };
  test::ScopeExit at_exit(let_go_and_join);  // a failed ASSERT must not leave the committer held

  auto short_ctx = [] {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + seconds(5));
    return c;
  };
  v1::GetStateResponse state;
  grpc::Status st = stub_->GetState(short_ctx().get(), {}, &state);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(state.generation(), 1u);
  v1::GetCountersResponse counters;
  st = stub_->GetCounters(short_ctx().get(), {}, &counters);
  EXPECT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(counters.counters_size(), 1);
  EXPECT_EQ(counters.counters(0).live(), 5u);
  v1::DumpSlotRequest dump_req;
  dump_req.set_map("acl");
  dump_req.mutable_slot()->set_index(0);
  v1::DumpSlotResponse dump;
  st = stub_->DumpSlot(short_ctx().get(), dump_req, &dump);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(dump.entries_size(), 1);

  let_go_and_join();
  EXPECT_EQ(later.generation(), 2u);
}

// The fixture with a durable record (core::StateStore in a temp dir).
class ApiServiceStoreTest : public ApiServiceTest {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "policyd-api-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    state_dir_ = tmpl;
    ApiServiceTest::SetUp();
  }
  void TearDown() override {
    ApiServiceTest::TearDown();
    std::error_code ec;
    std::filesystem::remove_all(state_dir_, ec);
  }
};

// The engine updates its slots when a commit reaches the kernel; the push is acked (and the
// committer's view moves) only once its record is durable. GetState's generation and slots come
// from one snapshot, so no slot ever shows a generation newer than the one reported. The record
// write is held here by another connection's write lock on state.db.
TEST_F(ApiServiceStoreTest, G6_GetStateNeverShowsASlotNewerThanItsGeneration) {
  v1::PushGenerationResponse pushed;
  ASSERT_TRUE(push(acl_push(0, {{1, 1}}, "one"), &pushed).ok());
  auto db = core::SqliteDb::open(state_dir_ + "/state.db", false);
  ASSERT_TRUE(db.ok()) << db.error().message();
  ASSERT_TRUE((*db)->exec("BEGIN IMMEDIATE").ok());  // the record's next write waits for this
  bool locked = true;
  auto unlock = [&] {
    if (std::exchange(locked, false)) (void)(*db)->exec("ROLLBACK");
  };
  v1::PushGenerationResponse later;
  std::thread pusher([&] { (void)push(acl_push(0, {{2, 2}}, "two"), &later); });
  test::ScopeExit at_exit([&] {
    unlock();
    pusher.join();
  });

  bool saw_two = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  while (!saw_two && std::chrono::steady_clock::now() < deadline) {
    v1::GetStateResponse state;
    grpc::Status st = stub_->GetState(ctx().get(), {}, &state);
    ASSERT_TRUE(st.ok()) << st.error_message();
    for (const auto& m : state.maps()) {
      for (const auto& s : m.live_slots()) {
        ASSERT_LE(s.generation(), state.generation())
            << m.name() << " slot " << s.slot().index() << " shows generation " << s.generation()
            << " in a state of generation " << state.generation();
        if (s.generation() == 2) {
          saw_two = true;
          EXPECT_EQ(state.label(), "two");
        }
      }
    }
  }
  EXPECT_TRUE(saw_two) << "the push never reached the kernel while its record was held";
  unlock();
}

TEST_F(ApiServiceTest, AfterCommitterStopEverythingIsUnavailable) {
  committer_->stop();
  v1::PushGenerationResponse pushed;
  EXPECT_EQ(push(acl_push(0, {{1, 1}}), &pushed).error_code(), grpc::StatusCode::UNAVAILABLE);
  v1::GetStateResponse state;
  grpc::Status st = stub_->GetState(ctx().get(), {}, &state);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  v1::GetCountersResponse counters;
  EXPECT_EQ(stub_->GetCounters(ctx().get(), {}, &counters).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  v1::DumpSlotRequest dump_req;
  dump_req.set_map("acl");
  dump_req.mutable_slot()->set_index(0);
  v1::DumpSlotResponse dump;
  EXPECT_EQ(stub_->DumpSlot(ctx().get(), dump_req, &dump).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  v1::RollbackResponse rolled;
  EXPECT_EQ(stub_->Rollback(ctx().get(), {}, &rolled).error_code(), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace policyd::api
