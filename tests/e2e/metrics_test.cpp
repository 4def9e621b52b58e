// The Prometheus endpoint of the real daemon, scraped over HTTP with a Boost.Beast client: it
// listens on loopback only (the address it logs), serves GET /metrics in the text format, and
// its values move with what the daemon does: pushes (generation, barriers, phase histograms,
// generations per barrier), drains (entries, counter sums per map and field), failed writes by
// status code, reloads. Without `metrics` in the config nothing listens on TCP; a non-loopback
// address is refused.
#include <gtest/gtest.h>
#include <linux/bpf.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <utility>  // before Boost.Asio with g++ 12 in C++20

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "daemon_fixture.h"

namespace policyd::e2e {
namespace {

namespace http = boost::beast::http;
using tcp = boost::asio::ip::tcp;

struct HttpResponse {
  int status = 0;  // 0: no response (see error)
  std::string content_type;
  std::string body;
  std::string error;
};

// One request on a fresh connection to "host:port".
HttpResponse http_request(const std::string& address, http::verb verb, const std::string& target) {
  HttpResponse out;
  try {
    const size_t colon = address.rfind(':');
    boost::asio::io_context io;
    tcp::socket sock(io);
    sock.connect(tcp::endpoint(boost::asio::ip::make_address(address.substr(0, colon)),
                               static_cast<uint16_t>(std::stoul(address.substr(colon + 1)))));
    // A hung server must fail the test, not stall it.
    const timeval timeout{10, 0};
    ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    http::request<http::string_body> req{verb, target, 11};
    req.set(http::field::host, address);
    req.set(http::field::user_agent, "policyd-e2e");
    req.prepare_payload();
    http::write(sock, req);
    boost::beast::flat_buffer buf;
    http::response<http::string_body> res;
    http::read(sock, buf, res);
    out.status = static_cast<int>(res.result_int());
    out.content_type = std::string(res[http::field::content_type]);
    out.body = res.body();
    boost::system::error_code ignored;
    sock.shutdown(tcp::socket::shutdown_both, ignored);
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  return out;
}

// "name{labels}" -> value of every sample in a text-format body.
using Samples = std::map<std::string, double>;

Samples parse_samples(const std::string& body) {
  Samples s;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == std::string::npos) continue;
    s[line.substr(0, space)] = std::strtod(line.c_str() + space + 1, nullptr);
  }
  return s;
}

// -1 when absent, so a missing series fails comparisons loudly.
double get(const Samples& s, const std::string& name) {
  auto it = s.find(name);
  return it == s.end() ? -1 : it->second;
}

std::string phase_count(const std::string& phase) {
  return "policyd_commit_phase_seconds_count{phase=\"" + phase + "\"}";
}

constexpr const char* kHitsSeries = "policyd_drained_counter_total{field=\"hits\",map=\"acl\"}";

// Local addresses ("127.0.0.1:9464") of the TCP sockets in LISTEN state that process `pid` holds.
std::vector<std::string> tcp_listeners(pid_t pid) {
  std::set<std::string> inodes;
  const std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
  for (const auto& e : std::filesystem::directory_iterator(fd_dir)) {
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(e.path(), ec).string();
    if (!ec && target.rfind("socket:[", 0) == 0) {
      inodes.insert(target.substr(8, target.size() - 9));
    }
  }
  std::vector<std::string> out;
  for (const char* table : {"tcp", "tcp6"}) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string sl, local, remote, st, queues, timer, retr, uid, timeout, inode;
      f >> sl >> local >> remote >> st >> queues >> timer >> retr >> uid >> timeout >> inode;
      if (st != "0A" || !inodes.count(inode)) continue;
      const size_t colon = local.find(':');
      const unsigned port = std::stoul(local.substr(colon + 1), nullptr, 16);
      if (std::string(table) == "tcp") {
        const uint32_t a = static_cast<uint32_t>(std::stoul(local.substr(0, colon), nullptr, 16));
        out.push_back(std::to_string(a & 0xff) + "." + std::to_string((a >> 8) & 0xff) + "." +
                      std::to_string((a >> 16) & 0xff) + "." + std::to_string(a >> 24) + ":" +
                      std::to_string(port));
      } else {
        out.push_back("[" + local.substr(0, colon) + "]:" + std::to_string(port));
      }
    }
  }
  return out;
}

