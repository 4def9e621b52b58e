// DaemonProcess (spawn, readiness, SIGTERM/SIGKILL), run_command (fork/exec with pipes), the
// kernel's view through the pins, and the DaemonTest fixture. See daemon_fixture.h.
#include "daemon_fixture.h"
#include "schema/status_name.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#ifndef POLICYD_BIN
#error "POLICYD_BIN must name the policyd binary (set by tests/e2e/CMakeLists.txt)"
#endif
#ifndef POLICYCTL_BIN
#error "POLICYCTL_BIN must name the policyctl binary (set by tests/e2e/CMakeLists.txt)"
#endif

namespace policyd::e2e {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string policyd_bin() { return POLICYD_BIN; }
std::string policyctl_bin() { return POLICYCTL_BIN; }

std::pair<std::string, std::string> open_files_limit(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/limits");
  const std::string key = "Max open files";
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) != 0) continue;
    std::istringstream fields(line.substr(key.size()));
    std::string soft, hard;
    fields >> soft >> hard;
    return {soft, hard};
  }
  return {};
}

std::string extra_map_yaml() {
  return R"(  - name: extra
    type: array_of_maps
    slots: 2
    drain: none
    inner:
      type: hash
      max_entries: 8
      key:   [{name: k, type: u32}]
      value: [{name: v, type: u32}]
)";
}

std::string default_maps_yaml() {
  return R"(maps:
  - name: acl
    type: array_of_maps
    slots: 64
    drain: entries
    inner:
      type: lpm_trie
      max_entries: 256
      key:   [{name: prefix, type: ipv4_prefix}]
      value:
        - {name: action, type: u32}
        - {name: pad, type: "pad[4]"}
        - {name: hits, type: u64, counter: true}
  - name: ports
    type: hash_of_maps
    slots: 16
    slot_key: [{name: ifindex, type: u32}]
    drain: entries
    inner:
      type: hash
      max_entries: 1024
      key:   [{name: port, type: be16}, {name: proto, type: u8}, {name: pad, type: "pad[1]"}]
      value:
        - {name: verdict, type: u8}
        - {name: pad, type: "pad[3]"}
        - {name: packets, type: u64, counter: true}
  - name: blob
    type: array_of_maps
    slots: 4
    drain: none
    inner:
      type: hash
      max_entries: 4096
      key:   [{name: id, type: u32}]
      value: [{name: data, type: "bytes[512]"}]
)";
}

