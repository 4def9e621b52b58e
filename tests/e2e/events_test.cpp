// What the daemon reports about the data plane: WatchEvents (committed and drained events) and
// GetCounters / `policyctl counters`, with real program activity: test_progs.bpf.c's
// count_arr_lpm runs (BPF_PROG_TEST_RUN) against the daemon's pinned acl outer map and bumps
// the `hits` counter of the entry it matches; replacing the slot must drain those hits.
#include <bpf/libbpf.h>
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "daemon_fixture.h"
#include "support/prog_run.h"
#include "test_progs.h"
#include "test_progs_ptr.h"

namespace policyd::e2e {
namespace {

constexpr uint32_t kSlot = 3;

using test::SkelPtr;

static_assert(sizeof(pd_test_value) == kAclValueSize, "acl's value is pd_test_value");
static_assert(sizeof(pd_lpm4_key) == kAclKeySize, "acl's key is pd_lpm4_key");

class EventsTest : public DaemonTest {
 protected:
  // Loads test_progs with its arr_lpm outer map replaced by the daemon's pinned acl.
  SkelPtr load_programs() {
    auto acl = kernel::open_pinned(pin("acl"));
    EXPECT_TRUE(acl.ok()) << acl.error().message();
    if (!acl.ok()) return nullptr;
    SkelPtr skel(test_progs__open());
    EXPECT_NE(skel, nullptr) << "test_progs__open: " << std::strerror(errno);
    if (!skel) return nullptr;
    const int rc = bpf_map__reuse_fd(skel->maps.arr_lpm, acl->get());
    EXPECT_EQ(rc, 0) << "bpf_map__reuse_fd(arr_lpm, pinned acl): " << std::strerror(-rc);
    if (rc != 0) return nullptr;
    const int lrc = test_progs__load(skel.get());
    EXPECT_EQ(lrc, 0) << "test_progs__load against the pinned acl: " << std::strerror(-lrc);
    if (lrc != 0) return nullptr;
    skel->bss->slot = kSlot;
    const uint8_t addr[4] = {10, 1, 2, 3};
    std::memcpy(&skel->bss->lpm_addr, addr, 4);
    return skel;
  }

