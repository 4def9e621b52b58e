// Unix socket set-up and the accept loop.
#include "app/unix_listener.h"

#include <fcntl.h>
#include <grp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/fs.h"

namespace policyd::app {
namespace {

Result<sockaddr_un> socket_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return invalid_argument("api.socket: path \"" + path + "\" is longer than " +
                            std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  return addr;
}

// The fd given up for a moment when out of fds (see pause_accepting).
kernel::UniqueFd open_reserve() {
  return kernel::UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
}

// True when a process accepts connections on the socket at `addr`.
bool someone_listens(const sockaddr_un& addr) {
  kernel::UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!probe.valid()) return false;
  return ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
}

}  // namespace

Result<std::unique_ptr<UnixListener>> UnixListener::open(boost::asio::io_context& io,
                                                         const config::ApiConfig& api) {
  POLICYD_TRY(util::make_parent_dirs(api.socket));
  POLICYD_ASSIGN_OR_RETURN(sockaddr_un addr, socket_address(api.socket));
  struct stat st {};
  if (::lstat(api.socket.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return failed_precondition("api.socket: " + api.socket + " exists and is not a socket");
    }
    if (someone_listens(addr)) {
      return failed_precondition("api.socket: another process listens on " + api.socket +
                                 " (is policyd already running?)");
    }
    ::unlink(api.socket.c_str());  // stale, from a daemon that did not exit cleanly
  }
  kernel::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return sys_error(errno, "create unix socket");
  // Bind with a restrictive umask so the socket is never briefly wider than configured.
  const mode_t old_mask = ::umask(0177);
  const int bound = ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  const int bind_errno = errno;
  ::umask(old_mask);
  if (bound != 0) return sys_error(bind_errno, "bind " + api.socket);
  if (!api.socket_group.empty()) {
    group* g = ::getgrnam(api.socket_group.c_str());
    if (!g) return invalid_argument("api.socket_group: no group \"" + api.socket_group + "\"");
    if (::chown(api.socket.c_str(), static_cast<uid_t>(-1), g->gr_gid) != 0) {
      return sys_error(errno, "chgrp " + api.socket + " to " + api.socket_group);
    }
  }
  if (::chmod(api.socket.c_str(), api.socket_mode) != 0) {
    return sys_error(errno, "chmod " + api.socket);
  }
  if (::listen(fd.get(), SOMAXCONN) != 0) return sys_error(errno, "listen on " + api.socket);
  return std::unique_ptr<UnixListener>(new UnixListener(io, fd.release(), api.socket));
}

UnixListener::UnixListener(boost::asio::io_context& io, int fd, std::string path)
    : listener_(io, fd), backoff_(io), reserve_(open_reserve()), path_(std::move(path)) {}

UnixListener::~UnixListener() { close(); }

void UnixListener::start(AcceptFn on_accept, FdExhaustedFn on_fd_exhausted) {
  on_accept_ = std::move(on_accept);
  on_fd_exhausted_ = std::move(on_fd_exhausted);
  wait_next();
}

void UnixListener::close() {
  if (!listener_.is_open()) return;
  boost::system::error_code ignored;
  backoff_.cancel();
  listener_.close(ignored);
  ::unlink(path_.c_str());
}

void UnixListener::wait_next() {
  listener_.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                       [this](const boost::system::error_code& ec) {
                         if (ec) return;  // closed
                         if (accept_ready()) wait_next();
                       });
}

bool UnixListener::accept_ready() {
  for (;;) {
    kernel::UniqueFd conn(
        ::accept4(listener_.native_handle(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!conn.valid()) {
      const int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) return true;
      // Out of fds, or anything else (ECONNABORTED, ENOBUFS...): pause rather than retry at once.
      pause_accepting(err);
      return false;
    }
    Result<PeerIdentity> peer = read_peer_identity(conn.get());
    if (!peer.ok()) {
      spdlog::warn("refused a connection on {}: {}", path_, peer.error().message());
      continue;
    }
    on_accept_(std::move(conn), std::move(peer).value());
  }
}

void UnixListener::pause_accepting(int err) {
  if (err == EMFILE || err == ENFILE) {
    // Give the reserve fd up for a moment to take one waiting connection off the queue and close
    // it: its caller gets an answer (EOF) rather than waiting on a full backlog.
    reserve_.reset();
    kernel::UniqueFd refused(::accept4(listener_.native_handle(), nullptr, nullptr, SOCK_CLOEXEC));
    reserve_ = open_reserve();
    if (refused.valid() && on_fd_exhausted_) on_fd_exhausted_();
  }
  ++failed_since_warning_;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_warning_ >= std::chrono::seconds(1)) {
    spdlog::warn(
        "accept on {}: {}; {} failed accept(s) since the last warning, pausing accepts for {} ms "
        "at a time{}",
        path_, std::strerror(err), failed_since_warning_, kAcceptBackoff.count(),
        err == EMFILE || err == ENFILE ? " (out of fds: raise LimitNOFILE=)" : "");
    last_warning_ = now;
    failed_since_warning_ = 0;
  }
  backoff_.expires_after(kAcceptBackoff);
  backoff_.async_wait([this](const boost::system::error_code& ec) {
    if (ec || !listener_.is_open()) return;  // cancelled: closed
    if (!reserve_.valid()) reserve_ = open_reserve();
    wait_next();
  });
}

}  // namespace policyd::app