namespace {

std::string id_list(const std::vector<uint32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
  return out + "]";
}

std::string tail(const std::string& text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  return "[... " + std::to_string(text.size() - max_bytes) + " bytes cut ...]\n" +
         text.substr(text.size() - max_bytes);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int decode_wait_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::vector<char*> c_argv(std::vector<std::string>& args) {
  std::vector<char*> out;
  out.reserve(args.size() + 1);
  for (std::string& a : args) out.push_back(a.data());
  out.push_back(nullptr);
  return out;
}

// True when a stream connect() to the unix socket at `path` succeeds right now.
bool socket_accepts(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

// The test's environment with `changes` applied ("NAME=value" sets, "NAME" removes).
std::vector<std::string> child_environment(const std::vector<std::string>& changes) {
  auto name_of = [](const std::string& entry) { return entry.substr(0, entry.find('=')); };
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e;
    const bool changed = std::any_of(changes.begin(), changes.end(), [&](const std::string& c) {
      return name_of(c) == name_of(entry);
    });
    if (!changed) env.push_back(entry);
  }
  for (const std::string& c : changes) {
    if (c.find('=') != std::string::npos) env.push_back(c);
  }
  return env;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

}  // namespace

std::string maps_section(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const size_t at = text.find("\nmaps:");
  return at == std::string::npos ? std::string() : text.substr(at + 1);
}

std::string config_yaml(const DaemonOptions& o, const std::string& socket,
                        const std::string& pin_dir, const std::string& state_dir) {
  std::ostringstream y;
  y << "# written by the e2e fixture\n"
    << "api:\n"
    << "  socket: " << socket << "\n"
    << "  socket_mode: \"" << o.socket_mode << "\"\n"
    << "  allow:\n"
    << "    write: {uids: " << id_list(o.write_uids) << ", gids: " << id_list(o.write_gids) << "}\n"
    << "    read: {uids: " << id_list(o.read_uids) << ", gids: " << id_list(o.read_gids) << "}\n"
    << o.api_extra_yaml << (o.tls_yaml.empty() ? "" : "  tls: " + o.tls_yaml + "\n")
    << "pin_dir: " << pin_dir << "\n"
    << "state_dir: " << state_dir << "\n"
    << "barrier: " << o.barrier << "\n"
    << "history: " << o.history << "\n"
    << "limits: {max_message_bytes: " << o.max_message_bytes
    << ", max_entries_per_push: " << o.max_entries_per_push << "}\n"
    << "log_level: " << o.log_level << "\n"
    << (o.metrics_yaml.empty() ? "" : "metrics: " + o.metrics_yaml + "\n") << o.maps_yaml;
  return y.str();
}

// ---------------------------------------------------------------------------------------------
// run_command

CmdResult run_command(const std::vector<std::string>& argv_in, const RunOptions& options) {
  CmdResult res;
  std::vector<std::string> args = argv_in;
  std::vector<char*> argv = c_argv(args);
  int out_pipe[2], err_pipe[2], in_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return res;
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    return res;
  }
  if (::pipe2(in_pipe, O_CLOEXEC) != 0) {
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) ::close(fd);
    return res;
  }
  const uid_t uid = options.uid.value_or(0);
  const gid_t gid = options.gid.value_or(options.uid.value_or(0));
  const bool drop = options.uid.has_value() || options.gid.has_value();

  const pid_t pid = ::fork();
  if (pid < 0) {
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1], in_pipe[0], in_pipe[1]})
      ::close(fd);
    res.err = std::string("fork: ") + std::strerror(errno);
    return res;
  }
  if (pid == 0) {
    // Child: async-signal-safe calls only until exec (the parent runs gRPC threads).
    ::dup2(in_pipe[0], 0);
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (drop) {
      if (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0) {
        static const char kMsg[] = "run_command: dropping privileges failed\n";
        (void)!::write(2, kMsg, sizeof(kMsg) - 1);
        ::_exit(126);
      }
    }
    ::execv(argv[0], argv.data());
    static const char kMsg[] = "run_command: execv failed\n";
    (void)!::write(2, kMsg, sizeof(kMsg) - 1);
    ::_exit(127);
  }
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  ::close(in_pipe[0]);
  if (!options.stdin_data.empty()) {
    (void)!::write(in_pipe[1], options.stdin_data.data(), options.stdin_data.size());
  }
  ::close(in_pipe[1]);

  const auto deadline = Clock::now() + options.timeout;
  bool killed = false;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&res.out, &res.err};
  int open_fds = 2;
  char buf[65536];
  while (open_fds > 0) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      ::kill(pid, SIGKILL);
      killed = true;
      break;
    }
    const int n = ::poll(fds, 2, static_cast<int>(std::min<long>(left, 1000)));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t got = ::read(fds[i].fd, buf, sizeof(buf));
      if (got > 0) {
        sinks[i]->append(buf, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& p : fds) {
    if (p.fd >= 0) ::close(p.fd);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  res.exit_code = decode_wait_status(status);
  if (killed) res.err += "\n[run_command: timed out, killed]";
  return res;
}

CmdResult run_policyctl(const std::string& socket, const std::vector<std::string>& args,
                        const RunOptions& options) {
  std::vector<std::string> argv = {policyctl_bin(), "--socket", socket};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv, options);
}

// ---------------------------------------------------------------------------------------------
// DaemonProcess

