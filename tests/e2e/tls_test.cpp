// The TCP listener (api.tls): mutual TLS only, on 127.0.0.1 and a free port. Each test makes a
// throwaway CA with a server and a client certificate, plus a rogue CA with its own client
// certificate (openssl command line). A client with a CA-signed certificate reads, and writes
// only with `write: true`; no certificate, a rogue certificate and plaintext are refused.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <string>
#include <thread>

#include "daemon_fixture.h"

namespace policyd::e2e {
namespace {

namespace fs = std::filesystem;

constexpr auto kCallTimeout = std::chrono::seconds(5);

// A port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed).
int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class TlsTest : public DaemonTest {
 protected:
  virtual bool tls_write() const { return false; }

  DaemonOptions daemon_options() const override {
    DaemonOptions o;
    o.tls_yaml = "{listen: \"127.0.0.1:" + std::to_string(port_) +
                 "\", cert: " + pki("server.crt") + ", key: " + pki("server.key") +
                 ", client_ca: " + pki("ca.crt") + ", write: " + (tls_write() ? "true" : "false") +
                 "}";
    return o;
  }

  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "policyd-e2e-pki-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << "mkdtemp: " << std::strerror(errno);
    pki_dir_ = tmpl;
    make_ca("ca");
    make_cert("server", "ca",
              "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
              "extendedKeyUsage=serverAuth\n");
    make_cert("client", "ca", "extendedKeyUsage=clientAuth\n");
    make_ca("rogue-ca");
    make_cert("rogue-client", "rogue-ca", "extendedKeyUsage=clientAuth\n");
    if (HasFatalFailure()) return;
    // What clients trust the server by: ca.crt itself is the daemon's client CA, which a test
    // may rotate.
    fs::copy_file(pki("ca.crt"), pki("server-ca.crt"));
    port_ = free_loopback_port();
    ASSERT_GT(port_, 0) << "no free port on 127.0.0.1";
    DaemonTest::SetUp();
  }

  void TearDown() override {
    DaemonTest::TearDown();
    std::error_code ec;
    if (!pki_dir_.empty()) fs::remove_all(pki_dir_, ec);
  }

  [[nodiscard]] std::string pki(const std::string& name) const { return pki_dir_ + "/" + name; }

  void openssl(std::vector<std::string> args) {
    args.insert(args.begin(), "/usr/bin/openssl");
    CmdResult r = run_command(args);
    ASSERT_EQ(r.exit_code, 0) << "openssl " << args[1] << ": " << r.out << r.err;
  }

  void make_ca(const std::string& name) {
    ASSERT_NO_FATAL_FAILURE(
        openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", pki(name + ".key"), "-out", pki(name + ".crt"), "-days", "1",
                 "-subj", "/CN=policyd e2e " + name}));
  }

  // <name>.key/.crt signed by <ca>.key/.crt, with the given X.509 v3 extensions.
  void make_cert(const std::string& name, const std::string& ca, const std::string& ext) {
    std::ofstream(pki(name + ".ext")) << ext;
    ASSERT_NO_FATAL_FAILURE(
        openssl({"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", pki(name + ".key"), "-out", pki(name + ".csr"), "-subj",
                 "/CN=policyd e2e " + name}));
    ASSERT_NO_FATAL_FAILURE(
        openssl({"x509", "-req", "-in", pki(name + ".csr"), "-CA", pki(ca + ".crt"), "-CAkey",
                 pki(ca + ".key"), "-set_serial", std::to_string(++serial_), "-days", "1",
                 "-extfile", pki(name + ".ext"), "-out", pki(name + ".crt")}));
  }

  // A stub on the TCP port: `client` names a key/cert pair ("" = none); plaintext without TLS.
  [[nodiscard]] std::unique_ptr<v1::Policy::Stub> tcp_stub(const std::string& client,
                                                           bool plaintext = false) const {
    std::shared_ptr<grpc::ChannelCredentials> creds;
    if (plaintext) {
      creds = grpc::InsecureChannelCredentials();
    } else {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = slurp(pki("server-ca.crt"));
      if (!client.empty()) {
        ssl.pem_private_key = slurp(pki(client + ".key"));
        ssl.pem_cert_chain = slurp(pki(client + ".crt"));
      }
      creds = grpc::SslCredentials(ssl);
    }
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return v1::Policy::NewStub(
        grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port_), creds, args));
  }

  static grpc::Status tcp_get_state(v1::Policy::Stub& s, v1::GetStateResponse* resp = nullptr) {
    grpc::ClientContext ctx;
    set_deadline(ctx, kCallTimeout);
    v1::GetStateResponse local;
    return s.GetState(&ctx, v1::GetStateRequest(), resp ? resp : &local);
  }

  static grpc::Status tcp_push(v1::Policy::Stub& s, const v1::PushGenerationRequest& req,
                               v1::PushGenerationResponse* resp) {
    grpc::ClientContext ctx;
    set_deadline(ctx, kCallTimeout);
    return s.PushGeneration(&ctx, req, resp);
  }

  // A refused client: its call fails, and the daemon still serves the good client.
  void expect_refused(v1::Policy::Stub& s) {
    grpc::Status st = tcp_get_state(s);
    EXPECT_FALSE(st.ok()) << "GetState was accepted";
    EXPECT_NE(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << describe(st);
    v1::PushGenerationResponse resp;
    st = tcp_push(s, acl_push(0, {{"10.0.0.0/8", 1}}), &resp);
    EXPECT_FALSE(st.ok()) << "PushGeneration was accepted";
    EXPECT_EQ(get_state().generation(), 0u);
    auto good = tcp_stub("client");
    st = tcp_get_state(*good);
    EXPECT_TRUE(st.ok()) << "GetState with the CA-signed client: " << describe(st);
  }

  std::string pki_dir_;
  int port_ = -1;
  int serial_ = 0;
};

