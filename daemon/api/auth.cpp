// The Authorizer's default description of a caller.
#include "api/auth.h"

#include <grpcpp/server_context.h>

namespace policyd::api {

std::string Authorizer::describe(const grpc::CallbackServerContext& ctx) const {
  return ctx.peer();
}

std::string Authorizer::owner(const grpc::CallbackServerContext& ctx) const {
  return describe(ctx);
}

}  // namespace policyd::api
