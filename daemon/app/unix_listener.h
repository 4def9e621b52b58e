// The API's unix socket, owned by policyd rather than gRPC so that every connection's
// credentials are read (SO_PEERCRED) before gRPC sees it. Accepts on the Asio event loop and
// hands each connection over as a plain fd. Not thread-safe: use it from the event loop.
// Out of fds (EMFILE, ENFILE), it closes one waiting connection with a reserve fd, so the caller
// sees the refusal instead of hanging. After any failed accept it pauses for kAcceptBackoff and
// warns at most once per second, with the count since the last warning. It never spins.
#pragma once

#include <utility>  // before Boost.Asio with g++ 12 in C++20

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "app/peers.h"
#include "config/config.h"
#include "kernel/unique_fd.h"
#include "util/result.h"

namespace policyd::app {

class UnixListener {
 public:
  using AcceptFn = std::function<void(kernel::UniqueFd conn, PeerIdentity peer)>;
  // A connection refused for want of fds.
  using FdExhaustedFn = std::function<void()>;

  static constexpr std::chrono::milliseconds kAcceptBackoff{100};

  // Creates the parent directory if missing, refuses to take over a socket another process
  // still listens on, removes a stale one, binds, applies mode and group, listens.
  [[nodiscard]] static Result<std::unique_ptr<UnixListener>> open(boost::asio::io_context& io,
                                                                  const config::ApiConfig& api);
  ~UnixListener();
  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;

  void start(AcceptFn on_accept, FdExhaustedFn on_fd_exhausted = {});
  // Stops accepting and removes the socket file.
  void close();

 private:
  UnixListener(boost::asio::io_context& io, int fd, std::string path);
  void wait_next();
  // True when accepting may go on; false when it stopped for now (no more waiting, or backoff).
  bool accept_ready();
  // After a failed accept: closes one waiting connection when out of fds, warns (at most once
  // per second) and resumes after kAcceptBackoff.
  void pause_accepting(int err);

  boost::asio::posix::stream_descriptor listener_;
  boost::asio::steady_timer backoff_;
  kernel::UniqueFd reserve_;  // /dev/null, given up for a moment to close a waiting connection
  std::string path_;
  AcceptFn on_accept_;
  FdExhaustedFn on_fd_exhausted_;
  std::chrono::steady_clock::time_point last_warning_{};
  uint64_t failed_since_warning_ = 0;
};

}  // namespace policyd::app
