// The TLS material of the TCP listener. The operator's files (api.tls.cert, key, client_ca) are
// read and checked at start and at every reload; only then are they copied into policyd's own
// directory (state_dir/tls, mode 0700, files 0600), which gRPC watches. A reload thus applies a
// rotation, and a broken file is named by the reload and never reaches the server.
#pragma once

#include <string>

#include "config/config.h"
#include "util/result.h"

namespace policyd::app {

struct TlsMaterial {
  std::string cert;
  std::string key;
  std::string client_ca;
};

// The watched copies in `dir`.
struct TlsPaths {
  std::string cert;
  std::string key;
  std::string client_ca;
};
[[nodiscard]] TlsPaths tls_paths(const std::string& dir);

// Reads the operator's files and checks them with OpenSSL: the cert chain and the client CA
// parse, the key parses (unencrypted) and belongs to the chain's first certificate. The error
// names the key and the file.
[[nodiscard]] Result<TlsMaterial> read_tls_files(const config::TlsConfig& tls);

// What `dir` holds now (to put it back when a reload fails after installing new material).
[[nodiscard]] Result<TlsMaterial> read_installed_tls_files(const std::string& dir);

// Writes `material` into `dir` (created 0700), each file replaced by a rename.
[[nodiscard]] Status install_tls_files(const TlsMaterial& material, const std::string& dir);

}  // namespace policyd::app
