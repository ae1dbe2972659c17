#include "metrics.h"

namespace cw {
namespace {

prometheus::Family<prometheus::Counter>& counter(const char* name, const char* help,
                                                 prometheus::Registry& registry) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry);
}

prometheus::Family<prometheus::Gauge>& gauge(const char* name, const char* help,
                                             prometheus::Registry& registry) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry);
}

void advance(prometheus::Counter& c, uint64_t& seen, uint64_t now) {
  if (now > seen) c.Increment(static_cast<double>(now - seen));
  seen = now;
}

prometheus::Labels podLabels(const PodLabels& pod) {
  return {{"namespace", pod.namespace_}, {"pod", pod.pod}, {"workload", pod.workload}};
}

}  // namespace

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      connections_(counter("capturewatch_connections_total",
                           "Outbound TCP connections of watched pods by verdict (captured, "
                           "bypassed, proxy, local) and, for bypassed, the reason.",
                           *registry_)),
      bypass_rejected_(counter("capturewatch_bypass_rejected_total",
                               "Bypassed connections the peer reset or closed before any reply "
                               "byte: the strict-mTLS rejection (503 connection termination).",
                               *registry_)),
      pods_without_sidecar_(gauge("capturewatch_pods_without_sidecar",
                                  "Selected pods that have no sidecar container: nothing can "
                                  "capture their traffic (1 per pod).",
                                  *registry_)),
      events_dropped_(counter("capturewatch_events_dropped_total",
                              "Events dropped in user space, by reason (malformed, duplicate).",
                              *registry_)),
      correlator_evictions_(counter("capturewatch_correlator_evictions_total",
                                    "Connections dropped from a full correlator table, by table "
                                    "(pending, followed).",
                                    *registry_)),
      remap_lookups_(counter("capturewatch_remap_lookups_total",
                             "Sidecar accepts no app connection claimed, looked up in the "
                             "pod's conntrack table, by result: joined (conntrack had remapped "
                             "the app's source port; the connection is captured), unmatched, "
                             "error.",
                             *registry_)),
      rules_reads_(counter("capturewatch_rules_reads_total",
                           "Reads of a watched pod's netfilter rules, by result (ok, error).",
                           *registry_)),
      watched_targets_(gauge("capturewatch_watched_targets",
                             "Pods (network namespaces) watched on this node.", *registry_)
                           .Add({})),
      tracked_sockets_(gauge("capturewatch_tracked_sockets",
                             "App sockets of watched pods the kernel's owner table tracks now "
                             "(read every 10 s).",
                             *registry_)
                           .Add({})),
      tracked_sockets_limit_(gauge("capturewatch_tracked_sockets_limit",
                                   "--max-tracked-sockets: the sockets the owner table holds "
                                   "with practically no insert failing.",
                                   *registry_)
                                 .Add({})),
      ready_(gauge("capturewatch_ready",
                   "1 when the BPF programs are attached and the targets are synced.", *registry_)
                 .Add({})),
      events_lost_(counter("capturewatch_events_lost_total",
                           "Kernel events dropped because the ring buffer was full.", *registry_)
                       .Add({})),
      connections_lost_(counter("capturewatch_connections_lost_total",
                                "App connections the agent never saw: their established or "
                                "failed record was lost (ring buffer full). With "
                                "capturewatch_connections_total, every connection made.",
                                *registry_)
                            .Add({})),
      events_read_(counter("capturewatch_events_read_total",
                           "Kernel events read from the ring buffer.", *registry_)
                       .Add({})),
      owner_insert_failed_(counter("capturewatch_owner_insert_failed_total",
                                   "Sockets whose owner could not be recorded in the kernel map "
                                   "at connect().",
                                   *registry_)
                               .Add({})),
      bpf_runs_skipped_(counter("capturewatch_bpf_runs_skipped_total",
                                "TCP state changes the kernel did not run capturewatch's BPF "
                                "programs for: the program was already running on that CPU "
                                "(interrupted). A skipped change can leave a connection unseen "
                                "or its outcome unknown.",
                                *registry_)
                            .Add({})),
      orphan_accepts_(counter("capturewatch_orphan_accepts_total",
                              "Accepts on the redirect port that no observed app connection "
                              "claimed within the grace window.",
                              *registry_)
                          .Add({})),
      outcomes_lost_(counter("capturewatch_outcomes_lost_total",
                             "Bypassed connections whose end was never seen (close record lost).",
                             *registry_)
                         .Add({})),
      found_at_start_(counter("capturewatch_found_at_start_total",
                              "Connections found already open when a namespace started to be "
                              "watched (agent start or restart, new pod), reported by the "
                              "startup scan.",
                              *registry_)
                          .Add({})),
      startup_scan_errors_(counter("capturewatch_startup_scan_errors_total",
                                   "Startup scans of a watched namespace that failed (its "
                                   "connections already open are not reported).",
                                   *registry_)
                               .Add({})),
      targets_gone_(counter("capturewatch_targets_gone_total",
                            "Watched network namespaces that disappeared (pod or process gone) "
                            "and stopped being watched.",
                            *registry_)
                        .Add({})),
      verdict_latency_(prometheus::BuildHistogram()
                           .Name("capturewatch_verdict_latency_seconds")
                           .Help("Time from a connection's establishment to its verdict being "
                                 "reported (bypassed verdicts wait for the grace window).")
                           .Register(*registry_)
                           .Add({}, prometheus::Histogram::BucketBoundaries{
                                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.3,
                                        0.5, 1, 2.5})) {
  gauge("capturewatch_build_info", "Build information; the value is always 1.", *registry_)
      .Add({{"version", CW_VERSION}})
      .Set(1);
  // Create the series that must exist from the start, at zero.
  events_dropped_.Add({{"reason", "malformed"}});
  events_dropped_.Add({{"reason", "duplicate"}});
  correlator_evictions_.Add({{"table", "pending"}});
  correlator_evictions_.Add({{"table", "followed"}});
  for (const char* result : {"joined", "unmatched", "error"}) {
    remap_lookups_.Add({{"result", result}});
  }
  rules_reads_.Add({{"result", "ok"}});
  rules_reads_.Add({{"result", "error"}});
}

