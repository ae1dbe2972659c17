// Metrics: the kernel's cumulative counters become Prometheus counters that
// advance by what the kernel added since the last sync.
#include "metrics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

namespace cw {
namespace {

// The sum of the series of family `name` (a counter or a gauge) that carry
// label="value" (every series when label is empty); a failure if none does.
double valueOf(const Metrics& m, const std::string& name, const std::string& label = "",
               const std::string& value = "") {
  for (const auto& family : m.registry()->Collect()) {
    if (family.name != name) continue;
    double total = 0;
    bool found = false;
    for (const auto& metric : family.metric) {
      const bool selected =
          label.empty() ||
          std::any_of(metric.label.begin(), metric.label.end(),
                      [&](const auto& l) { return l.name == label && l.value == value; });
      if (!selected) continue;
      found = true;
      total +=
          family.type == prometheus::MetricType::Gauge ? metric.gauge.value : metric.counter.value;
    }
    if (found) return total;
  }
  ADD_FAILURE() << name << (label.empty() ? "" : "{" + label + "=\"" + value + "\"}")
                << " is not registered";
  return -1;
}

TEST(MetricsTest, KernelCountersAdvanceByWhatTheKernelAdded) {
  Metrics m;
  ProbeCounters c;
  c.ringbuf_lost = 2;
  c.lost_active = 1;
  c.owner_insert_failed = 4;
  c.runs_skipped = 3;
  m.syncKernel(c);
  c.ringbuf_lost = 7;
  c.runs_skipped = 5;
  m.syncKernel(c);
  m.syncKernel(c);  // nothing new
  EXPECT_EQ(valueOf(m, "capturewatch_events_lost_total"), 7);
  EXPECT_EQ(valueOf(m, "capturewatch_connections_lost_total"), 1);
  EXPECT_EQ(valueOf(m, "capturewatch_owner_insert_failed_total"), 4);
  EXPECT_EQ(valueOf(m, "capturewatch_bpf_runs_skipped_total"), 5);
}

TEST(MetricsTest, RemapLookupsAreCountedByResultFromZero) {
  Metrics m;
  for (const char* result : {"joined", "unmatched", "error"}) {
    EXPECT_EQ(valueOf(m, "capturewatch_remap_lookups_total", "result", result), 0) << result;
  }
  Correlator::Stats s;
  s.remap_joined = 3;
  s.remap_unmatched = 1;
  m.syncCorrelator(s);
  s.remap_joined = 4;
  s.remap_errors = 2;
  m.syncCorrelator(s);
  EXPECT_EQ(valueOf(m, "capturewatch_remap_lookups_total", "result", "joined"), 4);
  EXPECT_EQ(valueOf(m, "capturewatch_remap_lookups_total", "result", "unmatched"), 1);
  EXPECT_EQ(valueOf(m, "capturewatch_remap_lookups_total", "result", "error"), 2);
}

TEST(MetricsTest, TrackedSocketsAndTheirLimitAreGauges) {
  Metrics m;
  m.setTrackedSockets(1234, 131072);
  EXPECT_EQ(valueOf(m, "capturewatch_tracked_sockets"), 1234);
  EXPECT_EQ(valueOf(m, "capturewatch_tracked_sockets_limit"), 131072);
  m.setTrackedSockets(7, 131072);
  EXPECT_EQ(valueOf(m, "capturewatch_tracked_sockets"), 7);
}

}  // namespace
}  // namespace cw