DaemonProcess::DaemonProcess(std::string work_dir, std::string pin_dir, DaemonOptions options)
    : work_dir_(std::move(work_dir)),
      pin_dir_(std::move(pin_dir)),
      options_(std::move(options)),
      socket_(work_dir_ + "/run/policyd.sock"),
      state_dir_(work_dir_ + "/state"),
      config_path_(work_dir_ + "/policyd.yaml"),
      log_path_(work_dir_ + "/policyd.log") {}

DaemonProcess::~DaemonProcess() {
  if (running()) stop();
}

Status DaemonProcess::write_config() {
  std::error_code ec;
  fs::create_directories(work_dir_ + "/run", ec);
  if (ec) return sys_error(ec.value(), "mkdir " + work_dir_ + "/run");
  fs::create_directories(state_dir_, ec);
  if (ec) return sys_error(ec.value(), "mkdir " + state_dir_);
  // policyd refuses a group- or world-writable state_dir: do not depend on the umask.
  if (::chmod(state_dir_.c_str(), 0700) != 0) return sys_error(errno, "chmod " + state_dir_);
  const mode_t dir_mode = options_.world_traversable ? 0755 : 0700;
  if (::chmod(work_dir_.c_str(), dir_mode) != 0) return sys_error(errno, "chmod " + work_dir_);
  const std::string run_dir = work_dir_ + "/run";
  if (::chmod(run_dir.c_str(), dir_mode) != 0) return sys_error(errno, "chmod " + run_dir);
  std::ofstream out(config_path_, std::ios::trunc);
  out << config_yaml(options_, socket_, pin_dir_, state_dir_);
  out.close();
  if (!out) return sys_error(EIO, "write " + config_path_);
  return {};
}

Status DaemonProcess::rewrite_config(DaemonOptions options) {
  options_ = std::move(options);
  return write_config();
}

std::string DaemonProcess::log() const { return read_file(log_path_); }

Status DaemonProcess::start(std::chrono::milliseconds ready_timeout) {
  if (pid_ > 0 && !exit_code_) return Error{ErrorCode::kFailedPrecondition, 0, "already running"};
  if (!fs::exists(config_path_)) POLICYD_TRY(write_config());
  const int log_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return sys_error(errno, "open " + log_path_);
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  std::vector<std::string> args = {policyd_bin(), "--config", config_path_};
  std::vector<char*> argv = c_argv(args);
  std::vector<std::string> env = child_environment(options_.env);
  std::vector<char*> envp = c_argv(env);
  std::optional<rlimit> nofile;
  if (options_.nofile) nofile = rlimit{options_.nofile->first, options_.nofile->second};
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(log_fd);
    if (null_fd >= 0) ::close(null_fd);
    return sys_error(err, "fork");
  }
  if (pid == 0) {
    if (null_fd >= 0) ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    // The daemon must not outlive a crashed test run.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(125);
    if (nofile && ::setrlimit(RLIMIT_NOFILE, &*nofile) != 0) {
      static const char kLimitMsg[] = "e2e fixture: setrlimit(RLIMIT_NOFILE) failed\n";
      (void)!::write(2, kLimitMsg, sizeof(kLimitMsg) - 1);
      ::_exit(126);
    }
    ::execve(argv[0], argv.data(), envp.data());
    static const char kMsg[] = "e2e fixture: execv policyd failed\n";
    (void)!::write(2, kMsg, sizeof(kMsg) - 1);
    ::_exit(127);
  }
  ::close(log_fd);
  if (null_fd >= 0) ::close(null_fd);
  pid_ = pid;
  exit_code_.reset();

  const auto deadline = Clock::now() + ready_timeout;
  std::string last;
  while (Clock::now() < deadline) {
    if (!running()) {
      return Error{ErrorCode::kUnavailable, 0,
                   "policyd exited with code " + std::to_string(exit_code_.value_or(-1)) +
                       " before it was ready; log:\n" + tail(log(), 16384)};
    }
    if (socket_accepts(socket_)) {
      // A fresh channel per attempt: a channel that failed once backs off for up to seconds.
      auto stub = new_stub();
      grpc::ClientContext ctx;
      set_deadline(ctx, std::chrono::milliseconds(1000));
      v1::GetStateRequest req;
      v1::GetStateResponse resp;
      grpc::Status s = stub->GetState(&ctx, req, &resp);
      if (s.ok()) return {};
      last = describe(s);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const std::string why = last.empty() ? "the socket " + socket_ + " never accepted a connection"
                                       : "GetState kept failing: " + last;
  return Error{ErrorCode::kUnavailable, 0,
               "policyd not ready after " + std::to_string(ready_timeout.count()) + " ms: " + why +
                   "; log:\n" + tail(log(), 16384)};
}

bool DaemonProcess::running() {
  if (pid_ <= 0 || exit_code_) return false;
  int status = 0;
  const pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_code_ = decode_wait_status(status);
    return false;
  }
  return r == 0;
}

