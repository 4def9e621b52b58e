// Client: the channel to the daemon and call contexts with the deadline.
#include "ctl/client.h"

#include <chrono>
#include <cstdint>

namespace policyd::ctl {

Client::Client(const GlobalOptions& global) : global_(global) {
  grpc::ChannelArguments args;
  // Dumps of large inner maps exceed gRPC's default 4 MiB receive limit.
  args.SetMaxReceiveMessageSize(-1);
  channel_ =
      grpc::CreateCustomChannel("unix:" + global.socket, grpc::InsecureChannelCredentials(), args);
  stub_ = v1::Policy::NewStub(channel_);
}

std::unique_ptr<grpc::ClientContext> Client::context() const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(global_.timeout * 1e6)));
  return ctx;
}

grpc::Status Client::get_state(v1::GetStateResponse& state) {
  auto ctx = context();
  return stub_->GetState(ctx.get(), v1::GetStateRequest(), &state);
}

}  // namespace policyd::ctl
