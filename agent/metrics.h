// Prometheus metrics (prometheus-cpp), names prefixed capturewatch_.
// Label values are bounded: namespace, pod, workload, verdict, reason, and
// pods beyond kMaxPods are folded into pod="_other". Destinations never
// become labels; they go to the logs and /gaps.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>

#include "correlator.h"
#include "probe.h"
#include "verdict.h"

namespace cw {

// The Kubernetes identity of a watched pod (outside Kubernetes: the
// target's name as pod, empty namespace and workload).
struct PodLabels {
  std::string namespace_;
  std::string pod;
  std::string workload;
  friend auto operator<=>(const PodLabels&, const PodLabels&) = default;
};

class Metrics {
 public:
  static constexpr size_t kMaxPods = 2000;

  Metrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // The series of capturewatch_connections_total for (pod, verdict,
  // reason), and of capturewatch_bypass_rejected_total for a pod, created
  // at first use: the caller keeps them until removePod(pod).
  prometheus::Counter& connectionCounter(const PodLabels& pod, Verdict verdict,
                                         const std::string& reason);
  prometheus::Counter& bypassRejectedCounter(const PodLabels& pod);
  void setPodWithoutSidecar(const PodLabels& pod, bool without);
  // Removes every series of a pod that is gone.
  void removePod(const PodLabels& pod);

  void setWatchedTargets(size_t n);
  // The kernel's owner table: sockets tracked now, and the bound they may reach.
  void setTrackedSockets(uint64_t n, uint64_t limit);
  void setReady(bool ready);
  // Kernel and correlator counters are cumulative: ours advance by the difference.
  void syncKernel(const ProbeCounters& counters);
  void syncCorrelator(const Correlator::Stats& stats);
  // Seconds from a connection's establishment to its verdict being reported.
  void observeVerdictLatency(double seconds);
  void addEventsRead(uint64_t n);
  void addEventsDropped(const std::string& reason, uint64_t n);
  void addRulesRead(bool ok);
  // Startup scans of a newly watched namespace: connections found already
  // open (reported with their verdict, found_at_start), and scans that failed.
  void addFoundAtStart(uint64_t n);
  void addStartupScanError();
  // A watched namespace given by path disappeared and is no longer watched.
  void addTargetGone();
  // Registers the Kubernetes discovery metrics (only exported in that mode).
  void enableKubernetes();
  void setKubernetesWatchUp(bool up);
  void addKubernetesWatchRestart();
  void addKubernetesError(const std::string& kind);

 private:
  // The labels actually used for a pod: itself, or the overflow series.
  PodLabels bounded(const PodLabels& pod);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& connections_;
  prometheus::Family<prometheus::Counter>& bypass_rejected_;
  prometheus::Family<prometheus::Gauge>& pods_without_sidecar_;
  prometheus::Family<prometheus::Counter>& events_dropped_;
  prometheus::Family<prometheus::Counter>& correlator_evictions_;
  prometheus::Family<prometheus::Counter>& remap_lookups_;
  prometheus::Family<prometheus::Counter>& rules_reads_;
  prometheus::Family<prometheus::Counter>* kubernetes_errors_ = nullptr;
  prometheus::Gauge& watched_targets_;
  prometheus::Gauge& tracked_sockets_;
  prometheus::Gauge& tracked_sockets_limit_;
  prometheus::Gauge& ready_;
  prometheus::Gauge* kubernetes_watch_up_ = nullptr;
  prometheus::Counter* kubernetes_watch_restarts_ = nullptr;
  prometheus::Counter& events_lost_;
  prometheus::Counter& connections_lost_;
  prometheus::Counter& events_read_;
  prometheus::Counter& owner_insert_failed_;
  prometheus::Counter& bpf_runs_skipped_;
  prometheus::Counter& orphan_accepts_;
  prometheus::Counter& outcomes_lost_;
  prometheus::Counter& found_at_start_;
  prometheus::Counter& startup_scan_errors_;
  prometheus::Counter& targets_gone_;
  prometheus::Histogram& verdict_latency_;
  ProbeCounters kernel_seen_;
  Correlator::Stats correlator_seen_;
  std::set<PodLabels> pods_;  // pods with their own series (at most kMaxPods)
  // Cache of connection counters: the hot path avoids the family's lock.
  // Transparent: a verdict looks its counter up without copying the labels.
  std::map<std::tuple<PodLabels, Verdict, std::string>, prometheus::Counter*, std::less<>>
      connection_cache_;
  std::map<PodLabels, prometheus::Counter*> rejected_cache_;  // the same for bypass_rejected_
};

}  // namespace cw