void DaemonProcess::signal(int sig) const {
  if (pid_ > 0 && !exit_code_) ::kill(pid_, sig);
}

int DaemonProcess::stop(std::chrono::milliseconds grace) {
  if (pid_ <= 0) return -1;
  if (!running()) return exit_code_.value_or(-1);
  ::kill(pid_, SIGTERM);
  const auto deadline = Clock::now() + grace;
  while (Clock::now() < deadline) {
    if (!running()) return exit_code_.value_or(-1);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::fprintf(stderr, "e2e fixture: policyd (pid %d) ignored SIGTERM for %lld ms; SIGKILL\n",
               static_cast<int>(pid_), static_cast<long long>(grace.count()));
  ::kill(pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  exit_code_ = decode_wait_status(status);
  return *exit_code_;
}

std::shared_ptr<grpc::Channel> DaemonProcess::new_channel() const {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // Each test channel is its own connection (no subchannel sharing between channels).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // Retry a refused connect quickly (the daemon may be starting), but give an accepted
  // connection time to finish its handshake: gRPC takes the minimum connect timeout from
  // MIN_RECONNECT_BACKOFF, and 100 ms was too short for eight simultaneous connects to a
  // daemon under TCG (6.1 guest in CI).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 5000);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  return grpc::CreateCustomChannel("unix:" + socket_, grpc::InsecureChannelCredentials(), args);
}

std::unique_ptr<v1::Policy::Stub> DaemonProcess::new_stub() const {
  return v1::Policy::NewStub(new_channel());
}

// ---------------------------------------------------------------------------------------------
// Bytes

size_t open_fds(pid_t pid) {
  std::error_code ec;
  size_t n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return n;
}

std::optional<uint64_t> proc_field(pid_t pid, const std::string& file, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/" + file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      return std::strtoull(line.c_str() + key.size() + 1, nullptr, 10);
    }
  }
  return std::nullopt;
}

Bytes u32le(uint32_t v) {
  Bytes b(4);
  std::memcpy(b.data(), &v, 4);
  return b;
}

Bytes acl_key(uint32_t prefixlen, uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  Bytes k(kAclKeySize);
  std::memcpy(k.data(), &prefixlen, 4);
  k[4] = a;
  k[5] = b;
  k[6] = c;
  k[7] = d;
  return k;
}

Bytes acl_value(uint32_t action, uint64_t hits) {
  Bytes v(kAclValueSize, 0);
  std::memcpy(v.data(), &action, 4);
  std::memcpy(v.data() + 8, &hits, 8);
  return v;
}

Bytes ports_key(uint16_t port, uint8_t proto) {
  return Bytes{static_cast<uint8_t>(port >> 8), static_cast<uint8_t>(port & 0xff), proto, 0};
}

Bytes ports_value(uint8_t verdict, uint64_t packets) {
  Bytes v(kPortsValueSize, 0);
  v[0] = verdict;
  std::memcpy(v.data() + 4, &packets, 8);
  return v;
}

