// The agent: probe -> correlator -> reporter, on one thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "correlator.h"
#include "metrics.h"
#include "probe.h"
#include "reporter.h"
#include "targets.h"

namespace cw {

struct AgentOptions {
  ProbeOptions probe;
  uint64_t grace_ns = 200'000'000;
  std::chrono::milliseconds summary_interval{60'000};
  std::string metrics_address;  // empty: no HTTP server
};

class Agent {
 public:
  // Binds the metrics address, then loads and attaches the BPF programs.
  // Throws MetricsError or ProbeError with a message for the user.
  explicit Agent(const AgentOptions& options);

  void addTarget(const Target& target);
  void addProxyCgroup(uint64_t cgroup_id);

  // Runs until stop becomes true or the deadline passes. Then keeps
  // reading for one grace window so that connections already made get
  // their verdict, decides what is still pending, and logs a summary.
  void run(const std::atomic<bool>& stop,
           std::optional<std::chrono::steady_clock::time_point> deadline = std::nullopt);

  Reporter& reporter() { return reporter_; }
  Metrics& metrics() { return metrics_; }
  const Correlator& correlator() const { return correlator_; }
  size_t targetCount() const { return targets_.size(); }

 private:
  void onRecord(std::span<const uint8_t> raw);
  void pollOnce(int timeout_ms);
  void flushDecisions();
  void syncCounters();

  AgentOptions options_;
  Metrics metrics_;
  Reporter reporter_;
  Correlator correlator_;
  std::unique_ptr<Probe> probe_;
  std::vector<Target> targets_;
  std::vector<Decision> decisions_;
  uint64_t malformed_ = 0;
  uint64_t read_ = 0;
};

// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns().
uint64_t monotonicNowNs();

}  // namespace cw