class TlsWriteTest : public TlsTest {
 protected:
  bool tls_write() const override { return true; }
};

TEST_F(TlsTest, CaSignedClientReadsButMayNotWrite) {
  auto s = tcp_stub("client");
  v1::GetStateResponse state;
  grpc::Status st = tcp_get_state(*s, &state);
  ASSERT_TRUE(st.ok()) << "GetState: " << describe(st);
  EXPECT_EQ(state.generation(), 0u);
  EXPECT_EQ(state.maps_size(), static_cast<int>(map_names().size()));

  v1::PushGenerationResponse resp;
  st = tcp_push(*s, acl_push(0, {{"10.0.0.0/8", 1}}, "tls-push"), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << describe(st);
  EXPECT_EQ(get_state().generation(), 0u);
  EXPECT_FALSE(kernel_slot("acl", 0).has_value());
}

TEST_F(TlsWriteTest, CaSignedClientWritesWhenAllowed) {
  auto s = tcp_stub("client");
  v1::PushGenerationResponse resp;
  grpc::Status st = tcp_push(*s, acl_push(0, {{"10.0.0.0/8", 1}}, "tls-push"), &resp);
  ASSERT_TRUE(st.ok()) << "PushGeneration: " << describe(st);
  EXPECT_EQ(resp.generation(), 1u);
  v1::GetStateResponse state = get_state();
  EXPECT_EQ(state.generation(), 1u);
  EXPECT_EQ(state.label(), "tls-push");
  auto slot = kernel_slot("acl", 0);
  ASSERT_TRUE(slot.has_value());
  EXPECT_EQ(slot->entries.size(), 1u);
}

TEST_F(TlsWriteTest, ClientWithoutCertificateIsRefused) { expect_refused(*tcp_stub("")); }

TEST_F(TlsWriteTest, ClientCertificateFromAnotherCaIsRefused) {
  expect_refused(*tcp_stub("rogue-client"));
}

TEST_F(TlsWriteTest, PlaintextIsRefused) { expect_refused(*tcp_stub("", /*plaintext=*/true)); }

// A rotated client CA applies on reload, without a restart: clients of the new CA get in and
// clients of the old one are refused. Before the reload nothing changes.
TEST_F(TlsTest, ARotatedClientCaAppliesOnReloadWithoutARestart) {
  ASSERT_FALSE(tcp_get_state(*tcp_stub("rogue-client")).ok())
      << "the control: a client of the other CA is refused before the rotation";
  ASSERT_TRUE(tcp_get_state(*tcp_stub("client")).ok());
  fs::copy_file(pki("rogue-ca.crt"), pki("ca.crt.new"));
  fs::rename(pki("ca.crt.new"), pki("ca.crt"));          // as an operator replaces it: atomically
  std::this_thread::sleep_for(std::chrono::seconds(2));  // two rounds of the server's watcher
  EXPECT_FALSE(tcp_get_state(*tcp_stub("rogue-client")).ok()) << "applied before the reload";
  grpc::ClientContext ctx;
  set_deadline(ctx, kCallTimeout);
  v1::ReloadConfigResponse resp;
  grpc::Status st = stub().ReloadConfig(&ctx, v1::ReloadConfigRequest(), &resp);
  ASSERT_TRUE(st.ok()) << describe(st);
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  bool rotated = false;
  while (!rotated && std::chrono::steady_clock::now() < give_up) {
    rotated = tcp_get_state(*tcp_stub("rogue-client")).ok();
    if (!rotated) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_TRUE(rotated) << "a client of the new CA is still refused 10 s after the rotation";
  EXPECT_FALSE(tcp_get_state(*tcp_stub("client")).ok()) << "a client of the old CA still gets in";
  EXPECT_TRUE(daemon().running());
}

// A rotation gone wrong is named by the reload, and the daemon keeps the last good material.
TEST_F(TlsTest, AReloadWithABrokenTlsFileIsRefusedNamingItAndTheOldMaterialKeepsServing) {
  std::ofstream(pki("ca.crt"), std::ios::trunc) << "not a certificate\n";
  grpc::ClientContext ctx;
  set_deadline(ctx, kCallTimeout);
  v1::ReloadConfigResponse resp;
  grpc::Status st = stub().ReloadConfig(&ctx, v1::ReloadConfigRequest(), &resp);
  EXPECT_TRUE(has_error(st, grpc::StatusCode::INVALID_ARGUMENT,
                        {"api.tls.client_ca", pki("ca.crt"), "holds no PEM block"}));
  std::this_thread::sleep_for(std::chrono::seconds(2));  // the watcher has seen the file
  EXPECT_TRUE(tcp_get_state(*tcp_stub("client")).ok()) << "the last good client CA was dropped";
}

// Files with the right PEM markers that OpenSSL cannot use: a key of another certificate, and a
// certificate block that does not parse. Each reload is refused naming the key, the file and
// what is wrong; the last good material keeps serving.
TEST_F(TlsTest, AReloadWithAMismatchedKeyOrAnUnparsableCertIsRefusedAndTheOldMaterialServes) {
  fs::copy_file(pki("server.key"), pki("server.key.good"));
  fs::copy_file(pki("client.key"), pki("server.key"), fs::copy_options::overwrite_existing);
  grpc::ClientContext ctx;
  set_deadline(ctx, kCallTimeout);
  v1::ReloadConfigResponse resp;
  grpc::Status st = stub().ReloadConfig(&ctx, v1::ReloadConfigRequest(), &resp);
  EXPECT_TRUE(has_error(st, grpc::StatusCode::INVALID_ARGUMENT,
                        {"api.tls.key", pki("server.key"),
                         "does not belong to the first certificate of api.tls.cert"}));

  fs::copy_file(pki("server.key.good"), pki("server.key"), fs::copy_options::overwrite_existing);
  std::ofstream(pki("server.crt"), std::ios::trunc)
      << "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
  grpc::ClientContext ctx2;
  set_deadline(ctx2, kCallTimeout);
  st = stub().ReloadConfig(&ctx2, v1::ReloadConfigRequest(), &resp);
  EXPECT_TRUE(has_error(st, grpc::StatusCode::INVALID_ARGUMENT,
                        {"api.tls.cert", pki("server.crt"), "no certificate OpenSSL can parse"}));
  std::this_thread::sleep_for(std::chrono::seconds(2));  // the watcher has re-read its copies
  EXPECT_TRUE(tcp_get_state(*tcp_stub("client")).ok()) << "the last good material was dropped";
}

// A reload that adds a map and then cannot install the TLS files (a directory stands where the
// key's temp copy goes) is refused and leaves nothing made: the new map is neither served nor
// pinned, TLS keeps serving, and once the obstacle is gone the same reload succeeds.
TEST_F(TlsTest, AReloadThatFailsAfterMakingItsMapsLeavesNothingHalfMade) {
  DaemonOptions o = daemon_options();
  o.maps_yaml += extra_map_yaml();
  ASSERT_TRUE(daemon().rewrite_config(o).ok());
  const std::string obstacle = daemon().state_dir() + "/tls/key.pem.new";
  ASSERT_TRUE(fs::create_directories(obstacle + "/in-the-way"));
  grpc::ClientContext ctx;
  set_deadline(ctx, kCallTimeout);
  v1::ReloadConfigResponse resp;
  grpc::Status st = stub().ReloadConfig(&ctx, v1::ReloadConfigRequest(), &resp);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.error_message().find("install the TLS files"), std::string::npos)
      << st.error_message();
  EXPECT_NE(st.error_message().find("key.pem.new"), std::string::npos) << st.error_message();
  EXPECT_FALSE(fs::exists(pin("extra"))) << "the failed reload left its map pinned";
  v1::GetStateResponse state = get_state();
  for (const auto& m : state.maps()) EXPECT_NE(m.name(), "extra");
  EXPECT_TRUE(tcp_get_state(*tcp_stub("client")).ok());

  fs::remove_all(obstacle);
  grpc::ClientContext again;
  set_deadline(again, kCallTimeout);
  st = stub().ReloadConfig(&again, v1::ReloadConfigRequest(), &resp);
  ASSERT_TRUE(st.ok()) << describe(st);
  EXPECT_EQ(std::vector<std::string>(resp.added_maps().begin(), resp.added_maps().end()),
            std::vector<std::string>{"extra"});
  EXPECT_TRUE(fs::exists(pin("extra")));
}

TEST_F(TlsTest, ListensOnLoopbackOnly) {
  // /proc/net/tcp lists the listener as 0100007F:<port hex> (127.0.0.1), never 00000000.
  std::ostringstream port_hex;
  port_hex << std::uppercase << std::hex << std::setw(4) << std::setfill('0') << port_;
  const std::string tcp = slurp("/proc/net/tcp") + slurp("/proc/net/tcp6");
  EXPECT_NE(tcp.find("0100007F:" + port_hex.str()), std::string::npos) << tcp;
  EXPECT_EQ(tcp.find("00000000:" + port_hex.str() + " "), std::string::npos) << tcp;
}

}  // namespace
}  // namespace policyd::e2e
