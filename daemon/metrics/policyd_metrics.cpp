// PolicydMetrics: policyd's metric families on a prometheus-cpp registry, plus the families read
// from the committer's view at scrape time.
#include "metrics/policyd_metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <iterator>
#include <utility>
#include <vector>

#include "schema/status_name.h"

namespace policyd::metrics {
namespace {

// Codes the API answers writes with (api/status.cpp, plus CANCELLED for an abandoned stream):
// their series exist from the start at 0, so rate() sees the first error.
constexpr grpc::StatusCode kPushErrorCodes[] = {
    grpc::StatusCode::INVALID_ARGUMENT,   grpc::StatusCode::FAILED_PRECONDITION,
    grpc::StatusCode::RESOURCE_EXHAUSTED, grpc::StatusCode::PERMISSION_DENIED,
    grpc::StatusCode::NOT_FOUND,          grpc::StatusCode::UNAVAILABLE,
    grpc::StatusCode::INTERNAL,           grpc::StatusCode::CANCELLED,
};

prometheus::Histogram::BucketBoundaries bounds(const auto& buckets) {
  return {std::begin(buckets), std::end(buckets)};
}

prometheus::MetricFamily scalar(const char* name, const char* help, prometheus::MetricType type,
                                double value) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  prometheus::ClientMetric m;
  (type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value) = value;
  f.metric.push_back(std::move(m));
  return f;
}

}  // namespace

struct PolicydMetrics::Impl final : prometheus::Collectable {
  explicit Impl(ViewSource source)
      : view(std::move(source)),
        phases(prometheus::BuildHistogram()
                   .Name("policyd_commit_phase_seconds")
                   .Help("Time per commit phase: build = creating and filling the new inner maps "
                         "(the slowest generation of the batch); swap = the outer-map writes, "
                         "their grace-period wait included; barrier = the explicit barrier "
                         "(atomic groups; 0 when the writes' own wait was the barrier); drain = "
                         "reading out and closing the replaced inner maps")
                   .Register(registry)),
        build(phases.Add({{"phase", "build"}}, bounds(kPhaseBuckets))),
        swap(phases.Add({{"phase", "swap"}}, bounds(kPhaseBuckets))),
        barrier(phases.Add({{"phase", "barrier"}}, bounds(kPhaseBuckets))),
        drain(phases.Add({{"phase", "drain"}}, bounds(kPhaseBuckets))),
        per_barrier(prometheus::BuildHistogram()
                        .Name("policyd_generations_per_barrier")
                        .Help("Generations committed together behind one barrier (group commit), "
                              "one observation per commit")
                        .Register(registry)
                        .Add({}, bounds(kBatchBuckets))),
        drained_counters(prometheus::BuildCounter()
                             .Name("policyd_drained_counter_total")
                             .Help("Counter fields drained from replaced inner maps, summed over "
                                   "slots, entries and CPUs, by outer map and field")
                             .Register(registry)),
        push_errors(prometheus::BuildCounter()
                        .Name("policyd_push_errors_total")
                        .Help("Pushes and rollbacks that failed, by gRPC status code")
                        .Register(registry)),
        connections_refused(prometheus::BuildCounter()
                                .Name("policyd_connections_refused_total")
                                .Help("Unix connections closed at accept, by reason: no_access "
                                      "(in no allow-list), limit (api.max_connections or "
                                      "api.max_connections_per_uid) or fd_limit (out of fds)")
                                .Register(registry)),
        reloads(prometheus::BuildCounter()
                    .Name("policyd_reloads_total")
                    .Help("Configuration reloads attempted (SIGHUP and ReloadConfig)")
                    .Register(registry)
                    .Add({})),
        reload_errors(prometheus::BuildCounter()
                          .Name("policyd_reload_errors_total")
                          .Help("Configuration reloads refused; the old configuration kept running")
                          .Register(registry)
                          .Add({})) {
    for (grpc::StatusCode code : kPushErrorCodes) {
      push_errors.Add({{"code", schema::status_code_name(code)}});
    }
    for (const char* reason : {"no_access", "limit", "fd_limit"}) {
      connections_refused.Add({{"reason", reason}});
    }
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    using prometheus::MetricType;
    std::vector<prometheus::MetricFamily> out;
    if (std::shared_ptr<const core::CommitterView> v = view ? view() : nullptr) {
      const core::EngineStats& s = v->stats;
      out.push_back(scalar("policyd_generation", "The generation the data plane holds",
                           MetricType::Gauge, static_cast<double>(v->generation)));
      out.push_back(scalar("policyd_barriers_total",
                           "Grace-period waits the committer paid for: outer-map write rounds "
                           "(one wait each, however many slots) plus explicit barriers",
                           MetricType::Counter,
                           static_cast<double>(s.writer.rounds + s.writer.barriers)));
      out.push_back(scalar("policyd_commit_failures_total",
                           "Commits the kernel refused (every write of the batch undone)",
                           MetricType::Counter, static_cast<double>(s.failed_commits)));
      out.push_back(scalar("policyd_live_inner_maps",
                           "Inner maps installed in outer maps (both banks of atomic groups)",
                           MetricType::Gauge, static_cast<double>(s.live_inner_maps)));
      out.push_back(scalar("policyd_drained_inner_maps_total",
                           "Replaced inner maps drained and closed", MetricType::Counter,
                           static_cast<double>(s.drained_maps)));
      out.push_back(scalar("policyd_drained_entries_total",
                           "Entries read out of replaced inner maps", MetricType::Counter,
                           static_cast<double>(s.drained_entries)));
    }
    std::vector<prometheus::MetricFamily> events = registry.Collect();
    out.insert(out.end(), std::make_move_iterator(events.begin()),
               std::make_move_iterator(events.end()));
    return out;
  }

