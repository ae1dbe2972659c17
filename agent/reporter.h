// Turns decisions into what engineers see: log lines (one per verdict at
// debug, the first of each capture gap at warn, repeats folded into counts,
// periodic per-pod summaries) and metrics. Keeps the per-pod tallies and the
// table of gaps that the lab's final report and the summaries print.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "correlator.h"
#include "logging.h"
#include "metrics.h"

namespace cw {

struct TargetMeta {
  std::string name;        // pod
  std::string namespace_;  // Kubernetes namespace, empty outside Kubernetes
};

struct PodTally {
  std::array<uint64_t, 4> by_verdict{};  // indexed by Verdict
  uint64_t rejected = 0;                 // bypassed and rejected by the peer
  uint64_t folded = 0;                   // bypass log lines folded since the last summary

  uint64_t count(Verdict v) const { return by_verdict[static_cast<size_t>(v)]; }
  // captured / (captured + bypassed); negative when there is nothing to rate.
  double captureRate() const;
};

// One capture gap: a (pod, destination, reason) seen bypassed.
struct Gap {
  std::string pod;
  std::string namespace_;
  std::string dst;
  std::string reason;
  uint64_t count = 0;
  std::map<std::string, uint64_t> outcomes;  // outcome name -> connections
  uint64_t first_seen_ns = 0;
  uint64_t last_seen_ns = 0;
  bool rejection_logged = false;  // the first rejection was logged at warn
};

class Reporter {
 public:
  static constexpr size_t kMaxGaps = 4096;

  explicit Reporter(Metrics* metrics);  // metrics may be null

  void addTarget(uint32_t netns, TargetMeta meta);
  void removeTarget(uint32_t netns);

  void report(const Decision& decision);

  // Logs one summary line per target and resets the folded counts.
  void logSummary();

  const std::map<std::string, PodTally>& tallies() const { return tallies_; }
  std::vector<Gap> gaps() const;  // most connections first
  uint64_t gapsDropped() const { return gaps_dropped_; }

 private:
  const TargetMeta& meta(uint32_t netns) const;
  Gap* gapFor(const TargetMeta& meta, const Connection& conn, const std::string& reason,
              bool& first);
  logging::Fields fields(const TargetMeta& meta, const Connection& conn,
                         const std::string& reason) const;

  Metrics* metrics_;
  std::unordered_map<uint32_t, TargetMeta> targets_;
  TargetMeta unknown_target_{"unknown", ""};
  std::map<std::string, PodTally> tallies_;  // key: namespace/pod
  std::map<std::string, Gap> gaps_;          // key: namespace/pod|dst|reason
  uint64_t gaps_dropped_ = 0;
};

}  // namespace cw
