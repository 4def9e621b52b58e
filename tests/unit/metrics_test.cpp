// Metrics: policyd's families in the Prometheus text format (HELP and TYPE for every family,
// counters named *_total, cumulative histogram buckets up to +Inf with _sum and _count, escaped
// label values), fed by committer events, the API hook and reloads; gauges read from the
// committer's view at render time. Also the config rule that keeps the endpoint on loopback.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "config/config.h"
#include "metrics/policyd_metrics.h"

namespace policyd::metrics {
namespace {

// sample ("name{labels}") -> value, from the text format; TYPE lines go to `types`.
struct Scrape {
  std::map<std::string, std::string> samples;
  std::map<std::string, std::string> types;
  std::map<std::string, std::string> helps;
  std::vector<std::string> order;  // sample names in output order
};

Scrape parse(const std::string& text) {
  Scrape s;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("# TYPE ", 0) == 0) {
      const std::string rest = line.substr(7);
      s.types[rest.substr(0, rest.find(' '))] = rest.substr(rest.find(' ') + 1);
      continue;
    }
    if (line.rfind("# HELP ", 0) == 0) {
      const std::string rest = line.substr(7);
      s.helps[rest.substr(0, rest.find(' '))] = rest.substr(rest.find(' ') + 1);
      continue;
    }
    const size_t space = line.rfind(' ');
    s.samples[line.substr(0, space)] = line.substr(space + 1);
    s.order.push_back(line.substr(0, space));
  }
  return s;
}

std::string value(const Scrape& s, const std::string& sample) {
  auto it = s.samples.find(sample);
  return it == s.samples.end() ? "<absent>" : it->second;
}

std::shared_ptr<const core::CommitterView> view_at(uint64_t generation) {
  auto v = std::make_shared<core::CommitterView>();
  v->generation = generation;
  v->stats.writer.rounds = 5;
  v->stats.writer.barriers = 2;
  v->stats.live_inner_maps = 3;
  v->stats.drained_entries = 40;
  v->stats.drained_maps = 4;
  v->stats.failed_commits = 1;
  return v;
}

TEST(MetricsTextTest, ViewGaugesAreReadAtRenderTime) {
  uint64_t generation = 7;
  PolicydMetrics m([&] { return view_at(generation); });
  Scrape s = parse(m.render());
  EXPECT_EQ(s.types["policyd_generation"], "gauge");
  EXPECT_EQ(value(s, "policyd_generation"), "7");
  EXPECT_EQ(value(s, "policyd_barriers_total"), "7");  // 5 write rounds + 2 explicit barriers
  EXPECT_EQ(value(s, "policyd_live_inner_maps"), "3");
  EXPECT_EQ(value(s, "policyd_drained_entries_total"), "40");
  EXPECT_EQ(value(s, "policyd_drained_inner_maps_total"), "4");
  EXPECT_EQ(value(s, "policyd_commit_failures_total"), "1");
  generation = 9;
  EXPECT_EQ(value(parse(m.render()), "policyd_generation"), "9");
}

TEST(MetricsTextTest, NoViewLeavesItsGaugesOut) {
  PolicydMetrics m([] { return std::shared_ptr<const core::CommitterView>(); });
  Scrape s = parse(m.render());
  EXPECT_EQ(value(s, "policyd_generation"), "<absent>");
  EXPECT_EQ(value(s, "policyd_reloads_total"), "0");
}

TEST(MetricsTextTest, EveryFamilyHasHelpAndTypeAndCountersEndInTotal) {
  PolicydMetrics m([] { return view_at(1); });
  core::DrainedEvent d;
  d.record.map = "acl";
  d.record.counters = {{"hits", 1}};
  m.on_drained(d);
  Scrape s = parse(m.render());
  ASSERT_FALSE(s.types.empty());
  for (const auto& [name, type] : s.types) {
    EXPECT_EQ(name.rfind("policyd_", 0), 0u) << name;
    EXPECT_TRUE(s.helps.count(name)) << name << " has no HELP";
    EXPECT_FALSE(s.helps[name].empty()) << name;
    EXPECT_TRUE(type == "counter" || type == "gauge" || type == "histogram") << name << " " << type;
    if (type == "counter") {
      EXPECT_TRUE(name.size() > 6 && name.substr(name.size() - 6) == "_total") << name;
    }
  }
  // Every sample belongs to a family declared before it.
  for (const std::string& sample : s.order) {
    std::string name = sample.substr(0, sample.find('{'));
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string suf = suffix;
      if (name.size() > suf.size() && name.substr(name.size() - suf.size()) == suf &&
          !s.types.count(name) && s.types.count(name.substr(0, name.size() - suf.size()))) {
        name = name.substr(0, name.size() - suf.size());
      }
    }
    EXPECT_TRUE(s.types.count(name)) << sample << " has no TYPE";
  }
}

