// Who is on the other end of each API connection, and what they may do.
// Unix-socket connections are accepted by policyd itself, which reads SO_PEERCRED (uid, gid)
// and SO_PEERGROUPS (supplementary groups) before handing the fd to gRPC; gRPC then names the
// connection "fd:<n>" in ServerContext::peer(). TLS connections are authenticated by their
// client certificate (mutual TLS) and get the access the config gives TLS clients.
// Thread-safe.
#pragma once

#include <sys/types.h>

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

  // Called when a unix connection is handed to gRPC as fd `fd` (replaces an older holder of
  // the same fd number: descriptors are reused after gRPC closes them).
  void register_connection(int fd, PeerIdentity peer);
  // Allow-lists change on reload; connections are re-judged on their next call.
  void set_api_config(config::ApiConfig api);

  [[nodiscard]] api::Access access(const grpc::CallbackServerContext& ctx) const override;
  // "uid 1000 gid 1000 pid 4242" for unix peers, the TLS identity otherwise.
  [[nodiscard]] std::string describe(const grpc::CallbackServerContext& ctx) const override;

 private:
  mutable std::mutex mu_;
  config::ApiConfig api_;
  std::map<int, PeerIdentity> peers_;  // by fd number
};

}  // namespace policyd::app
