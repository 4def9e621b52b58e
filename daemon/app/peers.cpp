// Peer credentials and the allow-list decision.
#include "app/peers.h"

#include <grpcpp/grpcpp.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <iterator>

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

api::Access PeerAuthorizer::access_of(const PeerIdentity& peer) const {
  std::lock_guard lock(mu_);
  return access_for(peer, api_);
}

void PeerAuthorizer::forget(std::map<int, Connection>::iterator it) {
  auto u = per_uid_.find(it->second.peer.uid);
  if (u != per_uid_.end() && --u->second == 0) per_uid_.erase(u);
  peers_.erase(it);
}

void PeerAuthorizer::forget_closed() {
  for (auto it = peers_.begin(); it != peers_.end();) {
    struct stat st {};
    const bool open =
        ::fstat(it->first, &st) == 0 && st.st_dev == it->second.dev && st.st_ino == it->second.ino;
    auto next = std::next(it);
    if (!open) forget(it);
    it = next;
  }
}

Status PeerAuthorizer::limit_reached(uid_t uid) const {
  if (peers_.size() >= api_.max_connections) {
    return Error{
        ErrorCode::kResourceExhausted, 0,
        "api.max_connections (" + std::to_string(api_.max_connections) + ") connections are open"};
  }
  if (auto u = per_uid_.find(uid);
      u != per_uid_.end() && u->second >= api_.max_connections_per_uid) {
    return Error{ErrorCode::kResourceExhausted, 0,
                 "uid " + std::to_string(uid) + " holds api.max_connections_per_uid (" +
                     std::to_string(api_.max_connections_per_uid) + ") connections"};
  }
  return {};
}

Status PeerAuthorizer::register_connection(int fd, PeerIdentity peer) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return sys_error(errno, "fstat a new connection");
  std::lock_guard lock(mu_);
  if (auto old = peers_.find(fd); old != peers_.end()) forget(old);  // gRPC closed it
  if (!limit_reached(peer.uid).ok()) {
    forget_closed();  // O(connections), only when a limit is reached
    POLICYD_TRY(limit_reached(peer.uid));
  }
  ++per_uid_[peer.uid];
  peers_[fd] = Connection{std::move(peer), st.st_dev, st.st_ino};
  return {};
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
    return it == peers_.end() ? api::Access::kNone : access_for(it->second.peer, api_);
  }
  // Anything else reached us over the TCP listener, which only exists with mutual TLS: the
  // client proved a certificate signed by api.tls.client_ca.
  auto auth = ctx.auth_context();
  if (!auth || !auth->IsPeerAuthenticated() || !api_.tls) return api::Access::kNone;
  return api_.tls->write ? api::Access::kWrite : api::Access::kRead;
}

std::string PeerAuthorizer::owner(const grpc::CallbackServerContext& ctx) const {
  const std::string peer = ctx.peer();
  if (peer.rfind("fd:", 0) == 0) {
    std::lock_guard lock(mu_);
    auto it = peers_.find(std::atoi(peer.c_str() + 3));
    if (it != peers_.end()) return "uid " + std::to_string(it->second.peer.uid);
  }
  return describe(ctx);
}

std::string PeerAuthorizer::describe(const grpc::CallbackServerContext& ctx) const {
  const std::string peer = ctx.peer();
  if (peer.rfind("fd:", 0) == 0) {
    std::lock_guard lock(mu_);
    auto it = peers_.find(std::atoi(peer.c_str() + 3));
    if (it == peers_.end()) return peer + ", unknown peer";
    const PeerIdentity& p = it->second.peer;
    return "uid " + std::to_string(p.uid) + " gid " + std::to_string(p.gid) + " pid " +
           std::to_string(p.pid);
  }
  auto auth = ctx.auth_context();
  if (auth && auth->IsPeerAuthenticated()) {
    const std::vector<grpc::string_ref> ids = auth->GetPeerIdentity();
    if (!ids.empty()) return "TLS client " + std::string(ids.front().data(), ids.front().size());
  }
  return peer;
}

}  // namespace policyd::app
