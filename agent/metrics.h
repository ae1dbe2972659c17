// Prometheus metrics (prometheus-cpp), names prefixed capturewatch_.
// Label values are bounded: namespace, pod, verdict, reason. Destinations
// never become labels; they go to the logs.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>

#include "correlator.h"
#include "probe.h"
#include "verdict.h"

namespace cw {

class MetricsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Metrics {
 public:
  Metrics();

  // Serves /metrics on HOST:PORT. Throws MetricsError if it cannot bind.
  void serve(const std::string& address);

  void addConnection(const std::string& ns, const std::string& pod, Verdict verdict,
                     const std::string& reason);
  void addBypassRejected(const std::string& ns, const std::string& pod);
  void setWatchedTargets(size_t n);
  // Kernel counters are cumulative: the counters advance by the difference.
  void syncKernel(const ProbeCounters& counters);
  void syncCorrelator(const Correlator::Stats& stats);
  void addEventsRead(uint64_t n);
  void addEventsMalformed(uint64_t n);
  // Removes every series of a pod that is gone.
  void removePod(const std::string& ns, const std::string& pod);

  prometheus::Registry& registry() { return *registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Counter>& connections_;
  prometheus::Family<prometheus::Counter>& bypass_rejected_;
  prometheus::Family<prometheus::Gauge>& watched_targets_family_;
  prometheus::Family<prometheus::Counter>& events_lost_family_;
  prometheus::Family<prometheus::Counter>& events_read_family_;
  prometheus::Family<prometheus::Counter>& events_malformed_family_;
  prometheus::Family<prometheus::Counter>& owner_insert_failed_family_;
  prometheus::Family<prometheus::Counter>& correlator_evictions_family_;
  prometheus::Family<prometheus::Counter>& orphan_accepts_family_;
  prometheus::Family<prometheus::Counter>& duplicate_events_family_;
  prometheus::Family<prometheus::Counter>& outcomes_lost_family_;
  prometheus::Gauge& watched_targets_;
  prometheus::Counter& events_lost_;
  prometheus::Counter& events_read_;
  prometheus::Counter& events_malformed_;
  prometheus::Counter& owner_insert_failed_;
  prometheus::Counter& pending_evicted_;
  prometheus::Counter& followed_evicted_;
  prometheus::Counter& orphan_accepts_;
  prometheus::Counter& duplicate_events_;
  prometheus::Counter& outcomes_lost_;
  ProbeCounters kernel_seen_;
  Correlator::Stats correlator_seen_;
  // Cache of connection counters: the hot path avoids the family's lock.
  std::map<std::tuple<std::string, std::string, Verdict, std::string>, prometheus::Counter*>
      connection_cache_;
};

}  // namespace cw