Bytes blob_value(uint8_t fill) { return Bytes(kBlobValueSize, fill); }

std::string hex(const Bytes& b) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(b.size() * 2);
  for (uint8_t c : b) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Requests and statuses

v1::SlotRef index_slot(uint32_t index) {
  v1::SlotRef s;
  s.set_index(index);
  return s;
}

v1::SlotRef fields_slot(const std::map<std::string, std::string>& fields) {
  v1::SlotRef s;
  for (const auto& [k, v] : fields) (*s.mutable_fields()->mutable_values())[k] = v;
  return s;
}

v1::Entry typed_entry(const std::map<std::string, std::string>& key,
                      const std::map<std::string, std::string>& value) {
  v1::Entry e;
  for (const auto& [k, v] : key) (*e.mutable_key_fields()->mutable_values())[k] = v;
  for (const auto& [k, v] : value) (*e.mutable_value_fields()->mutable_values())[k] = v;
  return e;
}

v1::Entry raw_entry(const Bytes& key, const Bytes& value) {
  v1::Entry e;
  e.set_key(std::string(key.begin(), key.end()));
  e.set_value(std::string(value.begin(), value.end()));
  return e;
}

v1::SlotChange* add_change(v1::PushGenerationRequest& req, const std::string& map,
                           const v1::SlotRef& slot, const std::vector<v1::Entry>& entries) {
  v1::SlotChange* c = req.add_changes();
  c->set_map(map);
  *c->mutable_slot() = slot;
  for (const v1::Entry& e : entries) *c->add_entries() = e;
  return c;
}

v1::SlotChange* add_delete(v1::PushGenerationRequest& req, const std::string& map,
                           const v1::SlotRef& slot) {
  v1::SlotChange* c = req.add_changes();
  c->set_map(map);
  *c->mutable_slot() = slot;
  c->set_delete_(true);
  return c;
}

v1::PushGenerationRequest rules_push(const std::string& map, const v1::SlotRef& slot,
                                     const std::vector<std::pair<std::string, uint32_t>>& rules,
                                     const std::string& label) {
  v1::PushGenerationRequest req;
  req.set_label(label);
  std::vector<v1::Entry> entries;
  for (const auto& [prefix, action] : rules) {
    entries.push_back(typed_entry({{"prefix", prefix}}, {{"action", std::to_string(action)}}));
  }
  add_change(req, map, slot, entries);
  return req;
}

v1::PushGenerationRequest acl_push(uint32_t slot,
                                   const std::vector<std::pair<std::string, uint32_t>>& rules,
                                   const std::string& label) {
  return rules_push("acl", index_slot(slot), rules, label);
}

void set_deadline(grpc::ClientContext& ctx, std::chrono::milliseconds timeout) {
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
}

const char* code_name(grpc::StatusCode code) { return schema::status_code_name(code); }

std::string describe(const grpc::Status& s) {
  return std::string(code_name(s.error_code())) + ": " + s.error_message();
}

