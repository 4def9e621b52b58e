// The API's unix socket, owned by policyd rather than gRPC so that every connection's
// credentials are read (SO_PEERCRED) before gRPC sees it. Accepts on the Asio event loop and
// hands each connection over as a plain fd. Not thread-safe: use it from the event loop.
#pragma once

#include <utility>  // before Boost.Asio with g++ 12 in C++20

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
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

  // Creates the parent directory if missing, refuses to take over a socket another process
  // still listens on, removes a stale one, binds, applies mode and group, listens.
  [[nodiscard]] static Result<std::unique_ptr<UnixListener>> open(boost::asio::io_context& io,
                                                                  const config::ApiConfig& api);
  ~UnixListener();
  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;

  void start(AcceptFn on_accept);
  // Stops accepting and removes the socket file.
  void close();

 private:
  UnixListener(boost::asio::io_context& io, int fd, std::string path);
  void wait_next();
  void accept_ready();

  boost::asio::posix::stream_descriptor listener_;
  std::string path_;
  AcceptFn on_accept_;
};

}  // namespace policyd::app
