// End-to-end harness: the real `policyd` binary on a unix socket in a temp dir, pins in a private
// bpffs, driven through gRPC and the real `policyctl`; the kernel state is read back
// independently through the pinned outer maps (never through the daemon).
//
// DaemonProcess spawns and stops one daemon (no gtest; the gRPC bench uses it too). DaemonTest
// is the gtest fixture around it: SetUp starts a daemon on a fresh config, TearDown stops it
// with SIGTERM, expects exit 0 and prints the daemon's stderr when the test failed.
// Threading: helpers that only talk to the daemon (stubs, run_command) may run on test threads;
// start/stop belong to the thread that runs the test.
#pragma once

#include <google/protobuf/struct.pb.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kernel/map.h"
#include "policyd/v1/policyd.grpc.pb.h"
#include "support/bpffs.h"
#include "util/result.h"

namespace policyd::e2e {

using Bytes = std::vector<uint8_t>;
namespace v1 = ::policyd::v1;

// ---------------------------------------------------------------------------------------------
// The default test configuration's maps. acl's value has test_progs.h's pd_test_value layout
// (action, pad, hits), so test_progs.bpf.c's count_arr_lpm can run against the pinned acl.

inline constexpr uint32_t kAclSlots = 64;
inline constexpr uint32_t kAclInnerMax = 256;
inline constexpr uint32_t kAclKeySize = 8;     // ipv4_prefix: u32 prefixlen + 4 address bytes
inline constexpr uint32_t kAclValueSize = 16;  // action u32, pad[4], hits u64 (counter)
inline constexpr uint32_t kPortsSlots = 16;
inline constexpr uint32_t kPortsInnerMax = 1024;
inline constexpr uint32_t kPortsKeySize = 4;     // port be16, proto u8, pad[1]
inline constexpr uint32_t kPortsValueSize = 12;  // verdict u8, pad[3], packets u64 (counter)
inline constexpr uint32_t kBlobSlots = 4;
inline constexpr uint32_t kBlobInnerMax = 4096;
inline constexpr uint32_t kBlobValueSize = 512;  // bytes[512]: big entries for the size limits

// The `maps:` section of the default test configuration (acl, ports, blob).
[[nodiscard]] std::string default_maps_yaml();
// One more map, `extra` (a 2-slot array_of_maps of u32 -> u32 hashes), as a list item to append
// to a `maps:` section: what reload tests add.
[[nodiscard]] std::string extra_map_yaml();

struct DaemonOptions {
  std::string socket_mode = "0660";
  std::vector<uint32_t> write_uids = {0};
  std::vector<uint32_t> write_gids;
  std::vector<uint32_t> read_uids = {0};
  std::vector<uint32_t> read_gids;
  std::string barrier = "auto";
  uint32_t history = 64;
  uint64_t max_message_bytes = 256 * 1024;
  uint64_t max_entries_per_push = 2000;
  std::string log_level = "debug";
  std::string maps_yaml = default_maps_yaml();
  // chmod 0755 the temp dir that holds the socket, so other uids can reach the socket.
  bool world_traversable = false;
  // Lines added to the `api:` mapping as they are ("  max_connections_per_uid: 8\n").
  std::string api_extra_yaml;
  // When not empty, the `api.tls` value (a YAML flow map: "{listen: ..., cert: ..., ...}").
  std::string tls_yaml;
  // The daemon's environment on top of the test's: "NAME=value" sets or replaces a variable,
  // a bare "NAME" removes it (NOTIFY_SOCKET, WATCHDOG_USEC, JOURNAL_STREAM...).
  std::vector<std::string> env;
  // When not empty, the `metrics` value (a YAML flow map: "{listen: 127.0.0.1:0}").
  std::string metrics_yaml;
  // When set, the daemon's RLIMIT_NOFILE {soft, hard}, set in the child before exec (as
  // `prlimit --nofile=soft:hard` or systemd's LimitNOFILE= would).
  std::optional<std::pair<uint64_t, uint64_t>> nofile;
};

// The `maps:` section (to the end of the file) of the config file at `path`; empty when the
// file has none.
[[nodiscard]] std::string maps_section(const std::string& path);

// The full YAML config for `options` with the given paths.
[[nodiscard]] std::string config_yaml(const DaemonOptions& options, const std::string& socket,
                                      const std::string& pin_dir, const std::string& state_dir);

// ---------------------------------------------------------------------------------------------
// Processes

struct CmdResult {
  int exit_code = -1;  // exit status; 128 + signal when killed by a signal; -1 if not run
  std::string out;
  std::string err;
};

struct RunOptions {
  std::optional<uid_t> uid;  // drop to this uid (and gid, no supplementary groups) before exec
  std::optional<gid_t> gid;
  std::chrono::milliseconds timeout{30'000};  // then SIGKILL (exit_code 128 + 9)
  std::string stdin_data;
};

// fork/exec argv[0] (a path) with stdout and stderr captured through pipes.
[[nodiscard]] CmdResult run_command(const std::vector<std::string>& argv,
                                    const RunOptions& options = {});

// `policyctl --socket SOCKET args...`.
[[nodiscard]] CmdResult run_policyctl(const std::string& socket,
                                      const std::vector<std::string>& args,
                                      const RunOptions& options = {});

// "Max open files" of /proc/<pid>/limits as it shows them: {soft, hard}; empty if unreadable.
[[nodiscard]] std::pair<std::string, std::string> open_files_limit(pid_t pid);

[[nodiscard]] std::string policyd_bin();
[[nodiscard]] std::string policyctl_bin();

// A daemon process on a temp dir and a bpffs directory. Not copyable; stop() or the destructor
// ends it (SIGTERM, then SIGKILL after the grace time).
class DaemonProcess {
 public:
  // Creates <work_dir>/{run/policyd.sock,state,policyd.yaml}; pins go to pin_dir.
  DaemonProcess(std::string work_dir, std::string pin_dir, DaemonOptions options);
  ~DaemonProcess();
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  // Writes the config (unless already written), spawns policyd and waits until GetState
  // answers (at most `ready_timeout`). The error says why, with the log's tail.
  [[nodiscard]] Status start(std::chrono::milliseconds ready_timeout = std::chrono::seconds(10));
  // SIGTERM, waits up to `grace` for the exit, then SIGKILL. Returns the exit code (128 + signal
  // when a signal ended it); -1 if not running.
  int stop(std::chrono::milliseconds grace = std::chrono::seconds(20));
  // Sends a signal without waiting.
  void signal(int sig) const;
  // True while the process has not exited (reaps it when it has).
  [[nodiscard]] bool running();
  // Exit code once it has exited (see stop()); nullopt while running.
  [[nodiscard]] std::optional<int> exit_code() const { return exit_code_; }
  [[nodiscard]] pid_t pid() const { return pid_; }