class MetricsTest : public DaemonTest {
 protected:
  DaemonOptions daemon_options() const override {
    DaemonOptions o;
    o.metrics_yaml = "{listen: \"127.0.0.1:0\"}";
    return o;
  }

  // The address the daemon logged ("metrics listening on 127.0.0.1:NNNNN").
  std::string metrics_address() {
    std::smatch m;
    const std::string log = daemon().log();
    static const std::regex kLine("metrics listening on ([0-9.]+:[0-9]+)");
    if (!std::regex_search(log, m, kLine)) {
      ADD_FAILURE() << "no \"metrics listening on\" line in the log:\n" << log;
      return "";
    }
    return m[1].str();
  }

  Samples scrape() {
    if (address_.empty()) address_ = metrics_address();
    HttpResponse r = http_request(address_, http::verb::get, "/metrics");
    EXPECT_EQ(r.status, 200) << r.error << r.body;
    return parse_samples(r.body);
  }

  // Scrapes until `pred` holds (work that follows the ack, like the drain, lands a moment later).
  Samples scrape_until(const std::function<bool(const Samples&)>& pred,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    Samples s = scrape();
    while (!pred(s) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      s = scrape();
    }
    return s;
  }

  std::string address_;
};

TEST_F(MetricsTest, ServesTheTextFormatOnLoopbackOnly) {
  const std::string address = metrics_address();
  ASSERT_EQ(address.rfind("127.0.0.1:", 0), 0u) << address;
  // The daemon's only TCP listener is the metrics endpoint (the API is on the unix socket).
  EXPECT_EQ(tcp_listeners(daemon().pid()), std::vector<std::string>{address});

  HttpResponse r = http_request(address, http::verb::get, "/metrics");
  ASSERT_EQ(r.status, 200) << r.error;
  EXPECT_EQ(r.content_type.rfind("text/plain", 0), 0u) << r.content_type;
  for (const char* family :
       {"# TYPE policyd_generation gauge", "# TYPE policyd_barriers_total counter",
        "# TYPE policyd_commit_phase_seconds histogram",
        "# TYPE policyd_generations_per_barrier histogram", "# TYPE policyd_live_inner_maps gauge",
        "# TYPE policyd_drained_entries_total counter", "# TYPE policyd_push_errors_total counter",
        "# TYPE policyd_reloads_total counter", "# TYPE policyd_reload_errors_total counter"}) {
    EXPECT_NE(r.body.find(family), std::string::npos) << family << " missing in:\n" << r.body;
  }
  // Drained counter totals appear with the first drained map that has counter fields.
  EXPECT_EQ(r.body.find("policyd_drained_counter_total{"), std::string::npos);
  const Samples s = parse_samples(r.body);
  EXPECT_EQ(get(s, "policyd_commit_phase_seconds_bucket{phase=\"swap\",le=\"+Inf\"}"),
            get(s, phase_count("swap")));

  HttpResponse other = http_request(address, http::verb::get, "/");
  EXPECT_EQ(other.status, 404) << other.error << other.body;
  HttpResponse post = http_request(address, http::verb::post, "/metrics");
  EXPECT_GE(post.status, 400) << post.error << post.body;
}

