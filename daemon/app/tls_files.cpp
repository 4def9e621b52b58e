#include "app/tls_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <utility>

#include "kernel/unique_fd.h"
#include "util/fs.h"

namespace policyd::app {
namespace {

Result<std::string> read_pem(const char* key, const std::string& path, const char* block) {
  std::ifstream in(path);
  if (!in) return sys_error(errno, std::string(key) + ": read " + path);
  std::stringstream s;
  s << in.rdbuf();
  std::string text = s.str();
  if (text.find(block) == std::string::npos) {
    return invalid_argument(std::string(key) + " (" + path + ") holds no PEM block \"" + block +
                            "\"");
  }
  return text;
}

Status write_private(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".new";
  ::unlink(tmp.c_str());
  kernel::UniqueFd fd(
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) return sys_error(errno, "create " + tmp);
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return sys_error(errno, "write " + tmp);
    done += static_cast<size_t>(n);
  }
  return {};
}

}  // namespace

TlsPaths tls_paths(const std::string& dir) {
  return {dir + "/cert.pem", dir + "/key.pem", dir + "/client_ca.pem"};
}

Result<TlsMaterial> read_tls_files(const config::TlsConfig& tls) {
  TlsMaterial m;
  POLICYD_ASSIGN_OR_RETURN(m.cert, read_pem("api.tls.cert", tls.cert, "-----BEGIN CERTIFICATE"));
  POLICYD_ASSIGN_OR_RETURN(m.key, read_pem("api.tls.key", tls.key, "PRIVATE KEY-----"));
  POLICYD_ASSIGN_OR_RETURN(m.client_ca,
                           read_pem("api.tls.client_ca", tls.client_ca, "-----BEGIN CERTIFICATE"));
  return m;
}

Status install_tls_files(const TlsMaterial& material, const std::string& dir) {
  POLICYD_TRY(util::make_dirs(dir, 0700));
  const TlsPaths paths = tls_paths(dir);
  const std::pair<const std::string*, const std::string*> files[] = {
      {&paths.key, &material.key},
      {&paths.cert, &material.cert},
      {&paths.client_ca, &material.client_ca}};
  // All three written first, then renamed one right after the other. The watcher re-reads
  // every second, so it may once see the new cert with the old key between two renames; its
  // next read has the whole new set.
  for (const auto& [path, text] : files) POLICYD_TRY(write_private(*path, *text));
  for (const auto& [path, text] : files) {
    const std::string tmp = *path + ".new";
    if (::rename(tmp.c_str(), path->c_str()) != 0) return sys_error(errno, "rename " + tmp);
  }
  return {};
}

}  // namespace policyd::app