  [[nodiscard]] const std::string& work_dir() const { return work_dir_; }
  [[nodiscard]] const std::string& socket_path() const { return socket_; }
  [[nodiscard]] const std::string& pin_dir() const { return pin_dir_; }
  [[nodiscard]] const std::string& state_dir() const { return state_dir_; }
  [[nodiscard]] const std::string& config_path() const { return config_path_; }
  [[nodiscard]] const std::string& log_path() const { return log_path_; }
  [[nodiscard]] const DaemonOptions& options() const { return options_; }
  // Replaces the options and rewrites the config file (takes effect at the next start()).
  [[nodiscard]] Status rewrite_config(DaemonOptions options);
  // Everything the daemon wrote to stdout and stderr so far.
  [[nodiscard]] std::string log() const;

  // A new channel/stub to the daemon's socket.
  [[nodiscard]] std::shared_ptr<grpc::Channel> new_channel() const;
  [[nodiscard]] std::unique_ptr<v1::Policy::Stub> new_stub() const;

 private:
  [[nodiscard]] Status write_config();

  std::string work_dir_;
  std::string pin_dir_;
  DaemonOptions options_;
  std::string socket_;
  std::string state_dir_;
  std::string config_path_;
  std::string log_path_;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

// What /proc tells of process `pid`: its open fds, and the number of a "Key:   value" line of
// /proc/<pid>/<file> (VmRSS of status in kB, write_bytes of io), nullopt when there is none.
[[nodiscard]] size_t open_fds(pid_t pid);
[[nodiscard]] std::optional<uint64_t> proc_field(pid_t pid, const std::string& file,
                                                 const std::string& key);

// ---------------------------------------------------------------------------------------------
// Byte layouts of the default maps (what the kernel must hold after a push).

[[nodiscard]] Bytes u32le(uint32_t v);
[[nodiscard]] Bytes acl_key(uint32_t prefixlen, uint8_t a, uint8_t b, uint8_t c, uint8_t d);
[[nodiscard]] Bytes acl_value(uint32_t action, uint64_t hits = 0);
[[nodiscard]] Bytes ports_key(uint16_t port, uint8_t proto);
[[nodiscard]] Bytes ports_value(uint8_t verdict, uint64_t packets = 0);
[[nodiscard]] Bytes blob_value(uint8_t fill);
[[nodiscard]] std::string hex(const Bytes& b);

// ---------------------------------------------------------------------------------------------
// Requests

[[nodiscard]] v1::SlotRef index_slot(uint32_t index);
[[nodiscard]] v1::SlotRef fields_slot(const std::map<std::string, std::string>& fields);
// A typed entry: key and value fields as text.
[[nodiscard]] v1::Entry typed_entry(const std::map<std::string, std::string>& key,
                                    const std::map<std::string, std::string>& value);
[[nodiscard]] v1::Entry raw_entry(const Bytes& key, const Bytes& value);
// Adds a change replacing `map` slot `slot` with `entries` to `req`.
v1::SlotChange* add_change(v1::PushGenerationRequest& req, const std::string& map,
                           const v1::SlotRef& slot, const std::vector<v1::Entry>& entries);
v1::SlotChange* add_delete(v1::PushGenerationRequest& req, const std::string& map,
                           const v1::SlotRef& slot);
// `map` slot `slot` = {prefix -> action}, typed: {"10.0.0.0/8", 1} (any map whose key has a
// `prefix` field and whose value has an `action` field).
[[nodiscard]] v1::PushGenerationRequest rules_push(
    const std::string& map, const v1::SlotRef& slot,
    const std::vector<std::pair<std::string, uint32_t>>& rules, const std::string& label = "");
// acl slot `slot` = {prefix -> action}, typed: {"10.0.0.0/8", 1}.
[[nodiscard]] v1::PushGenerationRequest acl_push(
    uint32_t slot, const std::vector<std::pair<std::string, uint32_t>>& rules,
    const std::string& label = "");

// Deadline for one call.
void set_deadline(grpc::ClientContext& ctx,
                  std::chrono::milliseconds timeout = std::chrono::seconds(30));

// "CODE: message".
[[nodiscard]] std::string describe(const grpc::Status& s);
[[nodiscard]] const char* code_name(grpc::StatusCode code);
// Success when `s` has `code` and its message contains every word (case-insensitive).
[[nodiscard]] ::testing::AssertionResult has_error(const grpc::Status& s, grpc::StatusCode code,
                                                   const std::vector<std::string>& words);
// Success when `text` contains every word (case-insensitive).
[[nodiscard]] ::testing::AssertionResult contains_all(const std::string& text,
                                                      const std::vector<std::string>& words);

// Parses JSON text (policyctl --json) into a Struct; nullopt when it is not a JSON object.
[[nodiscard]] std::optional<google::protobuf::Struct> parse_json(const std::string& text);

// ---------------------------------------------------------------------------------------------
// The kernel's view, through the pins (independent of the daemon).

struct KernelSlot {
  uint32_t map_id = 0;
  kernel::MapInfo info;
  std::map<Bytes, Bytes> entries;  // key -> value (per-CPU maps: every CPU's value, packed)
};

// The inner map in `slot` (raw slot key) of the outer map pinned at `outer_pin`, with its
// entries; nullopt when the slot is empty. Errors: the pin or a syscall failed.
[[nodiscard]] Result<std::optional<KernelSlot>> read_kernel_slot(const std::string& outer_pin,
                                                                 const Bytes& slot);
// map -> slot key -> inner map id, for every live slot of every pinned outer map in `names`.
using KernelSnapshot = std::map<std::string, std::map<Bytes, uint32_t>>;
[[nodiscard]] Result<KernelSnapshot> kernel_snapshot(const std::string& pin_dir,
                                                     const std::vector<std::string>& names);

// ---------------------------------------------------------------------------------------------
// A WatchEvents stream read on its own thread.

class EventWatch {
 public:
  explicit EventWatch(std::unique_ptr<v1::Policy::Stub> stub);
  ~EventWatch();  // cancels the stream
  EventWatch(const EventWatch&) = delete;
  EventWatch& operator=(const EventWatch&) = delete;

