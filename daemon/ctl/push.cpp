// policyctl push: reads a policy file, encodes it with the daemon's schemas and commits it,
// unary or streamed, falling back to a stream when gRPC refuses the message for its size.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>

#include "ctl/client.h"
#include "ctl/commands.h"
#include "ctl/output.h"
#include "ctl/policy_file.h"

namespace policyd::ctl {
namespace {

// Pushes whose serialized request is larger go over PushGenerationStream, in messages of at
// most kStreamChunkBytes: both well under gRPC's default 4 MiB receive limit.
constexpr size_t kUnaryPushMaxBytes = 3u << 20;
constexpr size_t kStreamChunkBytes = 2u << 20;

// When gRPC refused a message for its size ("Received message larger than max (524024 vs.
// 262144)"), the receiver's limit (a guess when the text does not say).
std::optional<size_t> message_limit(const grpc::Status& status) {
  if (status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) return std::nullopt;
  const std::string& msg = status.error_message();
  if (msg.find("larger than max") == std::string::npos) return std::nullopt;
  const size_t vs = msg.find("vs. ");
  std::optional<uint64_t> limit;
  if (vs != std::string::npos) {
    const size_t start = vs + 4;
    size_t end = start;
    while (end < msg.size() && std::isdigit(static_cast<unsigned char>(msg[end]))) ++end;
    limit = parse_u64(msg.substr(start, end - start));
  }
  return limit && *limit > 0 ? static_cast<size_t>(*limit) : size_t{64} << 10;
}

// The policy file's text ("-" is stdin) and the name errors give it; a local failure if it
// cannot be read.
std::optional<std::string> read_policy_text(const std::string& path, std::string& file_name,
                                            Failure& failure) {
  std::string text;
  file_name = path;
  if (path == "-") {
    file_name = "<stdin>";
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    return text;
  }
  const auto cannot_read = [&] {
    failure = {kExitLocal, "cannot read " + path + ": " + std::strerror(errno)};
    return std::nullopt;
  };
  std::ifstream in(path, std::ios::binary);
  if (!in) return cannot_read();
  text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (in.bad()) return cannot_read();
  return text;
}

// Unary up to kUnaryPushMaxBytes, else streamed. The daemon's message limit is configurable
// (limits.max_message_bytes) and not reported, so a push gRPC refused for its size alone
// (nothing was committed) is sent again as a stream of messages under the limit it names.
grpc::Status send_push(Client& client, const v1::PushGenerationRequest& request,
                       v1::PushGenerationResponse& response) {
  grpc::Status status;
  bool unary = request.ByteSizeLong() <= kUnaryPushMaxBytes;
  size_t chunk_bytes = kStreamChunkBytes;
  for (int attempt = 0; attempt < 3; ++attempt) {
    response.Clear();
    auto ctx = client.context();
    if (unary) {
      status = client.stub().PushGeneration(ctx.get(), request, &response);
    } else {
      std::unique_ptr<grpc::ClientWriter<v1::PushGenerationRequest>> writer =
          client.stub().PushGenerationStream(ctx.get(), &response);
      for (const v1::PushGenerationRequest& part : split_push_request(request, chunk_bytes)) {
        if (!writer->Write(part)) break;  // the call ended; Finish says why
      }
      writer->WritesDone();
      status = writer->Finish();
    }
    const std::optional<size_t> limit = message_limit(status);
    if (!limit) break;
    const size_t next = std::max<size_t>(*limit / 4 * 3, 1024);
    if (!unary && next >= chunk_bytes) break;
    unary = false;
    chunk_bytes = next;
  }
  return status;
}

void print_pushed(const v1::PushGenerationRequest& request,
                  const v1::PushGenerationResponse& response) {
  std::cout << "generation " << response.generation() << " committed";
  if (!request.label().empty()) std::cout << " (label " << request.label() << ")";
  if (response.batch_size() > 1) {
    std::cout << ", one barrier for " << response.batch_size() << " generations";
  }
  if (response.replayed()) std::cout << "; replayed: request id already committed";
  std::cout << "\n";
}

}  // namespace

int cmd_push(Client& client, const GlobalOptions& global, const Invocation& inv) {
  Failure failure;
  std::string file_name;
  const std::optional<std::string> text = read_policy_text(inv.args[0], file_name, failure);
  if (!text) return report(failure);
  const std::optional<uint64_t> expect = generation_option(inv, "--expect", failure);
  if (!expect) return report(failure);

  v1::GetStateResponse state;
  if (grpc::Status st = client.get_state(state); !st.ok()) return report(rpc_failure(st));
  Result<v1::PushGenerationRequest> parsed = parse_policy_file(*text, file_name, state);
  if (!parsed.ok()) return report({kExitLocal, parsed.error().message()});
  v1::PushGenerationRequest& request = *parsed;
  if (auto it = inv.options.find("--label"); it != inv.options.end()) {
    request.set_label(it->second);
  }
  request.set_expected_generation(*expect);
  if (auto it = inv.options.find("--request-id"); it != inv.options.end()) {
    request.set_request_id(it->second);
  }

  v1::PushGenerationResponse response;
  if (grpc::Status st = send_push(client, request, response); !st.ok()) {
    return report(rpc_failure(st));
  }
  if (global.json) {
    std::cout << to_json(response) << "\n";
  } else {
    print_pushed(request, response);
  }
  return kExitOk;
}

}  // namespace policyd::ctl
