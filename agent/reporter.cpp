#include "reporter.h"

#include <algorithm>

namespace cw {
namespace {

std::string podKey(const TargetMeta& meta) {
  return meta.namespace_.empty() ? meta.name : meta.namespace_ + "/" + meta.name;
}

// Until the rules explainer exists every gap's reason is "unknown".
std::string reasonOf(const Connection& conn) {
  return conn.verdict == Verdict::Bypassed ? "unknown" : "";
}

}  // namespace

double PodTally::captureRate() const {
  uint64_t captured = count(Verdict::Captured);
  uint64_t denominator = captured + count(Verdict::Bypassed);
  return denominator == 0 ? -1.0 : static_cast<double>(captured) / static_cast<double>(denominator);
}

Reporter::Reporter(Metrics* metrics) : metrics_(metrics) {}

void Reporter::addTarget(uint32_t netns, TargetMeta meta) {
  tallies_.try_emplace(podKey(meta));
  targets_[netns] = std::move(meta);
}

void Reporter::removeTarget(uint32_t netns) { targets_.erase(netns); }

const TargetMeta& Reporter::meta(uint32_t netns) const {
  auto it = targets_.find(netns);
  return it == targets_.end() ? unknown_target_ : it->second;
}

logging::Fields Reporter::fields(const TargetMeta& meta, const Connection& conn,
                                 const std::string& reason) const {
  logging::Fields f;
  f["verdict"] = std::string(toString(conn.verdict));
  if (!reason.empty()) f["reason"] = reason;
  f["netns"] = conn.netns;
  f["pod"] = meta.name;
  if (!meta.namespace_.empty()) f["namespace"] = meta.namespace_;
  if (conn.ownerKnown()) {
    f["pid"] = conn.pid;
    f["comm"] = std::string(conn.comm.data(), strnlen(conn.comm.data(), conn.comm.size()));
    f["uid"] = conn.uid;
    f["gid"] = conn.gid;
  }
  f["src"] = conn.src.str();
  f["dst"] = conn.dst.str();
  f["outcome"] = std::string(toString(conn.outcome));
  if (conn.decided_ns >= conn.established_ns) {
    f["decided_after_ms"] = (conn.decided_ns - conn.established_ns) / 1'000'000;
  }
  return f;
}

Gap* Reporter::gapFor(const TargetMeta& meta, const Connection& conn, const std::string& reason,
                      bool& first) {
  std::string key = podKey(meta) + "|" + conn.dst.str() + "|" + reason;
  auto it = gaps_.find(key);
  first = it == gaps_.end();
  if (first) {
    if (gaps_.size() >= kMaxGaps) {
      ++gaps_dropped_;
      return nullptr;
    }
    Gap gap{meta.name, meta.namespace_, conn.dst.str(), reason, 0, {}, conn.decided_ns, 0, false};
    it = gaps_.emplace(std::move(key), std::move(gap)).first;
  }
  return &it->second;
}

void Reporter::report(const Decision& decision) {
  const Connection& conn = decision.conn;
  const TargetMeta& m = meta(conn.netns);
  PodTally& tally = tallies_[podKey(m)];
  const std::string reason = reasonOf(conn);
  const bool rejected = conn.verdict == Verdict::Bypassed && isRejection(conn.outcome);

  if (decision.type == Decision::Type::Outcome) {
    // A bypassed connection reported open has ended.
    bool first = false;
    Gap* gap = gapFor(m, conn, reason, first);
    if (gap != nullptr) gap->outcomes[std::string(toString(conn.outcome))]++;
    if (rejected) {
      tally.rejected++;
      if (metrics_ != nullptr) metrics_->addBypassRejected(m.namespace_, m.name);
    }
    auto f = fields(m, conn, reason);
    if (rejected) {
      f["symptom"] = "peer rejected plaintext: strict mTLS reset (503 connection termination)";
    }
    bool warn = rejected && gap != nullptr && !gap->rejection_logged;
    if (warn) gap->rejection_logged = true;
    logging::write(warn ? spdlog::level::warn : spdlog::level::debug, "outcome", f);
    return;
  }

  tally.by_verdict[static_cast<size_t>(conn.verdict)]++;
  if (metrics_ != nullptr) metrics_->addConnection(m.namespace_, m.name, conn.verdict, reason);

  if (conn.verdict != Verdict::Bypassed) {
    if (logging::enabled(spdlog::level::debug)) logging::debug("verdict", fields(m, conn, reason));
    return;
  }

  bool first = false;
  Gap* gap = gapFor(m, conn, reason, first);
  if (gap != nullptr) {
    gap->count++;
    gap->last_seen_ns = conn.decided_ns;
    if (conn.outcome != Outcome::Open) gap->outcomes[std::string(toString(conn.outcome))]++;
  }
  if (rejected) {
    tally.rejected++;
    if (metrics_ != nullptr) metrics_->addBypassRejected(m.namespace_, m.name);
  }
  auto f = fields(m, conn, reason);
  if (rejected) {
    f["symptom"] = "peer rejected plaintext: strict mTLS reset (503 connection termination)";
  }
  if (first) {
    if (rejected && gap != nullptr) gap->rejection_logged = true;
    logging::warn("verdict", f);
  } else {
    tally.folded++;
    logging::debug("verdict", f);
  }
}

void Reporter::logSummary() {
  for (auto& [key, tally] : tallies_) {
    logging::Fields f;
    auto slash = key.find('/');
    if (slash != std::string::npos) {
      f["namespace"] = key.substr(0, slash);
      f["pod"] = key.substr(slash + 1);
    } else {
      f["pod"] = key;
    }
    for (Verdict v : {Verdict::Captured, Verdict::Bypassed, Verdict::Proxy, Verdict::Local}) {
      f[std::string(toString(v))] = tally.count(v);
    }
    double rate = tally.captureRate();
    if (rate >= 0) {
      f["capture_rate"] = rate;
    } else {
      f["capture_rate"] = nullptr;
    }
    f["rejected"] = tally.rejected;
    f["bypass_repeats_folded"] = tally.folded;
    tally.folded = 0;
    logging::write(tally.count(Verdict::Bypassed) > 0 ? spdlog::level::warn : spdlog::level::info,
                   "summary", f);
  }
}

std::vector<Gap> Reporter::gaps() const {
  std::vector<Gap> out;
  out.reserve(gaps_.size());
  for (const auto& [key, gap] : gaps_) out.push_back(gap);
  std::stable_sort(out.begin(), out.end(),
                   [](const Gap& a, const Gap& b) { return a.count > b.count; });
  return out;
}

}  // namespace cw