  using Predicate = std::function<bool(const std::vector<v1::Event>&)>;
  // Waits until `pred(events so far)` holds; false on timeout or when the stream ended first.
  bool wait_for(const Predicate& pred, std::chrono::milliseconds timeout);
  [[nodiscard]] std::vector<v1::Event> events();
  void clear();
  // The stream's status once it ended (nullopt while open).
  [[nodiscard]] std::optional<grpc::Status> finished();

 private:
  std::unique_ptr<v1::Policy::Stub> stub_;
  grpc::ClientContext ctx_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<v1::Event> events_;
  std::optional<grpc::Status> status_;
  std::thread reader_;
};

// Committed events among `events`, and the generations they list, in stream order.
[[nodiscard]] std::vector<v1::Committed> committed_events(const std::vector<v1::Event>& events);
[[nodiscard]] std::vector<v1::Drained> drained_events(const std::vector<v1::Event>& events);
[[nodiscard]] bool saw_generation(const std::vector<v1::Event>& events, uint64_t generation);

// ---------------------------------------------------------------------------------------------
// The gtest fixture.

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // Overridden by fixtures that need another configuration.
  [[nodiscard]] virtual DaemonOptions daemon_options() const { return {}; }

  DaemonProcess& daemon() { return *daemon_; }
  v1::Policy::Stub& stub() { return *stub_; }
  [[nodiscard]] const std::string& socket_path() const { return daemon_->socket_path(); }
  [[nodiscard]] const std::string& pin_dir() const { return daemon_->pin_dir(); }
  [[nodiscard]] const std::string& work_dir() const { return work_dir_; }
  [[nodiscard]] std::string pin(const std::string& map) const { return pin_dir() + "/" + map; }

