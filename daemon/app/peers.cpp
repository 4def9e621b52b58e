// Peer credentials and the allow-list decision.
#include "app/peers.h"

#include <grpcpp/grpcpp.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdlib>

namespace policyd::app {

Result<PeerIdentity> read_peer_identity(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return sys_error(errno, "read SO_PEERCRED");
  }
  PeerIdentity peer{cred.pid, cred.uid, cred.gid, {}};
  std::vector<gid_t> groups(64);
  socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) != 0 && errno == ERANGE) {
    groups.resize(glen / sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) != 0) glen = 0;
  }
  groups.resize(glen / sizeof(gid_t));
  peer.groups = std::move(groups);
  return peer;
}

api::Access access_for(const PeerIdentity& peer, const config::ApiConfig& api) {
  auto admitted = [&](const config::AllowList& list) {
    if (list.admits(peer.uid, peer.gid)) return true;
    for (gid_t g : peer.groups) {
      if (list.gids.count(g)) return true;
    }
    return false;
  };
  if (admitted(api.write)) return api::Access::kWrite;
  if (admitted(api.read)) return api::Access::kRead;
  return api::Access::kNone;
}

void PeerAuthorizer::register_connection(int fd, PeerIdentity peer) {
  std::lock_guard lock(mu_);
  peers_[fd] = std::move(peer);
}

void PeerAuthorizer::set_api_config(config::ApiConfig api) {
  std::lock_guard lock(mu_);
  api_ = std::move(api);
}

api::Access PeerAuthorizer::access(const grpc::CallbackServerContext& ctx) const {
  const std::string peer = ctx.peer();
  std::lock_guard lock(mu_);
  if (peer.rfind("fd:", 0) == 0) {
    auto it = peers_.find(std::atoi(peer.c_str() + 3));
    return it == peers_.end() ? api::Access::kNone : access_for(it->second, api_);
  }
  // Anything else reached us over the TCP listener, which only exists with mutual TLS: the
  // client proved a certificate signed by api.tls.client_ca.
  auto auth = ctx.auth_context();
  if (!auth || !auth->IsPeerAuthenticated() || !api_.tls) return api::Access::kNone;
  return api_.tls->write ? api::Access::kWrite : api::Access::kRead;
}

std::string PeerAuthorizer::describe(const grpc::CallbackServerContext& ctx) const {
  const std::string peer = ctx.peer();
  if (peer.rfind("fd:", 0) == 0) {
    std::lock_guard lock(mu_);
    auto it = peers_.find(std::atoi(peer.c_str() + 3));
    if (it == peers_.end()) return peer + ", unknown peer";
    return "uid " + std::to_string(it->second.uid) + " gid " + std::to_string(it->second.gid) +
           " pid " + std::to_string(it->second.pid);
  }
  auto auth = ctx.auth_context();
  if (auth && auth->IsPeerAuthenticated()) {
    const std::vector<grpc::string_ref> ids = auth->GetPeerIdentity();
    if (!ids.empty()) return "TLS client " + std::string(ids.front().data(), ids.front().size());
  }
  return peer;
}

}  // namespace policyd::app