TEST(MetricsTextTest, PhaseHistogramsAreCumulativeInSeconds) {
  PolicydMetrics m([] { return view_at(1); });
  core::CommittedEvent e;
  e.generations = {1, 2, 3};
  e.build_ms = 3;  // 0.003 s: above 0.0025, within 0.005
  e.swap_ms = 12;  // 0.012 s: within 0.025
  e.barrier_ms = 0;
  m.on_committed(e);
  e.generations = {4};
  e.build_ms = 20000;  // 20 s: beyond the last bound, only +Inf
  m.on_committed(e);
  m.on_drain_finished(core::DrainFinishedEvent{0.5, 2});
  Scrape s = parse(m.render());

  EXPECT_EQ(s.types["policyd_commit_phase_seconds"], "histogram");
  const std::string b = "policyd_commit_phase_seconds_bucket{phase=\"build\",le=";
  EXPECT_EQ(value(s, b + "\"0.0025\"}"), "0");
  EXPECT_EQ(value(s, b + "\"0.005\"}"), "1");
  EXPECT_EQ(value(s, b + "\"10\"}"), "1");
  EXPECT_EQ(value(s, b + "\"+Inf\"}"), "2");
  EXPECT_EQ(value(s, "policyd_commit_phase_seconds_count{phase=\"build\"}"), "2");
  EXPECT_DOUBLE_EQ(std::stod(value(s, "policyd_commit_phase_seconds_sum{phase=\"build\"}")),
                   20.003);
  EXPECT_EQ(value(s, "policyd_commit_phase_seconds_bucket{phase=\"swap\",le=\"0.01\"}"), "0");
  EXPECT_EQ(value(s, "policyd_commit_phase_seconds_bucket{phase=\"swap\",le=\"0.025\"}"), "2");
  EXPECT_EQ(value(s, "policyd_commit_phase_seconds_count{phase=\"barrier\"}"), "2");
  EXPECT_EQ(value(s, "policyd_commit_phase_seconds_bucket{phase=\"barrier\",le=\"0.0001\"}"), "2");
  EXPECT_EQ(value(s, "policyd_commit_phase_seconds_count{phase=\"drain\"}"), "1");
  EXPECT_EQ(value(s, "policyd_commit_phase_seconds_bucket{phase=\"drain\",le=\"0.0005\"}"), "1");

  // Every bucket of every phase, in order, is cumulative and ends at +Inf == _count.
  for (const char* phase : {"build", "swap", "barrier", "drain"}) {
    std::string last = "0";
    for (double le : kPhaseBuckets) {
      std::ostringstream bound;
      bound << le;
      const std::string v = value(s, "policyd_commit_phase_seconds_bucket{phase=\"" +
                                         std::string(phase) + "\",le=\"" + bound.str() + "\"}");
      ASSERT_NE(v, "<absent>") << phase << " le=" << bound.str();
      EXPECT_LE(std::stoul(last), std::stoul(v)) << phase << " le=" << bound.str();
      last = v;
    }
    EXPECT_EQ(value(s, "policyd_commit_phase_seconds_bucket{phase=\"" + std::string(phase) +
                           "\",le=\"+Inf\"}"),
              value(s, "policyd_commit_phase_seconds_count{phase=\"" + std::string(phase) + "\"}"));
  }

  EXPECT_EQ(s.types["policyd_generations_per_barrier"], "histogram");
  EXPECT_EQ(value(s, "policyd_generations_per_barrier_bucket{le=\"1\"}"), "1");
  EXPECT_EQ(value(s, "policyd_generations_per_barrier_bucket{le=\"2\"}"), "1");
  EXPECT_EQ(value(s, "policyd_generations_per_barrier_bucket{le=\"4\"}"), "2");
  EXPECT_EQ(value(s, "policyd_generations_per_barrier_bucket{le=\"+Inf\"}"), "2");
  EXPECT_EQ(value(s, "policyd_generations_per_barrier_sum"), "4");
  EXPECT_EQ(value(s, "policyd_generations_per_barrier_count"), "2");
}

TEST(MetricsTextTest, DrainedCountersSumPerMapAndField) {
  PolicydMetrics m([] { return view_at(1); });
  core::DrainedEvent d;
  d.record.map = "acl";
  d.record.counters = {{"hits", 5}, {"bytes", 100}};
  m.on_drained(d);
  d.record.counters = {{"hits", 7}};  // another slot of the same map
  m.on_drained(d);
  d.record.map = "ports";
  d.record.counters = {{"packets", 3}};
  m.on_drained(d);
  d.record.map = "nocounters";
  d.record.counters = {};
  m.on_drained(d);
  Scrape s = parse(m.render());
  EXPECT_EQ(s.types["policyd_drained_counter_total"], "counter");
  EXPECT_EQ(value(s, "policyd_drained_counter_total{field=\"hits\",map=\"acl\"}"), "12");
  EXPECT_EQ(value(s, "policyd_drained_counter_total{field=\"bytes\",map=\"acl\"}"), "100");
  EXPECT_EQ(value(s, "policyd_drained_counter_total{field=\"packets\",map=\"ports\"}"), "3");
  for (const auto& [sample, v] : s.samples) {
    EXPECT_EQ(sample.find("nocounters"), std::string::npos) << sample;
  }
}