  // Counters for acl slot kSlot, field hits, via gRPC.
  std::optional<v1::CounterValue> acl_hits(const std::string& slot = std::to_string(kSlot)) {
    grpc::ClientContext ctx;
    set_deadline(ctx);
    v1::GetCountersRequest req;
    req.set_map("acl");
    v1::GetCountersResponse resp;
    grpc::Status s = stub().GetCounters(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << describe(s);
    for (const v1::CounterValue& c : resp.counters()) {
      EXPECT_EQ(c.map(), "acl") << "GetCounters(map=acl) returned another map";
      if (c.slot() == slot && c.field() == "hits") return c;
    }
    return std::nullopt;
  }

  // Polls until acl slot kSlot's hits have drained == `drained` and live == `live` (the drain
  // runs after the ack, so it may lag it).
  bool wait_hits(uint64_t drained, uint64_t live) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      auto c = acl_hits();
      if (c && c->drained() == drained && c->live() == live) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    auto c = acl_hits();
    ADD_FAILURE() << "acl slot " << kSlot << " hits: want drained=" << drained << " live=" << live
                  << ", have "
                  << (c ? "drained=" + std::to_string(c->drained()) +
                              " live=" + std::to_string(c->live())
                        : std::string("no counter"));
    return false;
  }
};

// api.max_watchers_per_uid bounds the WatchEvents streams one uid holds (here 3): a fourth is
// ended with RESOURCE_EXHAUSTED naming the limit; once one ends, a new one is served.
class WatchQuotaTest : public EventsTest {
 protected:
  DaemonOptions daemon_options() const override {
    DaemonOptions o;
    o.api_extra_yaml = "  max_watchers_per_uid: 3\n";
    return o;
  }
};

TEST_F(WatchQuotaTest, G6_WatchEventsStreamsAreBoundedPerUid) {
  std::vector<std::unique_ptr<EventWatch>> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(synced_watch());
    ASSERT_FALSE(held.back()->finished().has_value()) << "the control: watch " << i << " ended";
  }
  EventWatch extra(daemon().new_stub());
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!extra.finished() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const std::optional<grpc::Status> st = extra.finished();
  ASSERT_TRUE(st.has_value()) << "a fourth WatchEvents stream of uid 0 was served";
  EXPECT_TRUE(has_error(*st, grpc::StatusCode::RESOURCE_EXHAUSTED,
                        {"uid 0 holds api.max_watchers_per_uid (3)"}));
  held.pop_back();  // cancels one
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  std::unique_ptr<EventWatch> again = synced_watch();
  EXPECT_FALSE(again->finished().has_value()) << "a stream ended but its quota was not released";
}

TEST_F(EventsTest, WatchReportsCommittedAndDrainedEvents) {
  std::unique_ptr<EventWatch> watch = synced_watch();
  ASSERT_FALSE(HasFailure());

  const uint64_t g1 = push_ok(acl_push(kSlot, {{"10.1.2.0/24", 1}, {"10.0.0.0/8", 2}}, "w1"));
  std::optional<KernelSlot> first = kernel_slot("acl", kSlot);
  ASSERT_TRUE(first.has_value());
  const uint64_t g2 = push_ok(acl_push(kSlot, {{"10.1.2.0/24", 5}}, "w2"));

  // The drained event of the map g1 installed and g2 replaced.
  auto drained_first = [&](const std::vector<v1::Event>& ev) {
    for (const v1::Drained& d : drained_events(ev)) {
      if (d.map() == "acl" && d.map_id() == first->map_id) return true;
    }
    return false;
  };
  ASSERT_TRUE(
      watch->wait_for([&](const auto& ev) { return saw_generation(ev, g2) && drained_first(ev); },
                      std::chrono::seconds(10)))
      << "no committed event for " << g2 << " or no drained event for map id " << first->map_id;

  const std::vector<v1::Event> events = watch->events();
  for (const v1::Event& e : events) EXPECT_GT(e.unix_ms(), 1'600'000'000'000) << e.DebugString();
  bool saw_g1 = false;
  for (const v1::Committed& c : committed_events(events)) {
    for (int i = 0; i < c.generations_size(); ++i) {
      if (c.generations(i) == g1) {
        saw_g1 = true;
        ASSERT_EQ(c.labels_size(), c.generations_size());
        EXPECT_EQ(c.labels(i), "w1");
        EXPECT_GE(c.slots_written(), 1u);
        EXPECT_GE(c.swap_ms(), 0.0);
      }
    }
  }
  EXPECT_TRUE(saw_g1) << "no committed event for " << g1;
  for (const v1::Drained& d : drained_events(events)) {
    if (d.map_id() != first->map_id) continue;
    EXPECT_EQ(d.map(), "acl");
    EXPECT_EQ(d.slot(), std::to_string(kSlot));
    EXPECT_EQ(d.installed_by(), g1);
    EXPECT_EQ(d.replaced_by(), g2);
    EXPECT_EQ(d.entries(), 2u);
    ASSERT_EQ(d.counters().count("hits"), 1u) << d.DebugString();
    EXPECT_EQ(d.counters().at("hits"), 0u);
  }

  // A deleted slot drains too.
  std::optional<KernelSlot> second = kernel_slot("acl", kSlot);
  ASSERT_TRUE(second.has_value());
  v1::PushGenerationRequest del;
  add_delete(del, "acl", index_slot(kSlot));
  const uint64_t g3 = push_ok(del);
  EXPECT_TRUE(watch->wait_for(
      [&](const auto& ev) {
        for (const v1::Drained& d : drained_events(ev)) {
          if (d.map_id() == second->map_id && d.replaced_by() == g3) return true;
        }
        return false;
      },
      std::chrono::seconds(10)))
      << "no drained event for the deleted slot's map " << second->map_id;
}

TEST_F(EventsTest, PolicyctlWatchPrintsEvents) {
  // policyctl watch runs until interrupted: give it 3 s (then SIGKILL) while pushes go on; the
  // stream registers at some point in that window and then sees every following push.
  CmdResult watch;
  std::thread watcher([&] {
    RunOptions o;
    o.timeout = std::chrono::milliseconds(3000);
    watch = ctl({"--json", "watch"}, o);
  });
  for (int i = 0; i < 25; ++i) {
    push_ok(acl_push(kSlot, {{"10.1.2.0/24", static_cast<uint32_t>(i)}},
                     "watch-me-" + std::to_string(i)));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  watcher.join();
  int objects = 0;
  bool committed = false;
  std::istringstream lines(watch.out);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    auto js = parse_json(line);
    EXPECT_TRUE(js.has_value()) << "not one JSON object per line: " << line;
    if (!js) continue;
    ++objects;
    committed = committed || line.find("watch-me-") != std::string::npos;
  }
  EXPECT_GT(objects, 0) << "policyctl watch printed nothing; stderr: " << watch.err;
  EXPECT_TRUE(committed) << "no committed event with a pushed label in: " << watch.out;
}

TEST_F(EventsTest, G5_CountersFromProgramActivityAreLiveThenDrained) {
  SkelPtr skel = load_programs();
  ASSERT_NE(skel, nullptr);
  const int prog = bpf_program__fd(skel->progs.count_arr_lpm);
  ASSERT_GE(prog, 0);

  // 10.1.2.3 matches 10.1.2.0/24 (action 7), the longest prefix.
  push_ok(acl_push(kSlot, {{"10.1.2.0/24", 7}, {"10.0.0.0/8", 8}}, "c1"));
  auto r = test::run_xdp(prog, 100);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(*r, 2u /* XDP_PASS */) << "the program did not find 10.1.2.3 in acl slot " << kSlot;
  EXPECT_EQ(skel->bss->last_action, 7u);
  EXPECT_EQ(skel->bss->hits_found, 100u);

  // The kernel's own view agrees: 100 hits on the matched entry.
  std::optional<KernelSlot> ks = kernel_slot("acl", kSlot);
  ASSERT_TRUE(ks.has_value());
  EXPECT_EQ(ks->entries[acl_key(24, 10, 1, 2, 0)], acl_value(7, 100));

  ASSERT_TRUE(wait_hits(0, 100));

  // Replacing the slot drains the 100 hits; the new map starts at 0.
  push_ok(acl_push(kSlot, {{"10.1.2.0/24", 9}}, "c2"));
  ASSERT_TRUE(wait_hits(100, 0));
  r = test::run_xdp(prog, 30);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(skel->bss->last_action, 9u);
  ASSERT_TRUE(wait_hits(100, 30));

  // Drained totals accumulate; deleting the slot drains the rest.
  v1::PushGenerationRequest del;
  add_delete(del, "acl", index_slot(kSlot));
  push_ok(del);
  ASSERT_TRUE(wait_hits(130, 0));

  // policyctl counters --json: {"counters": [{"map","slot","field","drained","live"}, ...]}.
  CmdResult c = ctl({"--json", "counters"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  auto js = parse_json(c.out);
  ASSERT_TRUE(js.has_value()) << "not a JSON object: " << c.out;
  ASSERT_TRUE(js->fields().count("counters")) << c.out;
  const auto& list = js->fields().at("counters");
  ASSERT_TRUE(list.has_list_value()) << c.out;
  bool found = false;
  for (const auto& item : list.list_value().values()) {
    ASSERT_TRUE(item.has_struct_value()) << c.out;
    const auto& f = item.struct_value().fields();
    for (const char* k : {"map", "slot", "field", "drained", "live"}) {
      ASSERT_TRUE(f.count(k)) << "counter without \"" << k << "\": " << c.out;
    }
    auto text = [](const google::protobuf::Value& v) {
      return v.has_string_value() ? v.string_value()
                                  : std::to_string(static_cast<long long>(v.number_value()));
    };
    if (f.at("map").string_value() == "acl" && text(f.at("slot")) == std::to_string(kSlot) &&
        f.at("field").string_value() == "hits") {
      found = true;
      EXPECT_EQ(text(f.at("drained")), "130") << c.out;
      EXPECT_EQ(text(f.at("live")), "0") << c.out;
    }
  }
  EXPECT_TRUE(found) << "no acl/" << kSlot << "/hits counter in: " << c.out;

  CmdResult plain = ctl({"counters"});
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_TRUE(contains_all(plain.out, {"acl", "hits", "130"}));
}

TEST_F(EventsTest, CountersCoverEveryLiveSlotAndFilterByMap) {
  v1::PushGenerationRequest req = acl_push(0, {{"10.0.0.0/8", 1}});
  add_change(req, "acl", index_slot(1), {typed_entry({{"prefix", "10.1.0.0/16"}}, {})});
  add_change(req, "ports", fields_slot({{"ifindex", "5"}}),
             {typed_entry({{"port", "80"}, {"proto", "6"}}, {{"verdict", "1"}})});
  push_ok(req);

  grpc::ClientContext ctx;
  set_deadline(ctx);
  v1::GetCountersResponse all;
  grpc::Status s = stub().GetCounters(&ctx, v1::GetCountersRequest(), &all);
  ASSERT_TRUE(s.ok()) << describe(s);
  std::set<std::string> seen;
  for (const v1::CounterValue& c : all.counters()) {
    seen.insert(c.map() + "/" + c.slot() + "/" + c.field());
    EXPECT_EQ(c.drained(), 0u) << c.DebugString();
    EXPECT_EQ(c.live(), 0u) << c.DebugString();
    EXPECT_NE(c.map(), "blob") << "blob has no counter field";
  }
  EXPECT_TRUE(seen.count("acl/0/hits")) << "missing acl/0/hits";
  EXPECT_TRUE(seen.count("acl/1/hits")) << "missing acl/1/hits";
  // Hash slots are 0x-hex of the raw slot key (ifindex 5, little-endian u32).
  EXPECT_TRUE(seen.count("ports/0x05000000/packets")) << "missing ports/0x05000000/packets";

  grpc::ClientContext ctx2;
  set_deadline(ctx2);
  v1::GetCountersRequest only;
  only.set_map("ports");
  v1::GetCountersResponse ports;
  s = stub().GetCounters(&ctx2, only, &ports);
  ASSERT_TRUE(s.ok()) << describe(s);
  ASSERT_GE(ports.counters_size(), 1);
  for (const v1::CounterValue& c : ports.counters()) EXPECT_EQ(c.map(), "ports");
}

}  // namespace
}  // namespace policyd::e2e