TEST_F(MetricsTest, ValuesMoveWithPushesDrainsAndFailedWrites) {
  const Samples s0 = scrape();
  ASSERT_GE(get(s0, "policyd_generation"), 0) << "no policyd_generation sample";

  // A commit: generation, barriers, every phase histogram and the batch histogram move.
  const uint64_t g1 = push_ok(acl_push(0, {{"10.0.0.0/8", 1}}, "metrics-1"));
  ASSERT_NE(g1, 0u);
  Samples s1 = scrape_until([&](const Samples& s) {
    return get(s, phase_count("drain")) > get(s0, phase_count("drain"));
  });
  EXPECT_EQ(get(s1, "policyd_generation"), static_cast<double>(g1));
  EXPECT_GT(get(s1, "policyd_generation"), get(s0, "policyd_generation"));
  EXPECT_GT(get(s1, "policyd_barriers_total"), get(s0, "policyd_barriers_total"));
  for (const char* phase : {"build", "swap", "barrier"}) {
    EXPECT_EQ(get(s1, phase_count(phase)), get(s0, phase_count(phase)) + 1) << phase;
  }
  EXPECT_GT(get(s1, phase_count("drain")), get(s0, phase_count("drain")));
  EXPECT_GT(get(s1, "policyd_commit_phase_seconds_sum{phase=\"swap\"}"),
            get(s0, "policyd_commit_phase_seconds_sum{phase=\"swap\"}"))
      << "a commit that wrote a slot took no time";
  EXPECT_EQ(get(s1, "policyd_generations_per_barrier_count"),
            get(s0, "policyd_generations_per_barrier_count") + 1);
  EXPECT_EQ(get(s1, "policyd_generations_per_barrier_sum"),
            get(s0, "policyd_generations_per_barrier_sum") + 1);
  EXPECT_GE(get(s1, "policyd_live_inner_maps"), 1);

  // A program counted 5 hits in the live inner map (written here through the pinned outer map);
  // replacing the slot drains them into the per-map, per-field total.
  std::optional<KernelSlot> live = kernel_slot("acl", 0u);
  ASSERT_TRUE(live.has_value());
  auto inner = kernel::map_fd_by_id(live->map_id);
  ASSERT_TRUE(inner.ok()) << inner.error().message();
  const Bytes key = acl_key(8, 10, 0, 0, 0);
  const Bytes val = acl_value(1, 5);
  Status st = kernel::update_elem(inner->get(), key.data(), val.data(), BPF_EXIST);
  ASSERT_TRUE(st.ok()) << st.error().message();
  const double hits_before = std::max(0.0, get(s1, kHitsSeries));
  const uint64_t g2 = push_ok(acl_push(0, {{"10.0.0.0/8", 2}}, "metrics-2"));
  ASSERT_GT(g2, g1);
  // Drained events and the committer's view (drained entries and maps) are published one after
  // the other, after the ack: wait for both.
  Samples s2 = scrape_until([&](const Samples& s) {
    return get(s, kHitsSeries) >= hits_before + 5 &&
           get(s, "policyd_drained_inner_maps_total") > get(s1, "policyd_drained_inner_maps_total");
  });
  EXPECT_EQ(get(s2, kHitsSeries), hits_before + 5);
  EXPECT_GT(get(s2, "policyd_drained_entries_total"), get(s1, "policyd_drained_entries_total"));
  EXPECT_GT(get(s2, "policyd_drained_inner_maps_total"),
            get(s1, "policyd_drained_inner_maps_total"));
  EXPECT_EQ(get(s2, "policyd_generation"), static_cast<double>(g2));

  // Failed writes, by code: refused before the committer (slot out of range), refused by it
  // (stale expected_generation), an empty push stream, a rollback to an unknown generation.
  const std::string invalid = "policyd_push_errors_total{code=\"INVALID_ARGUMENT\"}";
  const std::string precondition = "policyd_push_errors_total{code=\"FAILED_PRECONDITION\"}";
  const std::string not_found = "policyd_push_errors_total{code=\"NOT_FOUND\"}";
  EXPECT_EQ(get(s2, invalid), 0);
  grpc::Status bad = push(acl_push(kAclSlots + 3, {{"10.0.0.0/8", 1}}));
  ASSERT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << describe(bad);
  v1::PushGenerationRequest stale = acl_push(1, {{"10.0.0.0/8", 1}});
  stale.set_expected_generation(g1);  // the current one is g2
  bad = push(stale);
  ASSERT_EQ(bad.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << describe(bad);
  {
    grpc::ClientContext ctx;
    set_deadline(ctx);
    v1::PushGenerationResponse resp;
    auto writer = stub().PushGenerationStream(&ctx, &resp);
    writer->WritesDone();
    bad = writer->Finish();
    ASSERT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << describe(bad);
  }
  {
    grpc::ClientContext ctx;
    set_deadline(ctx);
    v1::RollbackRequest req;
    req.set_generation(g2 + 1000);
    v1::RollbackResponse resp;
    bad = stub().Rollback(&ctx, req, &resp);
    ASSERT_EQ(bad.error_code(), grpc::StatusCode::NOT_FOUND) << describe(bad);
  }
  const Samples s3 = scrape();
  EXPECT_EQ(get(s3, invalid), get(s2, invalid) + 2);
  EXPECT_EQ(get(s3, precondition), get(s2, precondition) + 1);
  EXPECT_EQ(get(s3, not_found), get(s2, not_found) + 1);
  // Refused writes commit nothing.
  EXPECT_EQ(get(s3, "policyd_generation"), static_cast<double>(g2));
  EXPECT_EQ(get(s3, "policyd_barriers_total"), get(s2, "policyd_barriers_total"));
  EXPECT_EQ(get(s3, phase_count("swap")), get(s2, phase_count("swap")));
}

TEST_F(MetricsTest, ReloadsAndRefusedReloadsAreCounted) {
  const Samples s0 = scrape();
  ASSERT_EQ(get(s0, "policyd_reloads_total"), 0);
  ASSERT_EQ(get(s0, "policyd_reload_errors_total"), 0);

  auto reload = [&] {
    grpc::ClientContext ctx;
    set_deadline(ctx);
    v1::ReloadConfigResponse resp;
    return stub().ReloadConfig(&ctx, v1::ReloadConfigRequest(), &resp);
  };
  grpc::Status s = reload();
  ASSERT_TRUE(s.ok()) << describe(s);
  Samples s1 = scrape();
  EXPECT_EQ(get(s1, "policyd_reloads_total"), 1);
  EXPECT_EQ(get(s1, "policyd_reload_errors_total"), 0);

  // A file that does not parse: refused, counted as an error, over the API and on SIGHUP.
  const DaemonOptions good = daemon().options();
  {
    std::ofstream out(daemon().config_path(), std::ios::app);
    out << "  - name: [broken\n";
  }
  s = reload();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << describe(s);
  Samples s2 = scrape();
  EXPECT_EQ(get(s2, "policyd_reloads_total"), 2);
  EXPECT_EQ(get(s2, "policyd_reload_errors_total"), 1);
  daemon().signal(SIGHUP);
  Samples s3 = scrape_until([](const Samples& x) { return get(x, "policyd_reloads_total") >= 3; });
  EXPECT_EQ(get(s3, "policyd_reloads_total"), 3);
  EXPECT_EQ(get(s3, "policyd_reload_errors_total"), 2);

  // SIGHUP with the good file again: counted, not as an error.
  ASSERT_TRUE(daemon().rewrite_config(good).ok());
  daemon().signal(SIGHUP);
  Samples s4 = scrape_until([](const Samples& x) { return get(x, "policyd_reloads_total") >= 4; });
  EXPECT_EQ(get(s4, "policyd_reloads_total"), 4);
  EXPECT_EQ(get(s4, "policyd_reload_errors_total"), 2);
}

// The default test configuration has no `metrics` key.
class MetricsOffTest : public DaemonTest {};

TEST_F(MetricsOffTest, NothingListensWithoutMetricsConfig) {
  EXPECT_EQ(daemon().log().find("metrics listening"), std::string::npos) << daemon().log();
  EXPECT_TRUE(tcp_listeners(daemon().pid()).empty())
      << "policyd listens on TCP without a metrics (or TLS) config";
}

TEST_F(MetricsOffTest, NonLoopbackAddressIsRefused) {
  for (const char* listen : {"0.0.0.0:9464", "192.0.2.1:9464"}) {
    DaemonOptions o;
    o.metrics_yaml = std::string("{listen: \"") + listen + "\"}";
    const std::string path = write_file(
        "metrics.yaml", config_yaml(o, work_dir() + "/other.sock", pin_dir(), work_dir()));
    CmdResult r = run_command({policyd_bin(), "--check-config", path});
    EXPECT_NE(r.exit_code, 0) << listen << " accepted: " << r.out << r.err;
    EXPECT_TRUE(contains_all(r.out + r.err, {"metrics.listen", "loopback"})) << r.out << r.err;
  }
}

}  // namespace
}  // namespace policyd::e2e