TEST(MetricsTextTest, LabelValuesAreEscaped) {
  PolicydMetrics m([] { return view_at(1); });
  core::DrainedEvent d;
  d.record.map = "a\"b\\c\nd";
  d.record.counters = {{"hits", 1}};
  m.on_drained(d);
  const std::string text = m.render();
  EXPECT_NE(text.find("policyd_drained_counter_total{field=\"hits\",map=\"a\\\"b\\\\c\\nd\"} 1"),
            std::string::npos)
      << text;
}

TEST(MetricsTextTest, PushErrorsByCodeStartAtZero) {
  PolicydMetrics m([] { return view_at(1); });
  Scrape s = parse(m.render());
  EXPECT_EQ(s.types["policyd_push_errors_total"], "counter");
  for (const char* code : {"INVALID_ARGUMENT", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED",
                           "PERMISSION_DENIED", "NOT_FOUND", "UNAVAILABLE", "INTERNAL"}) {
    EXPECT_EQ(value(s, "policyd_push_errors_total{code=\"" + std::string(code) + "\"}"), "0")
        << code;
  }
  m.on_push_failed(grpc::StatusCode::INVALID_ARGUMENT);
  m.on_push_failed(grpc::StatusCode::INVALID_ARGUMENT);
  m.on_push_failed(grpc::StatusCode::ABORTED);  // not expected, still counted
  s = parse(m.render());
  EXPECT_EQ(value(s, "policyd_push_errors_total{code=\"INVALID_ARGUMENT\"}"), "2");
  EXPECT_EQ(value(s, "policyd_push_errors_total{code=\"ABORTED\"}"), "1");
  EXPECT_EQ(value(s, "policyd_push_errors_total{code=\"INTERNAL\"}"), "0");
}

TEST(MetricsTextTest, ReloadsAndReloadErrors) {
  PolicydMetrics m([] { return view_at(1); });
  m.on_reload(true);
  m.on_reload(false);
  m.on_reload(true);
  Scrape s = parse(m.render());
  EXPECT_EQ(value(s, "policyd_reloads_total"), "3");
  EXPECT_EQ(value(s, "policyd_reload_errors_total"), "1");
}

// ---- config: metrics.listen -----------------------------------------------------------------

constexpr const char* kMaps = R"(pin_dir: /sys/fs/bpf/pd
maps:
  - name: acl
    type: array_of_maps
    slots: 4
    inner:
      type: hash
      max_entries: 16
      key:   [{name: k, type: u32}]
      value: [{name: v, type: u32}]
)";

Result<config::DaemonConfig> with_metrics(const std::string& metrics) {
  return config::parse_config(std::string(kMaps) + "metrics: " + metrics + "\n", "test.yaml");
}

TEST(MetricsConfigTest, OffUnlessConfigured) {
  Result<config::DaemonConfig> cfg = config::parse_config(kMaps, "test.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.error().message();
  EXPECT_EQ(cfg->metrics_listen, "");
  cfg = with_metrics("{listen: \"\"}");
  ASSERT_TRUE(cfg.ok()) << cfg.error().message();
  EXPECT_EQ(cfg->metrics_listen, "");
}

TEST(MetricsConfigTest, LoopbackAccepted) {
  for (const char* listen : {"127.0.0.1:9464", "127.0.0.1:0", "127.1.2.3:65535"}) {
    Result<config::DaemonConfig> cfg = with_metrics(std::string("{listen: \"") + listen + "\"}");
    ASSERT_TRUE(cfg.ok()) << listen << ": " << cfg.error().message();
    EXPECT_EQ(cfg->metrics_listen, listen);
  }
}

TEST(MetricsConfigTest, NonLoopbackAndMalformedRefusedNamingTheField) {
  for (const char* listen :
       {"0.0.0.0:9464", "10.1.2.3:9464", "localhost:9464", "[::1]:9464", "127.0.0.1",
        "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:http", ":9464"}) {
    Result<config::DaemonConfig> cfg = with_metrics(std::string("{listen: \"") + listen + "\"}");
    ASSERT_FALSE(cfg.ok()) << listen << " accepted";
    EXPECT_EQ(cfg.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(cfg.error().message().find("metrics.listen"), std::string::npos)
        << cfg.error().message();
    EXPECT_NE(cfg.error().message().find("test.yaml:"), std::string::npos) << cfg.error().message();
  }
  Result<config::DaemonConfig> cfg = with_metrics("{listen: \"0.0.0.0:9464\"}");
  ASSERT_FALSE(cfg.ok());
  EXPECT_NE(cfg.error().message().find("loopback"), std::string::npos) << cfg.error().message();
  cfg = with_metrics("{listen: \"127.0.0.1:9464\", allow_non_loopback: true}");
  ASSERT_FALSE(cfg.ok()) << "an unknown key under metrics must be refused";
}

}  // namespace
}  // namespace policyd::metrics
