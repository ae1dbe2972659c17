#include "metrics.h"

namespace cw {
namespace {

template <typename Builder>
auto& build(Builder builder, const char* name, const char* help, prometheus::Registry& registry) {
  return builder.Name(name).Help(help).Register(registry);
}

void advance(prometheus::Counter& counter, uint64_t& seen, uint64_t now) {
  if (now > seen) counter.Increment(static_cast<double>(now - seen));
  seen = now;
}

}  // namespace

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      connections_(build(prometheus::BuildCounter(), "capturewatch_connections_total",
                         "Outbound TCP connections of watched pods, by verdict (captured, "
                         "bypassed, proxy, local) and, for bypassed, reason.",
                         *registry_)),
      bypass_rejected_(build(prometheus::BuildCounter(), "capturewatch_bypass_rejected_total",
                             "Bypassed connections the peer reset or closed before any reply "
                             "byte: the strict-mTLS rejection (503 connection termination).",
                             *registry_)),
      watched_targets_family_(build(prometheus::BuildGauge(), "capturewatch_watched_targets",
                                    "Network namespaces (pods) currently watched.", *registry_)),
      events_lost_family_(build(prometheus::BuildCounter(), "capturewatch_events_lost_total",
                                "Kernel events dropped because the ring buffer was full.",
                                *registry_)),
      events_read_family_(build(prometheus::BuildCounter(), "capturewatch_events_read_total",
                                "Kernel events read from the ring buffer.", *registry_)),
      events_malformed_family_(build(prometheus::BuildCounter(),
                                     "capturewatch_events_malformed_total",
                                     "Ring-buffer records rejected as malformed.", *registry_)),
      owner_insert_failed_family_(build(prometheus::BuildCounter(),
                                        "capturewatch_owner_insert_failed_total",
                                        "Sockets whose owner could not be recorded in the "
                                        "kernel map at connect().",
                                        *registry_)),
      correlator_evictions_family_(build(prometheus::BuildCounter(),
                                         "capturewatch_correlator_evictions_total",
                                         "Connections dropped from a full correlator table, "
                                         "by table (pending, followed).",
                                         *registry_)),
      orphan_accepts_family_(build(prometheus::BuildCounter(), "capturewatch_orphan_accepts_total",
                                   "Accepts on the redirect port that no observed app "
                                   "connection claimed within the grace window.",
                                   *registry_)),
      duplicate_events_family_(build(prometheus::BuildCounter(),
                                     "capturewatch_duplicate_events_total",
                                     "Events seen twice for the same socket and ignored.",
                                     *registry_)),
      outcomes_lost_family_(build(prometheus::BuildCounter(), "capturewatch_outcomes_lost_total",
                                  "Bypassed connections whose end was never seen (its close "
                                  "record was lost).",
                                  *registry_)),
      watched_targets_(watched_targets_family_.Add({})),
      events_lost_(events_lost_family_.Add({})),
      events_read_(events_read_family_.Add({})),
      events_malformed_(events_malformed_family_.Add({})),
      owner_insert_failed_(owner_insert_failed_family_.Add({})),
      pending_evicted_(correlator_evictions_family_.Add({{"table", "pending"}})),
      followed_evicted_(correlator_evictions_family_.Add({{"table", "followed"}})),
      orphan_accepts_(orphan_accepts_family_.Add({})),
      duplicate_events_(duplicate_events_family_.Add({})),
      outcomes_lost_(outcomes_lost_family_.Add({})) {
  build(prometheus::BuildGauge(), "capturewatch_build_info",
        "Build information; the value is always 1.", *registry_)
      .Add({{"version", CW_VERSION}})
      .Set(1);
}

void Metrics::serve(const std::string& address) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& e) {
    throw MetricsError("--metrics-address " + address + ": cannot listen: " + e.what());
  }
  exposer_->RegisterCollectable(registry_);
}

void Metrics::addConnection(const std::string& ns, const std::string& pod, Verdict verdict,
                            const std::string& reason) {
  auto key = std::make_tuple(ns, pod, verdict, reason);
  auto it = connection_cache_.find(key);
  if (it == connection_cache_.end()) {
    auto& counter = connections_.Add({{"namespace", ns},
                                      {"pod", pod},
                                      {"verdict", std::string(toString(verdict))},
                                      {"reason", reason}});
    it = connection_cache_.emplace(std::move(key), &counter).first;
  }
  it->second->Increment();
}

void Metrics::addBypassRejected(const std::string& ns, const std::string& pod) {
  bypass_rejected_.Add({{"namespace", ns}, {"pod", pod}}).Increment();
}

void Metrics::setWatchedTargets(size_t n) { watched_targets_.Set(static_cast<double>(n)); }

void Metrics::syncKernel(const ProbeCounters& counters) {
  advance(events_lost_, kernel_seen_.ringbuf_lost, counters.ringbuf_lost);
  advance(owner_insert_failed_, kernel_seen_.owner_insert_failed, counters.owner_insert_failed);
}

void Metrics::syncCorrelator(const Correlator::Stats& stats) {
  advance(pending_evicted_, correlator_seen_.pending_evicted, stats.pending_evicted);
  advance(followed_evicted_, correlator_seen_.followed_evicted, stats.followed_evicted);
  advance(orphan_accepts_, correlator_seen_.orphan_accepts, stats.orphan_accepts);
  advance(duplicate_events_, correlator_seen_.duplicates, stats.duplicates);
  advance(outcomes_lost_, correlator_seen_.outcomes_lost, stats.outcomes_lost);
}

void Metrics::addEventsRead(uint64_t n) { events_read_.Increment(static_cast<double>(n)); }

void Metrics::addEventsMalformed(uint64_t n) { events_malformed_.Increment(static_cast<double>(n)); }

void Metrics::removePod(const std::string& ns, const std::string& pod) {
  for (auto it = connection_cache_.begin(); it != connection_cache_.end();) {
    if (std::get<0>(it->first) == ns && std::get<1>(it->first) == pod) {
      connections_.Remove(it->second);
      it = connection_cache_.erase(it);
    } else {
      ++it;
    }
  }
  if (bypass_rejected_.Has({{"namespace", ns}, {"pod", pod}})) {
    bypass_rejected_.Remove(&bypass_rejected_.Add({{"namespace", ns}, {"pod", pod}}));
  }
}

}  // namespace cw
