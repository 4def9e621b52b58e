// ApiObserver: what the app wants to hear about the API's outcomes (metrics). Optional: a service
// without one reports nothing.
#pragma once

#include <grpcpp/support/status_code_enum.h>

namespace policyd::api {

// Called on gRPC and committer threads: implementations are thread-safe and never block.
class ApiObserver {
 public:
  virtual ~ApiObserver() = default;
  // A write of the data plane (PushGeneration, PushGenerationStream, Rollback) ended with `code`
  // (never OK): refused before it reached the committer, or failed there.
  virtual void on_push_failed(grpc::StatusCode code) = 0;
};

}  // namespace policyd::api
