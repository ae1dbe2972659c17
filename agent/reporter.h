// Turns decisions into what engineers see: log lines (one per verdict at
// debug, the first of each capture gap at warn, repeats folded into counts,
// periodic per-pod summaries), metrics, and the table of recent gaps that
// /gaps and the lab's final report show.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include <absl/container/flat_hash_map.h>

#include "correlator.h"
#include "logging.h"
#include "metrics.h"

namespace cw {

// Why a bypassed connection escaped capture (from the rules explainer).
struct Why {
  std::string reason = "unknown";
  std::string rule;    // the deciding rule in the rules' own syntax
  std::string remedy;  // one line an engineer can act on
};

struct PodTally {
  std::array<uint64_t, std::size(kAllVerdicts)> by_verdict{};  // indexed by Verdict
  uint64_t rejected = 0;                 // bypassed and rejected by the peer
  uint64_t folded = 0;                   // bypass log lines folded since the last summary
  bool unknown_logged = false;           // the pod's first unknown verdict was logged at warn

  uint64_t count(Verdict v) const { return by_verdict[static_cast<size_t>(v)]; }
  // captured / (captured + bypassed); negative when there is nothing to rate.
  double captureRate() const;
};

// One capture gap: a (pod, destination, reason) seen bypassed.
struct Gap {
  PodLabels pod;
  std::string dst;
  Why why;
  uint64_t count = 0;
  std::map<std::string, uint64_t, std::less<>> outcomes;  // outcome name -> connections
  uint64_t first_seen_ns = 0;                // CLOCK_MONOTONIC
  uint64_t last_seen_ns = 0;
  bool rejection_logged = false;  // the first rejection was logged at warn
};

class Reporter {
 public:
  static constexpr size_t kMaxGaps = 4096;

  explicit Reporter(Metrics* metrics);  // metrics may be null

  void addTarget(uint32_t netns, PodLabels pod);
  void removeTarget(uint32_t netns);
  const PodLabels& pod(uint32_t netns) const;

  // why: for bypassed connections (verdict or outcome); ignored otherwise.
  void report(const Decision& decision, const Why& why = Why{});

  // Logs one summary line per pod and resets the folded counts.
  void logSummary();

  const std::map<PodLabels, PodTally>& tallies() const { return tallies_; }
  // Most recently seen first, at most limit entries.
  std::vector<Gap> gaps(size_t limit = kMaxGaps) const;
  // The /gaps document; realtime_offset_ns converts CLOCK_MONOTONIC to wall time.
  std::string gapsJson(size_t limit, int64_t realtime_offset_ns) const;
  uint64_t gapsDropped() const { return gaps_dropped_; }

 private:
  Gap* gapFor(const PodLabels& pod, const Connection& conn, const Why& why, bool& first);
  logging::Fields fields(const PodLabels& pod, const Connection& conn, const Why* why) const;

  Metrics* metrics_;
  std::unordered_map<uint32_t, PodLabels> targets_;
  PodLabels unknown_{"", "unknown", ""};
  std::map<PodLabels, PodTally> tallies_;
  std::map<std::string, Gap> gaps_;  // key: namespace/pod|dst|reason
  uint64_t gaps_dropped_ = 0;
  // gaps_ by (netns, destination), then reason: a repeated bypass finds its
  // gap without formatting the string key. A cache of gaps_, cleared when
  // the targets change (a netns could then be another pod's).
  struct GapDst {
    uint32_t netns;
    Endpoint dst;
    friend bool operator==(const GapDst&, const GapDst&) = default;
  };
  struct GapDstHash {
    size_t operator()(const GapDst& k) const;
  };
  absl::flat_hash_map<GapDst, std::vector<std::pair<std::string, Gap*>>, GapDstHash> gap_index_;
  // What a verdict of a watched netns needs, found once: its pod, its tally
  // and its counters (bypassed ones by reason, found as they come, and the
  // rejection counter). report() would otherwise look them up by the pod's
  // labels for every verdict, comparing strings. Cleared when the targets
  // change, like gap_index_.
  struct TargetHot {
    const PodLabels* pod = nullptr;
    PodTally* tally = nullptr;
    std::array<prometheus::Counter*, std::size(kAllVerdicts)> counters{};  // but bypassed
    std::vector<std::pair<std::string, prometheus::Counter*>> bypassed;    // by reason (a few)
    prometheus::Counter* rejected = nullptr;                               // once needed
  };
  prometheus::Counter& bypassedCounter(TargetHot& target, const std::string& reason);
  TargetHot& hot(uint32_t netns);
  absl::flat_hash_map<uint32_t, TargetHot> hot_;
};

}  // namespace cw
