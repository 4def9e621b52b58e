// What a configuration reload did, reported by ReloadConfig and the Reloaded event.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "util/result.h"

namespace policyd::api {

struct ReloadSummary {
  std::vector<std::string> added;    // maps created
  std::vector<std::string> kept;     // maps gone from the file but kept (remove_unlisted_maps off)
  std::vector<std::string> removed;  // maps removed (remove_unlisted_maps on)
};

// Re-reads and applies the configuration file. May block (file I/O, waiting for the committer):
// the service never calls it on a gRPC thread.
using ReloadHook = std::function<Result<ReloadSummary>()>;

}  // namespace policyd::api
