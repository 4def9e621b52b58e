// Who is on the other end of each API connection, and what they may do.
// Unix-socket connections are accepted by policyd itself, which reads SO_PEERCRED (uid, gid)
// and SO_PEERGROUPS (supplementary groups) before handing the fd to gRPC; gRPC then names the
// connection "fd:<n>" in ServerContext::peer(). TLS connections are authenticated by their
// client certificate (mutual TLS) and get the access the config gives TLS clients.
// Thread-safe.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "api/auth.h"
#include "config/config.h"

namespace policyd::app {

struct PeerIdentity {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups
};

// Reads the credentials of a connected unix socket.
[[nodiscard]] Result<PeerIdentity> read_peer_identity(int fd);

// The access an identity gets from the allow-lists (root always gets write).
[[nodiscard]] api::Access access_for(const PeerIdentity& peer, const config::ApiConfig& api);

class PeerAuthorizer final : public api::Authorizer {
 public:
  explicit PeerAuthorizer(config::ApiConfig api) : api_(std::move(api)) {}

  // Called before a unix connection is handed to gRPC as fd `fd` (replaces an older holder of
  // the same fd number: descriptors are reused after gRPC closes them). Refuses it, with why,
  // when it would exceed api.max_connections or api.max_connections_per_uid; connections gRPC
  // has closed since (their fd gone, or now another file) are forgotten first.
  [[nodiscard]] Status register_connection(int fd, PeerIdentity peer);
  // Allow-lists change on reload; connections are re-judged on their next call (and keep the
  // ceiling of the server they were accepted on: a granted upgrade needs a new connection).
  void set_api_config(config::ApiConfig api);
  // The access `peer` gets from the allow-lists now (judged at accept: kNone is closed at once).
  [[nodiscard]] api::Access access_of(const PeerIdentity& peer) const;

  [[nodiscard]] api::Access access(const grpc::CallbackServerContext& ctx) const override;
  // "uid 1000 gid 1000 pid 4242" for unix peers, the TLS identity otherwise.
  [[nodiscard]] std::string describe(const grpc::CallbackServerContext& ctx) const override;
  // "uid 1000" for unix peers, the TLS identity otherwise.
  [[nodiscard]] std::string owner(const grpc::CallbackServerContext& ctx) const override;

 private:
  mutable std::mutex mu_;
  config::ApiConfig api_;
  struct Connection {
    PeerIdentity peer;
    dev_t dev = 0;
    ino_t ino = 0;  // the socket's inode: tells a reused fd number from the connection
  };
  void forget(std::map<int, Connection>::iterator it);
  void forget_closed();
  // Why one more connection of `uid` would exceed a limit; ok when it would not.
  [[nodiscard]] Status limit_reached(uid_t uid) const;

  std::map<int, Connection> peers_;  // by fd number
  std::map<uid_t, uint32_t> per_uid_;
};

// What a PeerAuthorizer says, but never more than `ceiling`. The daemon serves the unix
// connections of each access level on a gRPC server of its own whose authorizer is capped at
// that level, so the rights of a connection's calls are bounded by the credentials read when
// that very connection was accepted. A lookup by fd number can then be wrong only downwards:
// when gRPC has closed a connection and the kernel has given its fd number to another caller,
// a call still running from the closed one gets at most the lesser of the two.
class CappedAuthorizer final : public api::Authorizer {
 public:
  CappedAuthorizer(std::shared_ptr<const PeerAuthorizer> inner, api::Access ceiling)
      : inner_(std::move(inner)), ceiling_(ceiling) {}

  [[nodiscard]] api::Access access(const grpc::CallbackServerContext& ctx) const override {
    return api::lesser(ceiling_, inner_->access(ctx));
  }
  [[nodiscard]] std::string describe(const grpc::CallbackServerContext& ctx) const override {
    return inner_->describe(ctx);
  }
  [[nodiscard]] std::string owner(const grpc::CallbackServerContext& ctx) const override {
    return inner_->owner(ctx);
  }

 private:
  std::shared_ptr<const PeerAuthorizer> inner_;
  api::Access ceiling_;
};

}  // namespace policyd::app