PodLabels Metrics::bounded(const PodLabels& pod) {
  if (pods_.count(pod) != 0) return pod;
  if (pods_.size() < kMaxPods) {
    pods_.insert(pod);
    return pod;
  }
  return PodLabels{pod.namespace_, "_other", "_other"};
}

prometheus::Counter& Metrics::connectionCounter(const PodLabels& pod, Verdict verdict,
                                                const std::string& reason) {
  auto it = connection_cache_.find(std::tie(pod, verdict, reason));
  if (it == connection_cache_.end()) {
    auto labels = podLabels(bounded(pod));
    labels["verdict"] = std::string(toString(verdict));
    labels["reason"] = reason;
    it = connection_cache_.emplace(std::make_tuple(pod, verdict, reason), &connections_.Add(labels)).first;
  }
  return *it->second;
}

prometheus::Counter& Metrics::bypassRejectedCounter(const PodLabels& pod) {
  auto it = rejected_cache_.find(pod);
  if (it == rejected_cache_.end()) {
    it = rejected_cache_.emplace(pod, &bypass_rejected_.Add(podLabels(bounded(pod)))).first;
  }
  return *it->second;
}

void Metrics::setPodWithoutSidecar(const PodLabels& pod, bool without) {
  auto labels = podLabels(pod);
  if (without) {
    pods_without_sidecar_.Add(labels).Set(1);
  } else if (pods_without_sidecar_.Has(labels)) {
    pods_without_sidecar_.Remove(&pods_without_sidecar_.Add(labels));
  }
}

void Metrics::removePod(const PodLabels& pod) {
  for (auto it = connection_cache_.begin(); it != connection_cache_.end();) {
    if (std::get<0>(it->first) == pod) {
      if (pods_.count(pod) != 0) connections_.Remove(it->second);
      it = connection_cache_.erase(it);
    } else {
      ++it;
    }
  }
  rejected_cache_.erase(pod);
  auto labels = podLabels(pod);
  if (bypass_rejected_.Has(labels)) bypass_rejected_.Remove(&bypass_rejected_.Add(labels));
  setPodWithoutSidecar(pod, false);
  pods_.erase(pod);
}