::testing::AssertionResult contains_all(const std::string& text,
                                        const std::vector<std::string>& words) {
  const std::string hay = lower(text);
  for (const std::string& w : words) {
    if (hay.find(lower(w)) == std::string::npos) {
      return ::testing::AssertionFailure() << "\"" << w << "\" not found in: " << text;
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult has_error(const grpc::Status& s, grpc::StatusCode code,
                                     const std::vector<std::string>& words) {
  if (s.error_code() != code) {
    return ::testing::AssertionFailure()
           << "expected " << code_name(code) << ", got " << describe(s);
  }
  auto r = contains_all(s.error_message(), words);
  if (!r)
    return ::testing::AssertionFailure() << code_name(code) << " as expected, but " << r.message();
  return ::testing::AssertionSuccess();
}

std::optional<google::protobuf::Struct> parse_json(const std::string& text) {
  google::protobuf::Struct out;
  auto st = google::protobuf::util::JsonStringToMessage(text, &out);
  if (!st.ok()) return std::nullopt;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Kernel view

Result<std::optional<KernelSlot>> read_kernel_slot(const std::string& outer_pin,
                                                   const Bytes& slot) {
  POLICYD_ASSIGN_OR_RETURN(kernel::UniqueFd outer, kernel::open_pinned(outer_pin));
  POLICYD_ASSIGN_OR_RETURN(kernel::MapInfo outer_info, kernel::map_info(outer.get()));
  if (slot.size() != outer_info.key_size) {
    return invalid_argument("slot key of " + std::to_string(slot.size()) + " bytes for " +
                            outer_pin + " (key size " + std::to_string(outer_info.key_size) + ")");
  }
  uint32_t id = 0;
  POLICYD_ASSIGN_OR_RETURN(bool found, kernel::lookup_elem(outer.get(), slot.data(), &id));
  if (!found) return std::optional<KernelSlot>{};
  KernelSlot ks;
  ks.map_id = id;
  POLICYD_ASSIGN_OR_RETURN(kernel::UniqueFd inner, kernel::map_fd_by_id(id));
  POLICYD_ASSIGN_OR_RETURN(ks.info, kernel::map_info(inner.get()));
  const size_t key_size = ks.info.key_size;
  const size_t value_size = kernel::syscall_value_size(ks.info.type, ks.info.value_size);
  POLICYD_TRY(kernel::dump(inner.get(), ks.info, [&](const uint8_t* k, const uint8_t* v) {
    ks.entries.emplace(Bytes(k, k + key_size), Bytes(v, v + value_size));
  }));
  return std::optional<KernelSlot>(std::move(ks));
}

Result<KernelSnapshot> kernel_snapshot(const std::string& pin_dir,
                                       const std::vector<std::string>& names) {
  KernelSnapshot snap;
  for (const std::string& name : names) {
    const std::string path = pin_dir + "/" + name;
    POLICYD_ASSIGN_OR_RETURN(kernel::UniqueFd outer, kernel::open_pinned(path));
    POLICYD_ASSIGN_OR_RETURN(kernel::MapInfo info, kernel::map_info(outer.get()));
    auto& slots = snap[name];
    if (info.type == BPF_MAP_TYPE_ARRAY_OF_MAPS) {
      for (uint32_t i = 0; i < info.max_entries; ++i) {
        uint32_t id = 0;
        POLICYD_ASSIGN_OR_RETURN(bool found, kernel::lookup_elem(outer.get(), &i, &id));
        if (found) slots[u32le(i)] = id;
      }
      continue;
    }
    Bytes key(info.key_size), next(info.key_size);
    const void* prev = nullptr;
    while (::bpf_map_get_next_key(outer.get(), prev, next.data()) == 0) {
      uint32_t id = 0;
      POLICYD_ASSIGN_OR_RETURN(bool found, kernel::lookup_elem(outer.get(), next.data(), &id));
      if (found) slots[next] = id;
      key = next;
      prev = key.data();
    }
    if (errno != ENOENT) return sys_error(errno, "get_next_key " + path);
  }
  return snap;
}

// ---------------------------------------------------------------------------------------------
// EventWatch

EventWatch::EventWatch(std::unique_ptr<v1::Policy::Stub> stub) : stub_(std::move(stub)) {
  reader_ = std::thread([this] {
    auto reader = stub_->WatchEvents(&ctx_, v1::WatchEventsRequest());
    v1::Event ev;
    while (reader->Read(&ev)) {
      std::lock_guard lock(mu_);
      events_.push_back(ev);
      cv_.notify_all();
    }
    grpc::Status s = reader->Finish();
    std::lock_guard lock(mu_);
    status_ = s;
    cv_.notify_all();
  });
}

EventWatch::~EventWatch() {
  ctx_.TryCancel();
  if (reader_.joinable()) reader_.join();
}

bool EventWatch::wait_for(const Predicate& pred, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return pred(events_) || status_.has_value(); }) &&
         pred(events_);
}

std::vector<v1::Event> EventWatch::events() {
  std::lock_guard lock(mu_);
  return events_;
}

void EventWatch::clear() {
  std::lock_guard lock(mu_);
  events_.clear();
}

std::optional<grpc::Status> EventWatch::finished() {
  std::lock_guard lock(mu_);
  return status_;
}

std::vector<v1::Committed> committed_events(const std::vector<v1::Event>& events) {
  std::vector<v1::Committed> out;
  for (const v1::Event& e : events) {
    if (e.kind_case() == v1::Event::kCommitted) out.push_back(e.committed());
  }
  return out;
}

std::vector<v1::Drained> drained_events(const std::vector<v1::Event>& events) {
  std::vector<v1::Drained> out;
  for (const v1::Event& e : events) {
    if (e.kind_case() == v1::Event::kDrained) out.push_back(e.drained());
  }
  return out;
}

bool saw_generation(const std::vector<v1::Event>& events, uint64_t generation) {
  for (const v1::Committed& c : committed_events(events)) {
    for (uint64_t g : c.generations()) {
      if (g == generation) return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// DaemonTest

void DaemonTest::SetUp() {
  POLICYD_REQUIRE_BPF();
  auto bpffs = test::PrivateBpffs::create();
  ASSERT_TRUE(bpffs.ok()) << bpffs.error().message();
  bpffs_.emplace(std::move(bpffs).value());

  std::string tmpl = (fs::temp_directory_path() / "policyd-e2e-XXXXXX").string();
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  ASSERT_NE(::mkdtemp(buf.data()), nullptr) << "mkdtemp: " << std::strerror(errno);
  work_dir_ = buf.data();

  daemon_ = std::make_unique<DaemonProcess>(work_dir_, bpffs_->join("pd"), daemon_options());
  Status st = daemon_->start();
  ASSERT_TRUE(st.ok()) << st.error().message();
  stub_ = daemon_->new_stub();
  v1::GetStateResponse state = get_state();
  for (const v1::MapState& m : state.maps()) map_names_.push_back(m.name());
  ASSERT_FALSE(map_names_.empty()) << "GetState lists no maps";
}

void DaemonTest::TearDown() {
  // Close the test's own connection first: an idle client must not hold up the shutdown.
  stub_.reset();
  if (daemon_ && daemon_->pid() > 0) {
    const bool was_running = daemon_->running();
    const int code = daemon_->stop();
    if (was_running) {
      EXPECT_EQ(code, 0) << "policyd did not exit 0 on SIGTERM (128+N: killed by signal N)";
    } else if (!daemon_->exit_code() || *daemon_->exit_code() != 0) {
      ADD_FAILURE() << "policyd died during the test, exit code " << code;
    }
  }
  if (daemon_ && HasFailure()) {
    std::fprintf(stderr, "===== policyd log (%s) =====\n%s===== end of policyd log =====\n",
                 daemon_->log_path().c_str(), tail(daemon_->log(), 65536).c_str());
  }
  stub_.reset();
  daemon_.reset();
  if (!work_dir_.empty()) {
    std::error_code ec;
    fs::remove_all(work_dir_, ec);
  }
  bpffs_.reset();
}

void DaemonTest::restart_daemon() {
  Status st = daemon_->start();
  ASSERT_TRUE(st.ok()) << st.error().message();
  stub_ = daemon_->new_stub();
}

void DaemonTest::stop_daemon_expect_clean() {
  ASSERT_TRUE(daemon_->running()) << "policyd is not running";
  const int code = daemon_->stop();
  EXPECT_EQ(code, 0) << "policyd did not exit 0 on SIGTERM";
}

CmdResult DaemonTest::ctl(const std::vector<std::string>& args, const RunOptions& o) {
  return run_policyctl(socket_path(), args, o);
}

std::string DaemonTest::write_file(const std::string& name, const std::string& text) {
  const std::string path = work_dir_ + "/" + name;
  std::ofstream out(path, std::ios::trunc);
  out << text;
  return path;
}

v1::GetStateResponse DaemonTest::get_state() {
  grpc::ClientContext ctx;
  set_deadline(ctx);
  v1::GetStateResponse resp;
  grpc::Status s = stub_->GetState(&ctx, v1::GetStateRequest(), &resp);
  EXPECT_TRUE(s.ok()) << "GetState: " << describe(s);
  return resp;
}

v1::ListGenerationsResponse DaemonTest::list_generations() {
  grpc::ClientContext ctx;
  set_deadline(ctx);
  v1::ListGenerationsResponse resp;
  grpc::Status s = stub_->ListGenerations(&ctx, v1::ListGenerationsRequest(), &resp);
  EXPECT_TRUE(s.ok()) << "ListGenerations: " << describe(s);
  return resp;
}

grpc::Status DaemonTest::push(const v1::PushGenerationRequest& req,
                              v1::PushGenerationResponse* resp) {
  grpc::ClientContext ctx;
  set_deadline(ctx);
  v1::PushGenerationResponse local;
  return stub_->PushGeneration(&ctx, req, resp ? resp : &local);
}

uint64_t DaemonTest::push_ok(const v1::PushGenerationRequest& req) {
  v1::PushGenerationResponse resp;
  grpc::Status s = push(req, &resp);
  EXPECT_TRUE(s.ok()) << "PushGeneration: " << describe(s);
  return s.ok() ? resp.generation() : 0;
}

DaemonTest::CounterSum DaemonTest::counter_sum(const std::string& map, const std::string& field) {
  grpc::ClientContext ctx;
  set_deadline(ctx);
  v1::GetCountersRequest req;
  req.set_map(map);
  v1::GetCountersResponse resp;
  grpc::Status s = stub().GetCounters(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << "GetCounters: " << describe(s);
  CounterSum sum;
  for (const v1::CounterValue& c : resp.counters()) {
    if (c.field() != field) continue;
    sum.drained += c.drained();
    sum.live += c.live();
  }
  return sum;
}

std::optional<KernelSlot> DaemonTest::kernel_slot(const std::string& map, const Bytes& slot) {
  auto r = read_kernel_slot(pin(map), slot);
  EXPECT_TRUE(r.ok()) << "kernel read of " << map << " slot " << hex(slot) << ": "
                      << r.error().message();
  if (!r.ok()) return std::nullopt;
  return std::move(r).value();
}

KernelSnapshot DaemonTest::snapshot() {
  auto r = kernel_snapshot(pin_dir(), map_names_);
  EXPECT_TRUE(r.ok()) << "kernel snapshot: " << r.error().message();
  return r.ok() ? std::move(r).value() : KernelSnapshot{};
}

std::unique_ptr<EventWatch> DaemonTest::synced_watch(uint32_t probe_slot) {
  auto watch = std::make_unique<EventWatch>(daemon_->new_stub());
  // The stream is live from the server's side only once its handler ran; a probe generation
  // that shows up in it proves that.
  for (int attempt = 0; attempt < 20; ++attempt) {
    v1::PushGenerationRequest probe;
    probe.set_label("watch-probe");
    add_change(probe, "acl", index_slot(probe_slot), {});
    const uint64_t g = push_ok(probe);
    if (g == 0) break;
    if (watch->wait_for([g](const auto& ev) { return saw_generation(ev, g); },
                        std::chrono::milliseconds(500))) {
      watch->clear();
      return watch;
    }
    if (auto st = watch->finished()) {
      ADD_FAILURE() << "WatchEvents ended: " << describe(*st);
      return watch;
    }
  }
  ADD_FAILURE() << "WatchEvents never reported a committed probe generation";
  return watch;
}

}  // namespace policyd::e2e
