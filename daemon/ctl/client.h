// Client: policyctl's one channel to the daemon's unix socket and the per-call deadline.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>

#include "ctl/cli.h"
#include "policyd/v1/policyd.grpc.pb.h"

namespace policyd::ctl {

class Client {
 public:
  explicit Client(const GlobalOptions& global);

  [[nodiscard]] v1::Policy::Stub& stub() { return *stub_; }

  // A context with the call deadline (--timeout).
  [[nodiscard]] std::unique_ptr<grpc::ClientContext> context() const;

  [[nodiscard]] grpc::Status get_state(v1::GetStateResponse& state);

 private:
  const GlobalOptions& global_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Policy::Stub> stub_;
};

}  // namespace policyd::ctl
