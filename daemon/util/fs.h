// Files and directories: mkdir -p style creation (pin directories, the state directory, the
// socket's parent) and reading a whole text file.
#pragma once

#include <sys/types.h>

#include <string>

#include "util/result.h"

namespace policyd::util {

// Creates `path` and each missing directory above it with `mode`; existing ones are left as
// they are. The error names the directory that could not be created.
[[nodiscard]] Status make_dirs(const std::string& path, mode_t mode = 0755);
// The same for the directories above `path` only (the parent of a socket or a file).
[[nodiscard]] Status make_parent_dirs(const std::string& path, mode_t mode = 0755);

// The whole file; the error ("read <path>: <errno text>") names it.
[[nodiscard]] Result<std::string> read_text_file(const std::string& path);

}  // namespace policyd::util
