#include "app/tls_files.h"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <utility>
#include <vector>

#include "kernel/unique_fd.h"
#include "util/fs.h"

namespace policyd::app {
namespace {

Result<std::string> read_pem(const char* key, const std::string& path, const char* block) {
  Result<std::string> read = util::read_text_file(path);
  if (!read.ok()) return read.error().wrap(key);
  std::string text = std::move(read).value();
  if (text.find(block) == std::string::npos) {
    return invalid_argument(std::string(key) + " (" + path + ") holds no PEM block \"" + block +
                            "\"");
  }
  return text;
}

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

// OpenSSL's reason for the last failure on this thread (its error queue emptied).
std::string openssl_reason() {
  const unsigned long code = ERR_peek_last_error();
  ERR_clear_error();
  if (code == 0) return "no reason given";
  char buf[256];
  ERR_error_string_n(code, buf, sizeof(buf));
  return buf;
}

std::unique_ptr<BIO, BioFree> memory_bio(const std::string& text) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// OpenSSL's passphrase callback: none is given. Without one OpenSSL prompts on the terminal,
// which would block a daemon started from one (or its reload) on an encrypted key.
int no_passphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*u*/) { return -1; }

// Every certificate in `text`, in order; an error naming `what` when none parses.
Result<std::vector<X509Ptr>> parse_certificates(const std::string& text, const std::string& what) {
  auto bio = memory_bio(text);
  std::vector<X509Ptr> certs;
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, no_passphrase, nullptr)) {
    certs.emplace_back(x);
  }
  ERR_clear_error();  // the end of the input reads as an error
  if (certs.empty()) {
    return invalid_argument(what + " holds no certificate OpenSSL can parse");
  }
  return certs;
}

// The server's chain parses, its key parses and belongs to the first certificate, and the
// client CA holds at least one certificate: what gRPC's TLS needs, checked before it sees them.
Status check_material(const TlsMaterial& m, const config::TlsConfig& tls) {
  const std::string cert = "api.tls.cert (" + tls.cert + ")";
  const std::string key = "api.tls.key (" + tls.key + ")";
  POLICYD_ASSIGN_OR_RETURN(std::vector<X509Ptr> chain, parse_certificates(m.cert, cert));
  auto bio = memory_bio(m.key);
  std::unique_ptr<EVP_PKEY, KeyFree> pkey(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
  if (!pkey) {
    return invalid_argument(key + " holds no private key OpenSSL can parse (" + openssl_reason() +
                            "; an encrypted key is not supported)");
  }
  if (X509_check_private_key(chain.front().get(), pkey.get()) != 1) {
    ERR_clear_error();
    return invalid_argument(key + " does not belong to the first certificate of " + cert);
  }
  POLICYD_TRY(parse_certificates(m.client_ca, "api.tls.client_ca (" + tls.client_ca + ")"));
  return {};
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
  POLICYD_TRY(check_material(m, tls));
  return m;
}

Result<TlsMaterial> read_installed_tls_files(const std::string& dir) {
  const TlsPaths paths = tls_paths(dir);
  TlsMaterial m;
  POLICYD_ASSIGN_OR_RETURN(m.cert, util::read_text_file(paths.cert));
  POLICYD_ASSIGN_OR_RETURN(m.key, util::read_text_file(paths.key));
  POLICYD_ASSIGN_OR_RETURN(m.client_ca, util::read_text_file(paths.client_ca));
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