void Metrics::setWatchedTargets(size_t n) { watched_targets_.Set(static_cast<double>(n)); }

void Metrics::setTrackedSockets(uint64_t n, uint64_t limit) {
  tracked_sockets_.Set(static_cast<double>(n));
  tracked_sockets_limit_.Set(static_cast<double>(limit));
}

void Metrics::setReady(bool ready) { ready_.Set(ready ? 1 : 0); }

void Metrics::syncKernel(const ProbeCounters& counters) {
  advance(events_lost_, kernel_seen_.ringbuf_lost, counters.ringbuf_lost);
  advance(connections_lost_, kernel_seen_.lost_active, counters.lost_active);
  advance(owner_insert_failed_, kernel_seen_.owner_insert_failed, counters.owner_insert_failed);
  advance(bpf_runs_skipped_, kernel_seen_.runs_skipped, counters.runs_skipped);
}

void Metrics::syncCorrelator(const Correlator::Stats& stats) {
  advance(correlator_evictions_.Add({{"table", "pending"}}), correlator_seen_.pending_evicted,
          stats.pending_evicted);
  advance(correlator_evictions_.Add({{"table", "followed"}}), correlator_seen_.followed_evicted,
          stats.followed_evicted);
  advance(events_dropped_.Add({{"reason", "duplicate"}}), correlator_seen_.duplicates,
          stats.duplicates);
  advance(orphan_accepts_, correlator_seen_.orphan_accepts, stats.orphan_accepts);
  advance(outcomes_lost_, correlator_seen_.outcomes_lost, stats.outcomes_lost);
  advance(remap_lookups_.Add({{"result", "joined"}}), correlator_seen_.remap_joined,
          stats.remap_joined);
  advance(remap_lookups_.Add({{"result", "unmatched"}}), correlator_seen_.remap_unmatched,
          stats.remap_unmatched);
  advance(remap_lookups_.Add({{"result", "error"}}), correlator_seen_.remap_errors,
          stats.remap_errors);
}

void Metrics::observeVerdictLatency(double seconds) { verdict_latency_.Observe(seconds); }

void Metrics::addEventsRead(uint64_t n) { events_read_.Increment(static_cast<double>(n)); }

void Metrics::addEventsDropped(const std::string& reason, uint64_t n) {
  events_dropped_.Add({{"reason", reason}}).Increment(static_cast<double>(n));
}

void Metrics::addRulesRead(bool ok) { rules_reads_.Add({{"result", ok ? "ok" : "error"}}).Increment(); }

void Metrics::enableKubernetes() {
  if (kubernetes_watch_up_ != nullptr) return;
  kubernetes_watch_up_ =
      &gauge("capturewatch_kubernetes_watch_up",
             "1 when the pod watch on the API server is connected and synced.", *registry_)
           .Add({});
  kubernetes_watch_restarts_ = &counter("capturewatch_kubernetes_watch_restarts_total",
                                        "Pod watches restarted (disconnects, 410 Gone).", *registry_)
                                    .Add({});
  kubernetes_errors_ =
      &counter("capturewatch_kubernetes_errors_total", "Kubernetes discovery errors, by kind.",
               *registry_);
}

void Metrics::setKubernetesWatchUp(bool up) {
  enableKubernetes();
  kubernetes_watch_up_->Set(up ? 1 : 0);
}

void Metrics::addKubernetesWatchRestart() {
  enableKubernetes();
  kubernetes_watch_restarts_->Increment();
}

void Metrics::addKubernetesError(const std::string& kind) {
  enableKubernetes();
  kubernetes_errors_->Add({{"kind", kind}}).Increment();
}

void Metrics::addFoundAtStart(uint64_t n) { found_at_start_.Increment(static_cast<double>(n)); }

void Metrics::addStartupScanError() { startup_scan_errors_.Increment(); }

void Metrics::addTargetGone() { targets_gone_.Increment(); }

}  // namespace cw
