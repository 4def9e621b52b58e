// Who may call the API: SO_PEERCRED against the allow-lists. Clients run as other users (the
// test forks, drops to the uid and execs policyd_e2e_client or policyctl), so the daemon sees
// a real foreign peer. The socket is 0666 in a traversable dir here, so that the refusal comes
// from policyd, not from file permissions. Root is always allowed, even when in no list.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <regex>
#include <string>

#include "daemon_fixture.h"

#ifndef E2E_CLIENT_BIN
#error "E2E_CLIENT_BIN must name policyd_e2e_client (set by tests/e2e/CMakeLists.txt)"
#endif

namespace policyd::e2e {
namespace {

constexpr uid_t kStranger = 65534;     // nobody: in no list
constexpr uid_t kReader = 65533;       // in allow.read.uids
constexpr uid_t kGroupReader = 65532;  // its gid is in allow.read.gids
constexpr gid_t kReaderGid = 4242;

struct ClientOutcome {
  int code = -1;  // gRPC status code; -1 when the helper did not report one
  std::string message;
  std::string raw;
};

class AuthTest : public DaemonTest {
 protected:
  DaemonOptions daemon_options() const override {
    DaemonOptions o;
    o.socket_mode = "0666";
    o.world_traversable = true;
    o.write_uids = {};  // root only (implicitly)
    o.write_gids = {};
    o.read_uids = {kReader};
    o.read_gids = {kReaderGid};
    return o;
  }

  void SetUp() override {
    DaemonTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    // Root is in no allow-list here and must still be able to write.
    ASSERT_EQ(push_ok(acl_push(0, {{"10.0.0.0/8", 1}}, "root-push")), 1u);
    base_ = snapshot();
  }

  ClientOutcome call_as(uid_t uid, gid_t gid, const std::string& call) {
    RunOptions o;
    o.uid = uid;
    o.gid = gid;
    CmdResult r = run_command({E2E_CLIENT_BIN, socket_path(), call}, o);
    ClientOutcome out;
    out.raw = "exit " + std::to_string(r.exit_code) + "\nstdout: " + r.out + "\nstderr: " + r.err;
    EXPECT_EQ(r.exit_code, 0) << out.raw;
    std::smatch m;
    if (std::regex_search(r.out, m, std::regex("code=(-?[0-9]+)"))) out.code = std::stoi(m[1]);
    if (std::regex_search(r.out, m, std::regex("message=([^\n]*)"))) out.message = m[1];
    return out;
  }

  void expect_unchanged() {
    EXPECT_TRUE(daemon().running());
    v1::GetStateResponse st = get_state();
    EXPECT_EQ(st.generation(), 1u);
    EXPECT_EQ(st.label(), "root-push");
    EXPECT_EQ(snapshot(), base_);
  }

