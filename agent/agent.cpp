#include "agent.h"

#include <malloc.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <thread>

#include "logging.h"
#include "startup_scan.h"

namespace cw {
namespace {

int64_t realtimeOffsetNs() {
  timespec rt{}, mono{};
  clock_gettime(CLOCK_REALTIME, &rt);
  clock_gettime(CLOCK_MONOTONIC, &mono);
  auto ns = [](const timespec& ts) {
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + static_cast<int64_t>(ts.tv_nsec);
  };
  return ns(rt) - ns(mono);
}

}  // namespace

Agent::Agent(const AgentOptions& options)
    : options_(options),
      reporter_(&metrics_),
      correlator_(Correlator::Config{options.grace_ns, 65536, 65536}),
      realtime_offset_ns_(realtimeOffsetNs()) {
  if (!options_.metrics_address.empty()) {
    http_ = std::make_unique<HttpServer>(
        options_.metrics_address,
        HttpServer::Sources{metrics_.registry(), [this] { return notReady(); },
                            [this] {
                              std::lock_guard lock(shared_mu_);
                              return gaps_json_;
                            }});
  }
  correlator_.setRemapLookup([this](uint32_t netns, const Endpoint& local, const Endpoint& peer) {
    return lookUpRemap(netns, local, peer);
  });
  // Decisions are reported a batch at a time while a read or an expiry
  // goes on: a backlog read or an expiry after a stall held them all
  // (65,536 verdicts, 7.5 MiB, in session 18's lossy burst).
  correlator_.setSpill(kDecisionBatch, [this](std::vector<Decision>&) { flushDecisions(); });
  decisions_.reserve(kDecisionBatch);
  probe_ = Probe::open(options_.probe, [this](std::span<const uint8_t> raw) { onRecord(raw); });
  attached_ = true;
}

Agent::~Agent() {
  // Stop serving before the probe and metrics go away.
  http_.reset();
}

std::string Agent::notReady() const {
  if (!attached_) return "BPF programs not attached";
  if (!targets_synced_) return "targets not synced";
  return "";
}

void Agent::addTarget(const Target& target, const PodLabels& labels) {
  probe_->watchNetns(target.netns, target.id);
  reporter_.addTarget(target.netns, labels);
  std::erase_if(targets_, [&](const Target& t) { return t.netns == target.netns; });
  targets_.push_back(target);
  metrics_.setWatchedTargets(targets_.size());
  logging::Fields f;
  if (!labels.namespace_.empty()) f["namespace"] = labels.namespace_;
  f["pod"] = labels.pod;
  f["netns"] = target.netns;
  f["netns_path"] = target.netns_path;
  f["redirect_port"] = options_.probe.redirect_port;
  logging::info("watching", f);
  for (auto& observe : target_observers_) observe(target, true);
  if (options_.startup_scan) {
    scanTarget(target);
    // The scan's lists (every socket and conntrack entry of the netns) are
    // freed now: give their pages back, so that what stays resident after
    // the scan of a busy pod is what the agent keeps, not what it read.
    ::malloc_trim(0);
  }
}

void Agent::scanTarget(const Target& target) {
  // The netns is watched already: a connection established from here on has
  // its events in the ring buffer. The scan sees what was open before, and
  // possibly some of the new ones, which the events read meanwhile tell
  // apart. The scan takes a while on a busy node (a conntrack table of
  // 100,000s of entries, every process's fds): the ring is read between its
  // steps, so that the other pods' events do not overflow it meanwhile.
  const PodLabels& pod = reporter_.pod(target.netns);
  logging::Fields f;
  if (!pod.namespace_.empty()) f["namespace"] = pod.namespace_;
  f["pod"] = pod.pod;
  f["netns"] = target.netns;
  std::vector<Connection> found;
  size_t sockets_seen = 0;
  std::set<std::pair<Endpoint, Endpoint>> seen;
  struct SeenWindow {
    Agent& agent;
    SeenWindow(Agent& a, std::set<std::pair<Endpoint, Endpoint>>* s, uint32_t netns) : agent(a) {
      agent.startup_seen_ = s;
      agent.startup_netns_ = netns;
    }
    ~SeenWindow() { agent.startup_seen_ = nullptr; }
  } window(*this, &seen, target.netns);
  // Read the rings until they are empty, one bounded read after another (at
  // most 256: should the kernel write as fast as the agent reads, the scan
  // goes on with what it has read).
  auto readRing = [this] {
    for (int i = 0; i < 256; ++i) {
      probe_->drain();
      flushDecisions();
      if (!probe_->behind()) break;
    }
  };
  try {
    const auto sockets = scanTcpSockets(target.netns_path);
    sockets_seen = sockets.size();
    readRing();
    std::vector<ConntrackEntry> conntrack;
    try {
      conntrack = dumpConntrack(target.netns_path, conntrackFilterFor(sockets));
    } catch (const std::exception& e) {
      // Without conntrack, the sidecar's accepted sockets still show which
      // connections it holds.
      logging::Fields w = f;
      w["error"] = e.what();
      logging::warn("startup scan: conntrack unreadable, using sockets only", w);
    }
    readRing();
    std::set<uint64_t> inodes;
    for (const auto& s : sockets) {
      if (s.state != kTcpListen && s.inode != 0) inodes.insert(s.inode);
    }
    const Owners owners = socketOwners(options_.proc_root, inodes);
    readRing();
    ClassifyConfig config;
    config.redirect_port = options_.probe.redirect_port;
    config.proxy_cgroups.insert(correlator_.proxyCgroups().begin(),
                                correlator_.proxyCgroups().end());
    config.netns = target.netns;
    found = classifyOpenConnections(sockets, conntrack, owners, config);
  } catch (const std::exception& e) {
    metrics_.addStartupScanError();
    f["netns_path"] = target.netns_path;
    f["error"] = e.what();
    logging::warn("startup scan failed: connections already open are not reported", f);
    return;
  }

  // Every record stamped before the sockets were listed is read once they
  // are settled.
  std::this_thread::sleep_for(std::chrono::nanoseconds(Probe::kSettleNs));
  readRing();

  const uint64_t now = monotonicNowNs();
  std::array<uint64_t, std::size(kAllVerdicts)> by_verdict{};
  uint64_t reported = 0;
  for (Connection& c : found) {
    // Still connecting: its handshake's end arrives as an event.
    if ((c.flags & kScanFlagConnecting) != 0) continue;
    if (seen.contains({c.src, c.dst})) continue;
    c.decided_ns = now;
    decisions_.push_back(Decision{Decision::Type::Verdict, c});
    by_verdict[static_cast<size_t>(c.verdict)]++;
    ++reported;
    if (decisions_.size() >= kDecisionBatch) flushDecisions();
  }
  flushDecisions();
  metrics_.addFoundAtStart(reported);
  f["sockets"] = sockets_seen;
  f["found_open"] = reported;
  for (Verdict v : kAllVerdicts) {
    f[std::string(toString(v))] = by_verdict[static_cast<size_t>(v)];
  }
  logging::info("startup scan", f);
}

void Agent::removeTarget(uint32_t netns) {
  for (const auto& t : targets_) {
    if (t.netns != netns) continue;
    for (auto& observe : target_observers_) observe(t, false);
    break;
  }
  probe_->unwatchNetns(netns);
  correlator_.forgetNetns(netns);
  conntrack_readers_.erase(netns);
  metrics_.removePod(reporter_.pod(netns));
  reporter_.removeTarget(netns);
  std::erase_if(targets_, [&](const Target& t) { return t.netns == netns; });
  metrics_.setWatchedTargets(targets_.size());
}

void Agent::addProxyCgroup(uint64_t cgroup_id) {
  correlator_.addProxyCgroup(cgroup_id);
  if (!probe_->addProxyCgroup(cgroup_id)) {
    const int err = errno;
    logging::Fields f;
    f["cgroup_id"] = cgroup_id;
    f["error"] = std::string(strerror(err));
    logging::warn("sidecar cgroup not added to the kernel's proxy map: its sockets' close records "
                  "are still sent (verdicts are not affected)",
                  f);
  }
}

void Agent::removeProxyCgroup(uint64_t cgroup_id) {
  probe_->removeProxyCgroup(cgroup_id);
  correlator_.removeProxyCgroup(cgroup_id);
}

void Agent::post(std::function<void()> fn) {
  std::lock_guard lock(shared_mu_);
  posted_.push_back(std::move(fn));
}

void Agent::runPosted() {
  std::vector<std::function<void()>> work;
  {
    std::lock_guard lock(shared_mu_);
    work.swap(posted_);
  }
  for (auto& fn : work) fn();
}

void Agent::onRecord(std::span<const uint8_t> raw) {
  ++read_;
  if (!decodeEvent(raw, event_)) {
    ++malformed_;
    return;
  }
  const ConnEvent& ev = event_;
  if (startup_seen_ != nullptr && ev.netns == startup_netns_ &&
      (ev.kind == EventKind::ActiveEstablished || ev.kind == EventKind::ActiveFailed)) {
    startup_seen_->insert({ev.src, ev.dst});
  }
  correlator_.onEvent(ev, decisions_);
}

RemapAnswer Agent::lookUpRemap(uint32_t netns, const Endpoint& accept_local,
                               const Endpoint& accept_peer) {
  const auto target = std::find_if(targets_.begin(), targets_.end(),
                                   [&](const Target& t) { return t.netns == netns; });
  if (target == targets_.end()) return RemapAnswer{};  // no longer watched
  try {
    auto& reader = conntrack_readers_[netns];
    if (!reader) reader = std::make_unique<ConntrackReader>(target->netns_path);
    const auto entry = reader->byReply(accept_local, accept_peer);
    if (logging::enabled(spdlog::level::debug)) {
      logging::Fields f;
      f["pod"] = target->name;
      f["accept"] = accept_local.str() + " <- " + accept_peer.str();
      f["original"] = entry ? entry->orig_src.str() + " -> " + entry->orig_dst.str() : "none";
      logging::debug("conntrack lookup of an unclaimed sidecar accept", f);
    }
    if (!entry) return RemapAnswer{};
    return RemapAnswer{RemapAnswer::Status::kFound, entry->orig_src, entry->orig_dst};
  } catch (const std::exception& e) {
    conntrack_readers_.erase(netns);  // opened again at the next lookup
    // Counted each time (capturewatch_remap_lookups_total{result="error"});
    // logged at warn at most once a minute.
    const auto now = std::chrono::steady_clock::now();
    const bool loud = now - last_remap_warning_ >= std::chrono::minutes(1);
    if (loud) last_remap_warning_ = now;
    logging::Fields f;
    f["pod"] = target->name;
    f["netns"] = target->netns_path;
    f["accept_peer"] = accept_peer.str();
    f["error"] = e.what();
    logging::write(loud ? spdlog::level::warn : spdlog::level::debug,
                   "conntrack lookup of an unclaimed sidecar accept failed: if conntrack had "
                   "remapped its app's source port, that connection is reported bypassed",
                   f);
    return RemapAnswer{RemapAnswer::Status::kError, {}, {}};
  }
}

void Agent::flushDecisions() {
  if (decisions_.empty()) return;
  const uint64_t now = monotonicNowNs();
  for (const Decision& d : decisions_) {
    if (d.type == Decision::Type::Verdict && now >= d.conn.established_ns &&
        (d.conn.flags & kScanFlagFoundAtStart) == 0) {
      metrics_.observeVerdictLatency(static_cast<double>(now - d.conn.established_ns) / 1e9);
    }
    if (d.conn.verdict == Verdict::Bypassed && explainer_) {
      reporter_.report(d, explainer_(d.conn, now));
    } else {
      reporter_.report(d);
    }
  }
  decisions_.clear();
}

int Agent::pollOnce(int timeout_ms) {
  // Wait for records (or the timeout), then read every ring: the probe has
  // then handed out, in time order, every record stamped before its
  // settled time, which is the "now" up to which expire() decides. (A "now"
  // read before a wait that timed out was up to timeout_ms stale, which
  // delayed bypassed verdicts past grace + 50 ms.)
  //
  // Lost accepts are noted after the wait and before the read: the read can
  // decide connections (at the correlator's bound, see addPending), and so
  // can the expire() after it, and an accept lost before the read began may
  // be theirs. One lost during the read would have been stamped after every
  // record the read hands out, so after the end of the grace window of every
  // connection decided now: it is noted before the next read.
  probe_->wait(timeout_ms);
  noteLostAccepts();
  const int n = probe_->drain();
  const uint64_t now = probe_->settledNs();
  flushDecisions();
  correlator_.expire(now, decisions_);
  flushDecisions();
  return n;
}

void Agent::noteLostAccepts() {
  if (const uint64_t lost = probe_->lostAccepts(); lost != lost_accepts_seen_) {
    // Accepts were lost: connections waiting for theirs become unknown.
    lost_accepts_seen_ = lost;
    correlator_.noteLostAccepts(monotonicNowNs());
  }
}

void Agent::logLosses(const ProbeCounters& kernel, bool final) {
  // Counted in the metrics as they happen; logged too, so that whoever
  // tails the logs sees that verdicts are missing and why: the first loss
  // at once, later ones at most once a minute and at exit, each line with
  // what was lost since the one before.
  const uint64_t events = kernel.ringbuf_lost - losses_logged_.ringbuf_lost;
  const uint64_t untracked = kernel.owner_insert_failed - losses_logged_.owner_insert_failed;
  const uint64_t connections = kernel.lost_active - losses_logged_.lost_active;
  if (events == 0 && untracked == 0 && connections == 0) return;
  const auto now = std::chrono::steady_clock::now();
  if (!final && last_loss_warning_ != std::chrono::steady_clock::time_point{} &&
      now - last_loss_warning_ < std::chrono::minutes(1)) {
    return;
  }
  last_loss_warning_ = now;
  logging::Fields f;
  f["events_lost"] = events;
  f["connections_lost"] = connections;
  f["accepts_lost"] = kernel.lost_passive - losses_logged_.lost_passive;
  f["sockets_not_tracked"] = untracked;
  std::string why;
  if (events > 0) {
    why =
        "the kernel's ring buffers were full: a burst larger than --ring-buffer-kb holds, or the "
        "agent was not scheduled in time (give it more CPU); a connection whose own record was "
        "lost has no verdict, one whose accept was lost is unknown";
  }
  if (untracked > 0) {
    if (!why.empty()) why += "; ";
    why +=
        "sockets found both of their owner-table buckets full (--max-tracked-sockets): "
        "their connections have no verdict";
  }
  if (why.empty()) {
    why =
        "an app socket was bound to the redirect port before its connect(): it is not tracked and "
        "its connection has no verdict";
  }
  f["why"] = why;
  losses_logged_ = kernel;
  logging::warn("records lost in the kernel", f);
}

void Agent::syncCounters(bool final) {
  const ProbeCounters kernel = probe_->counters();
  metrics_.syncKernel(kernel);
  logLosses(kernel, final);
  // The owner table's keys, counted in its memory every 10 s (0.4 ms with
  // the default bound, 3.5 ms at a million). If it cannot be mapped, the
  // gauges keep their last values, and that is logged at warn at most once
  // a minute.
  if (const auto now = std::chrono::steady_clock::now(); now >= next_tracked_read_) {
    next_tracked_read_ = now + std::chrono::seconds(10);
    if (const int64_t n = probe_->trackedSockets(); n >= 0) {
      metrics_.setTrackedSockets(static_cast<uint64_t>(n), options_.probe.max_tracked_sockets);
    } else if (now - last_tracked_warning_ >= std::chrono::minutes(1)) {
      last_tracked_warning_ = now;
      logging::Fields f;
      f["error"] = std::strerror(errno);
      logging::warn(
          "cannot map the kernel's owner table to count its keys: "
          "capturewatch_tracked_sockets is not updated",
          f);
    }
  }
  metrics_.syncCorrelator(correlator_.stats());
  metrics_.addEventsRead(read_);
  if (malformed_ > 0) metrics_.addEventsDropped("malformed", malformed_);
  metrics_.setReady(notReady().empty());
  read_ = 0;
  malformed_ = 0;
}

void Agent::publishGaps() {
  if (!http_) return;
  // Decisions run on CLOCK_MONOTONIC, which never jumps; only the wall-clock
  // times shown in /gaps use CLOCK_REALTIME, re-read here so that a clock
  // step (NTP, an operator) is followed within a second.
  realtime_offset_ns_ = realtimeOffsetNs();
  std::string json = reporter_.gapsJson(options_.gaps_limit, realtime_offset_ns_);
  std::lock_guard lock(shared_mu_);
  gaps_json_ = std::move(json);
}

void Agent::run(const std::atomic<bool>& stop,
                std::optional<std::chrono::steady_clock::time_point> deadline) {
  using Clock = std::chrono::steady_clock;
  const int timeout_ms =
      static_cast<int>(std::clamp<uint64_t>(options_.grace_ns / 4'000'000, 10, 100));
  auto next_sync = Clock::now();
  auto next_summary = Clock::now() + options_.summary_interval;

  // Batched reads: while records keep coming, wait a little before the next
  // read instead of waking up for (nearly) every record. The kernel only
  // wakes a reader that has caught up, so under load this turns one wakeup
  // per record into one per batch; it adds at most `batch` to a verdict's
  // latency. 20 ms with the default 200 ms grace window: on a saturated
  // two-core node, waking every 5 ms left the storm's CPUs idle ~8% of the
  // time (scheduler churn), 20 ms 1.4% (bench, README Performance).
  const auto batch = std::chrono::microseconds(std::min<uint64_t>(options_.grace_ns / 10'000, 20'000));
  // Except in a burst: a read that returned as many records as an eighth
  // of the ring holds of its largest (the others are smaller), or left
  // records in a ring (its share of the read budget taken), is followed by
  // the next at once, so a burst (a pod opening 100,000 connections at
  // once) is read as it comes instead of overflowing the ring while the
  // agent waits.
  const int burst_records =
      static_cast<int>(std::max<uint64_t>(64, options_.probe.ring_buffer_bytes / sizeof(cw_event) / 8));

  while (!stop.load() && (!deadline || Clock::now() < *deadline)) {
    runPosted();
    // Wake up no later than the oldest pending connection's grace window
    // ends (and the records stamped before its end are settled), so that
    // its bypassed verdict is not late by up to timeout_ms.
    int wait_ms = timeout_ms;
    if (uint64_t deadline_ns = correlator_.nextDeadline(); deadline_ns != 0) {
      deadline_ns += Probe::kSettleNs;
      const uint64_t now_ns = monotonicNowNs();
      const uint64_t left_ms = deadline_ns > now_ns ? (deadline_ns - now_ns + 999'999) / 1'000'000 : 0;
      wait_ms = static_cast<int>(std::min<uint64_t>(left_ms, static_cast<uint64_t>(timeout_ms)));
    }
    if (const int n = pollOnce(wait_ms);
        n > 0 && n < burst_records && !probe_->behind() && batch.count() > 0) {
      std::this_thread::sleep_for(batch);
    }
    auto now = Clock::now();
    if (now >= next_sync) {
      for (auto& fn : periodic_) fn();
      syncCounters();
      publishGaps();
      next_sync = now + std::chrono::seconds(1);
    }
    if (now >= next_summary) {
      reporter_.logSummary();
      next_summary = now + options_.summary_interval;
    }
  }

  // Let connections already made reach their verdict: one grace window more.
  auto drain_until = Clock::now() + std::chrono::nanoseconds(options_.grace_ns + Probe::kSettleNs) +
                     std::chrono::milliseconds(20);
  while (Clock::now() < drain_until) pollOnce(timeout_ms);
  probe_->flush();
  flushDecisions();
  syncCounters(true);
  publishGaps();
  reporter_.logSummary();
}

}  // namespace cw
