// policyd_e2e_client: one gRPC call against a policyd socket, for e2e tests that must call the
// API as another uid (the test forks, drops privileges and execs this; gRPC itself must not run
// in a forked child of a process with live gRPC threads). Prints the outcome as
//   code=<numeric grpc status code> name=<CODE_NAME>
//   message=<status message>
// and exits 0 whenever the call was made (whatever its status); 2 on a usage error.
//
//   policyd_e2e_client SOCKET get_state|list_generations|push|watch
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "policyd/v1/policyd.grpc.pb.h"

namespace {

const char* code_name(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    default:
      return "OTHER";
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s SOCKET get_state|list_generations|push|watch\n", argv[0]);
    return 2;
  }
  const std::string socket = argv[1];
  const std::string call = argv[2];
  auto stub = policyd::v1::Policy::NewStub(
      grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Status status;
  if (call == "get_state") {
    policyd::v1::GetStateResponse resp;
    status = stub->GetState(&ctx, policyd::v1::GetStateRequest(), &resp);
    if (status.ok())
      std::printf("generation=%llu\n", static_cast<unsigned long long>(resp.generation()));
  } else if (call == "list_generations") {
    policyd::v1::ListGenerationsResponse resp;
    status = stub->ListGenerations(&ctx, policyd::v1::ListGenerationsRequest(), &resp);
  } else if (call == "push") {
    // acl slot 9 = {10.9.0.0/16 -> 9}: valid for the e2e default config.
    policyd::v1::PushGenerationRequest req;
    req.set_label("from-another-uid");
    auto* change = req.add_changes();
    change->set_map("acl");
    change->mutable_slot()->set_index(9);
    auto* entry = change->add_entries();
    (*entry->mutable_key_fields()->mutable_values())["prefix"] = "10.9.0.0/16";
    (*entry->mutable_value_fields()->mutable_values())["action"] = "9";
    policyd::v1::PushGenerationResponse resp;
    status = stub->PushGeneration(&ctx, req, &resp);
    if (status.ok())
      std::printf("generation=%llu\n", static_cast<unsigned long long>(resp.generation()));
  } else if (call == "watch") {
    // A stream must be refused at its start; a short deadline ends an admitted one.
    grpc::ClientContext wctx;
    wctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    auto reader = stub->WatchEvents(&wctx, policyd::v1::WatchEventsRequest());
    policyd::v1::Event ev;
    while (reader->Read(&ev)) {
    }
    status = reader->Finish();
  } else {
    std::fprintf(stderr, "unknown call %s\n", call.c_str());
    return 2;
  }
  std::printf("code=%d name=%s\nmessage=%s\n", static_cast<int>(status.error_code()),
              code_name(status.error_code()), status.error_message().c_str());
  return 0;
}