  // Starts the daemon again after a stop (same dirs, same config); fails the test on error.
  void restart_daemon();
  // Stops the daemon and expects exit code 0 (TearDown then has nothing left to stop).
  void stop_daemon_expect_clean();

  // `policyctl --socket <socket> args...`
  [[nodiscard]] CmdResult ctl(const std::vector<std::string>& args, const RunOptions& o = {});
  // Writes <work_dir>/<name> and returns its path.
  std::string write_file(const std::string& name, const std::string& text);

  // Calls; a failing call fails the test (EXPECT) and returns a default message.
  [[nodiscard]] v1::GetStateResponse get_state();
  [[nodiscard]] v1::ListGenerationsResponse list_generations();
  [[nodiscard]] grpc::Status push(const v1::PushGenerationRequest& req,
                                  v1::PushGenerationResponse* resp = nullptr);
  // Pushes and expects OK; returns the generation id (0 on failure).
  uint64_t push_ok(const v1::PushGenerationRequest& req);
  // Drained and live values of `field`, summed over every slot of `map` (GetCounters).
  struct CounterSum {
    uint64_t drained = 0;
    uint64_t live = 0;
    [[nodiscard]] uint64_t total() const { return drained + live; }
  };
  [[nodiscard]] CounterSum counter_sum(const std::string& map, const std::string& field);

  // Kernel view of one slot of a default map; fails the test on a syscall error.
  [[nodiscard]] std::optional<KernelSlot> kernel_slot(const std::string& map, const Bytes& slot);
  [[nodiscard]] std::optional<KernelSlot> kernel_slot(const std::string& map, uint32_t index) {
    return kernel_slot(map, u32le(index));
  }
  [[nodiscard]] KernelSnapshot snapshot();
  // A WatchEvents stream that is known to be registered: pushes probe generations (acl slot
  // `probe_slot`, empty) until the stream reports one. Fails the test if it never does.
  std::unique_ptr<EventWatch> synced_watch(uint32_t probe_slot = kAclSlots - 2);
  // The names of the configured outer maps (from GetState at start).
  [[nodiscard]] const std::vector<std::string>& map_names() const { return map_names_; }

 private:
  std::optional<test::PrivateBpffs> bpffs_;
  std::string work_dir_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<v1::Policy::Stub> stub_;
  std::vector<std::string> map_names_;
};

}  // namespace policyd::e2e
