// mkdir -p: one mkdir per path component, EEXIST meaning done; a whole file through a stream.
#include "util/fs.h"

#include <sys/stat.h>

#include <cerrno>
#include <fstream>
#include <sstream>

namespace policyd::util {

Status make_dirs(const std::string& path, mode_t mode) {
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    const std::string prefix = path.substr(0, pos);
    if (::mkdir(prefix.c_str(), mode) != 0 && errno != EEXIST) {
      return sys_error(errno, "create directory " + prefix);
    }
  }
  return {};
}

Status make_parent_dirs(const std::string& path, mode_t mode) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return {};
  return make_dirs(path.substr(0, slash), mode);
}

Result<std::string> read_text_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return sys_error(errno, "read " + path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace policyd::util