  ViewSource view;
  prometheus::Registry registry;
  prometheus::Family<prometheus::Histogram>& phases;
  prometheus::Histogram& build;
  prometheus::Histogram& swap;
  prometheus::Histogram& barrier;
  prometheus::Histogram& drain;
  prometheus::Histogram& per_barrier;
  prometheus::Family<prometheus::Counter>& drained_counters;
  prometheus::Family<prometheus::Counter>& push_errors;
  prometheus::Family<prometheus::Counter>& connections_refused;
  prometheus::Counter& reloads;
  prometheus::Counter& reload_errors;
};

PolicydMetrics::PolicydMetrics(ViewSource view) : impl_(std::make_shared<Impl>(std::move(view))) {}

PolicydMetrics::~PolicydMetrics() = default;

void PolicydMetrics::on_committed(const core::CommittedEvent& e) {
  impl_->build.Observe(e.build_ms / 1e3);
  impl_->swap.Observe(e.swap_ms / 1e3);
  impl_->barrier.Observe(e.barrier_ms / 1e3);
  impl_->per_barrier.Observe(static_cast<double>(e.generations.size()));
}

void PolicydMetrics::on_drained(const core::DrainedEvent& e) {
  for (const auto& [field, sum] : e.record.counters) {
    impl_->drained_counters.Add({{"map", e.record.map}, {"field", field}})
        .Increment(static_cast<double>(sum));
  }
}

void PolicydMetrics::on_drain_finished(const core::DrainFinishedEvent& e) {
  impl_->drain.Observe(e.drain_ms / 1e3);
}

void PolicydMetrics::on_push_failed(grpc::StatusCode code) {
  impl_->push_errors.Add({{"code", schema::status_code_name(code)}}).Increment();
}

void PolicydMetrics::on_connection_refused(const char* reason) {
  impl_->connections_refused.Add({{"reason", reason}}).Increment();
}

void PolicydMetrics::on_reload(bool ok) {
  impl_->reloads.Increment();
  if (!ok) impl_->reload_errors.Increment();
}

std::shared_ptr<prometheus::Collectable> PolicydMetrics::collectable() const { return impl_; }

std::string PolicydMetrics::render() const {
  return prometheus::TextSerializer().Serialize(impl_->Collect());
}

}  // namespace policyd::metrics
