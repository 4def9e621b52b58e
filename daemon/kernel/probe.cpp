// Kernel probe: functional check of outer-map batch updates plus a small timing comparison.
#include "kernel/probe.h"

#include <sys/utsname.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <vector>

#include "kernel/map.h"
#include "util/clock.h"

namespace policyd::kernel {
namespace {

constexpr int kSamples = 3;
constexpr uint32_t kBatch = 8;
// A batch of 8 paying per element takes ~8x a batch of 1; per call, ~1x. 3x splits them.
constexpr double kPerElementRatio = 3.0;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename F>
double time_ms(F&& f) {
  auto t0 = std::chrono::steady_clock::now();
  f();
  return util::ms_since(t0);
}

}  // namespace

bool parse_kernel_release(const std::string& release, int* major, int* minor) {
  return std::sscanf(release.c_str(), "%d.%d", major, minor) == 2;
}

std::string KernelFacts::describe() const {
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "kernel %s: outer batch update %s, %s; single %.2f ms, batch(1) %.2f ms, "
                "batch(%u) %.2f ms",
                release.c_str(), outer_batch_update ? "supported" : "unsupported",
                !outer_batch_update       ? "-"
                : batch_waits_per_element ? "waits per element"
                                          : "waits per call",
                single_update_ms, batch1_ms, kBatch, batch8_ms);
  return buf;
}

KernelFacts kernel_release() {
  KernelFacts facts;
  utsname uts{};
  if (::uname(&uts) == 0) facts.release = uts.release;
  parse_kernel_release(facts.release, &facts.major, &facts.minor);
  return facts;
}

Result<KernelFacts> probe_kernel() {
  KernelFacts facts = kernel_release();

  MapSpec tmpl_spec{BPF_MAP_TYPE_ARRAY, "pd_probe_in", 4, 4, 1, 0, -1};
  POLICYD_ASSIGN_OR_RETURN(UniqueFd tmpl, create_map(tmpl_spec));
  MapSpec outer_spec{BPF_MAP_TYPE_ARRAY_OF_MAPS, "pd_probe_out", 4, 4, kBatch, 0, tmpl.get()};
  POLICYD_ASSIGN_OR_RETURN(UniqueFd outer, create_map(outer_spec));

  std::array<uint32_t, kBatch> keys{};
  std::array<uint32_t, kBatch> values{};
  std::vector<UniqueFd> inner;
  for (uint32_t i = 0; i < kBatch; ++i) {
    POLICYD_ASSIGN_OR_RETURN(UniqueFd fd, create_map(tmpl_spec));
    keys[i] = i;
    values[i] = static_cast<uint32_t>(fd.get());
    inner.push_back(std::move(fd));
  }

  std::vector<double> single, b1, b8;
  for (int s = 0; s < kSamples; ++s) {
    Status st;
    single.push_back(time_ms([&] { st = update_elem(outer.get(), &keys[0], &values[0]); }));
    if (!st.ok()) return st.error().wrap("probe: update outer map slot");
  }
  facts.single_update_ms = median(single);

  BatchOutcome first = update_batch(outer.get(), keys.data(), values.data(), 1);
  if (first.error) {
    if (batch_unsupported(*first.error) || first.error->sys_errno == EINVAL) return facts;
    return first.error->wrap("probe: batch update outer map");
  }
  facts.outer_batch_update = true;
  for (int s = 0; s < kSamples; ++s) {
    BatchOutcome o1, o8;
    b1.push_back(time_ms([&] { o1 = update_batch(outer.get(), keys.data(), values.data(), 1); }));
    b8.push_back(
        time_ms([&] { o8 = update_batch(outer.get(), keys.data(), values.data(), kBatch); }));
    if (o1.error) return o1.error->wrap("probe: batch update outer map");
    if (o8.error) return o8.error->wrap("probe: batch update outer map");
  }
  facts.batch1_ms = median(b1);
  facts.batch8_ms = median(b8);
  facts.batch_waits_per_element = facts.batch8_ms > kPerElementRatio * facts.batch1_ms;
  return facts;
}

}  // namespace policyd::kernel