  KernelSnapshot base_;
};

constexpr int kOk = static_cast<int>(grpc::StatusCode::OK);
constexpr int kDenied = static_cast<int>(grpc::StatusCode::PERMISSION_DENIED);
constexpr int kDeadline = static_cast<int>(grpc::StatusCode::DEADLINE_EXCEEDED);
constexpr int kUnavailable = static_cast<int>(grpc::StatusCode::UNAVAILABLE);

TEST_F(AuthTest, SocketHasTheConfiguredMode) {
  struct stat sb {};
  ASSERT_EQ(::stat(socket_path().c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 07777, 0666u) << std::oct << (sb.st_mode & 07777);
}

// A caller in no allow-list could make no call at all: its connection is closed at accept, so
// it holds no daemon fd. Its client sees the connection fail (UNAVAILABLE); the daemon's log
// names the uid, once per second at most.
TEST_F(AuthTest, UidInNoAllowListIsClosedAtAccept) {
  for (const char* call : {"get_state", "list_generations", "push", "watch"}) {
    SCOPED_TRACE(call);
    ClientOutcome o = call_as(kStranger, kStranger, call);
    EXPECT_EQ(o.code, kUnavailable) << "want UNAVAILABLE (closed at accept); " << o.raw;
  }
  expect_unchanged();
  EXPECT_TRUE(contains_all(daemon().log(), {"from uid " + std::to_string(kStranger),
                                            "in neither api.allow.read nor api.allow.write"}))
      << daemon().log();

  // policyctl run by that user fails; nothing changes.
  RunOptions as_stranger;
  as_stranger.uid = kStranger;
  as_stranger.gid = kStranger;
  CmdResult r = ctl({"status"}, as_stranger);
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_TRUE(contains_all(r.err, {"UNAVAILABLE"})) << r.err;
  r = ctl({"push", write_file("p.yaml", "changes:\n  - {map: acl, slot: 1, delete: true}\n")},
          as_stranger);
  EXPECT_NE(r.exit_code, 0) << r.out;
  expect_unchanged();
}

TEST_F(AuthTest, ReadOnlyUidCanReadButNotWrite) {
  ClientOutcome st = call_as(kReader, kReader, "get_state");
  EXPECT_EQ(st.code, kOk) << st.raw;
  EXPECT_EQ(call_as(kReader, kReader, "list_generations").code, kOk);
  ClientOutcome w = call_as(kReader, kReader, "watch");
  EXPECT_TRUE(w.code == kDeadline || w.code == kOk)
      << "an admitted watch ends by its deadline; " << w.raw;
  ClientOutcome p = call_as(kReader, kReader, "push");
  EXPECT_EQ(p.code, kDenied) << p.raw;
  EXPECT_TRUE(contains_all(p.message, {"write", "access"})) << p.raw;
  expect_unchanged();

  RunOptions as_reader;
  as_reader.uid = kReader;
  as_reader.gid = kReader;
  CmdResult r = ctl({"status"}, as_reader);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // With two generations a rollback is possible: the reader's must be refused for want of
  // write access (with one generation it would fail for anyone and prove nothing).
  ASSERT_EQ(push_ok(acl_push(0, {{"10.9.0.0/16", 2}}, "second")), 2u);
  r = ctl({"rollback"}, as_reader);
  EXPECT_NE(r.exit_code, 0) << "a reader rolled back: " << r.out;
  EXPECT_TRUE(contains_all(r.err, {"PERMISSION_DENIED", "write"})) << r.err;
  EXPECT_EQ(get_state().label(), "second");
  r = ctl({"rollback"});  // the control: root may
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(get_state().generation(), 3u);  // a new generation with generation 1's contents
}

// A refusal must say who was refused: the operator reading the client's error (or the daemon's
// log line for it) needs the uid and gid the daemon saw, not a transport detail.
TEST_F(AuthTest, DenialsNameTheCallersUidAndGid) {
  ClientOutcome o = call_as(kStranger, kStranger + 100, "get_state");
  EXPECT_EQ(o.code, kUnavailable) << o.raw;
  EXPECT_TRUE(contains_all(daemon().log(), {"uid " + std::to_string(kStranger) + " gid " +
                                            std::to_string(kStranger + 100)}))
      << daemon().log();
  ClientOutcome p = call_as(kReader, kReader, "push");
  EXPECT_EQ(p.code, kDenied) << p.raw;
  EXPECT_TRUE(contains_all(p.message, {"uid " + std::to_string(kReader)})) << p.raw;
}

TEST_F(AuthTest, GidInReadListCanRead) {
  EXPECT_EQ(call_as(kGroupReader, kReaderGid, "get_state").code, kOk);
  ClientOutcome p = call_as(kGroupReader, kReaderGid, "push");
  EXPECT_EQ(p.code, kDenied) << p.raw;
  // The same uid with another gid is a stranger.
  EXPECT_EQ(call_as(kGroupReader, kGroupReader, "get_state").code, kUnavailable);
  expect_unchanged();
}

TEST_F(AuthTest, RootIsAlwaysAllowed) {
  // SetUp pushed as root with empty write lists; reads work too, and so does policyctl.
  EXPECT_EQ(call_as(0, 0, "push").code, kOk);
  CmdResult r = ctl({"status"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(get_state().generation(), 2u);
}

}  // namespace
}  // namespace policyd::e2e
