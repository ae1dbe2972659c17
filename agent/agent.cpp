#include "agent.h"

#include <time.h>

#include <algorithm>

#include "logging.h"

namespace cw {

uint64_t monotonicNowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

Agent::Agent(const AgentOptions& options)
    : options_(options),
      reporter_(&metrics_),
      correlator_(Correlator::Config{options.grace_ns, 65536, 65536}) {
  if (!options_.metrics_address.empty()) metrics_.serve(options_.metrics_address);
  probe_ = Probe::open(options_.probe, [this](std::span<const uint8_t> raw) { onRecord(raw); });
  decisions_.reserve(1024);
}

void Agent::addTarget(const Target& target) {
  probe_->watchNetns(target.netns, target.id);
  reporter_.addTarget(target.netns, TargetMeta{target.name, target.namespace_});
  targets_.push_back(target);
  metrics_.setWatchedTargets(targets_.size());
  logging::info("watching", {{"pod", target.name},
                             {"netns", target.netns},
                             {"netns_path", target.netns_path},
                             {"redirect_port", options_.probe.redirect_port}});
}

void Agent::addProxyCgroup(uint64_t cgroup_id) { correlator_.addProxyCgroup(cgroup_id); }

void Agent::onRecord(std::span<const uint8_t> raw) {
  ++read_;
  auto ev = decodeEvent(raw);
  if (!ev) {
    ++malformed_;
    return;
  }
  correlator_.onEvent(*ev, decisions_);
}

void Agent::flushDecisions() {
  for (const Decision& d : decisions_) reporter_.report(d);
  decisions_.clear();
}

void Agent::pollOnce(int timeout_ms) {
  // "now" is read before draining: every event the kernel produced before
  // it is in the ring buffer by the time poll() has drained it.
  uint64_t now = monotonicNowNs();
  probe_->poll(timeout_ms);
  flushDecisions();
  correlator_.expire(now, decisions_);
  flushDecisions();
}

void Agent::syncCounters() {
  metrics_.syncKernel(probe_->counters());
  metrics_.syncCorrelator(correlator_.stats());
  metrics_.addEventsRead(read_);
  metrics_.addEventsMalformed(malformed_);
  read_ = 0;
  malformed_ = 0;
}

void Agent::run(const std::atomic<bool>& stop,
                std::optional<std::chrono::steady_clock::time_point> deadline) {
  using Clock = std::chrono::steady_clock;
  const int timeout_ms =
      static_cast<int>(std::clamp<uint64_t>(options_.grace_ns / 4'000'000, 10, 100));
  auto next_sync = Clock::now();
  auto next_summary = Clock::now() + options_.summary_interval;

  while (!stop.load() && (!deadline || Clock::now() < *deadline)) {
    pollOnce(timeout_ms);
    auto now = Clock::now();
    if (now >= next_sync) {
      syncCounters();
      next_sync = now + std::chrono::seconds(1);
    }
    if (now >= next_summary) {
      reporter_.logSummary();
      next_summary = now + options_.summary_interval;
    }
  }

  // Let connections already made reach their verdict: one grace window more.
  auto drain_until = Clock::now() + std::chrono::nanoseconds(options_.grace_ns) +
                     std::chrono::milliseconds(20);
  while (Clock::now() < drain_until) pollOnce(timeout_ms);
  syncCounters();
  reporter_.logSummary();
}

}  // namespace cw
