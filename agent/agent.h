// The agent: probe -> correlator -> reporter, on one thread. Targets can be
// added and removed while it runs (from the thread that calls run(), or
// through post() from another thread).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "correlator.h"
#include "http_server.h"
#include "metrics.h"
#include "probe.h"
#include "reporter.h"
#include "startup_scan.h"
#include "targets.h"

namespace cw {

struct AgentOptions {
  ProbeOptions probe;
  uint64_t grace_ns = 200'000'000;
  std::chrono::milliseconds summary_interval{60'000};
  std::string metrics_address;  // empty: no HTTP server
  size_t gaps_limit = 200;      // entries served by /gaps
  // Classify the connections already open in a namespace when it starts to
  // be watched (agent start or restart, a new pod): sock_diag, conntrack, and
  // the owners from <proc_root>/PID/fd.
  bool startup_scan = true;
  std::string proc_root = "/proc";
};

class Agent {
 public:
  // Explains a bypassed connection (reason, deciding rule, remedy) at now_ns
  // (CLOCK_MONOTONIC: the time of the batch of verdicts it belongs to, read
  // once for the batch). Returns a reference valid until the next call
  // (CaptureExplainer::explain).
  using Explainer = std::function<const Why&(const Connection&, uint64_t now_ns)>;

  // Binds the metrics address, then loads and attaches the BPF programs.
  // Throws HttpError or ProbeError with a message for the user.
  explicit Agent(const AgentOptions& options);
  ~Agent();

  void addTarget(const Target& target, const PodLabels& labels);
  void removeTarget(uint32_t netns);
  void addProxyCgroup(uint64_t cgroup_id);
  void removeProxyCgroup(uint64_t cgroup_id);
  void setExplainer(Explainer explainer) { explainer_ = std::move(explainer); }
  // Ready (for /readyz) once targets are synced; static targets are at once.
  void setTargetsSynced(bool synced) { targets_synced_ = synced; }

  // Called on the agent's thread when a target is added (true) or removed.
  using TargetObserver = std::function<void(const Target&, bool added)>;
  void observeTargets(TargetObserver fn) { target_observers_.push_back(std::move(fn)); }

  // Runs fn on the agent's thread about once a second.
  void addPeriodic(std::function<void()> fn) { periodic_.push_back(std::move(fn)); }

  // Runs fn on the agent's thread at the next loop iteration.
  void post(std::function<void()> fn);

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
  // The correlator's remap lookup: the conntrack entry of an accept in a
  // watched netns, read through that netns's ConntrackReader.
  RemapAnswer lookUpRemap(uint32_t netns, const Endpoint& accept_local,
                          const Endpoint& accept_peer);
  void scanTarget(const Target& target);
  // Returns the number of ring-buffer records read.
  int pollOnce(int timeout_ms);
  // Reads the kernel's lost-accept counter; a change is noted in the correlator.
  void noteLostAccepts();
  void flushDecisions();
  // final: at exit, when losses not yet logged are logged whatever the
  // time since the last such line.
  void syncCounters(bool final = false);
  void logLosses(const ProbeCounters& kernel, bool final);
  void publishGaps();
  std::string notReady() const;
  void runPosted();

  AgentOptions options_;
  Metrics metrics_;
  Reporter reporter_;
  Correlator correlator_;
  Explainer explainer_;
  std::vector<std::function<void()>> periodic_;
  std::vector<TargetObserver> target_observers_;
  std::unique_ptr<HttpServer> http_;
  std::unique_ptr<Probe> probe_;
  std::vector<Target> targets_;
  // Decisions waiting to be reported: at most a batch (Correlator::setSpill).
  static constexpr size_t kDecisionBatch = 1024;
  std::vector<Decision> decisions_;
  ConnEvent event_;  // each record is decoded into this one
  // One per watched netns that needed a remap lookup; dropped with its target.
  std::unordered_map<uint32_t, std::unique_ptr<ConntrackReader>> conntrack_readers_;
  std::chrono::steady_clock::time_point last_remap_warning_{};
  std::chrono::steady_clock::time_point next_tracked_read_{};
  std::chrono::steady_clock::time_point last_tracked_warning_{};
  // The kernel's loss counters as of the last "records lost" line, and when
  // it was written.
  ProbeCounters losses_logged_{};
  std::chrono::steady_clock::time_point last_loss_warning_{};
  uint64_t malformed_ = 0;
  uint64_t read_ = 0;
  uint64_t lost_accepts_seen_ = 0;
  // While a startup scan drains the ring buffer: the (src, dst) of the app
  // connections whose events arrived for that netns, so that a connection
  // both seen by the scan and by its events is reported once.
  std::set<std::pair<Endpoint, Endpoint>>* startup_seen_ = nullptr;
  uint32_t startup_netns_ = 0;
  int64_t realtime_offset_ns_ = 0;
  std::atomic<bool> attached_{false};
  std::atomic<bool> targets_synced_{true};
  mutable std::mutex shared_mu_;  // guards gaps_json_ and posted_
  std::string gaps_json_ = R"({"gaps":[],"total_gaps":0,"gaps_dropped":0})";
  std::vector<std::function<void()>> posted_;
};

}  // namespace cw
