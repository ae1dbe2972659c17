#include "reporter.h"

#include <algorithm>
#include <cstring>
#include <ctime>
#include <tuple>

#include <absl/hash/hash.h>

#include "startup_scan.h"

namespace cw {

constexpr const char* kUnknownWhy =
    "kernel events were lost (ring buffer full, see capturewatch_events_lost_total) while "
    "this connection waited for the sidecar's accept: whether it was captured cannot be told; "
    "raise --ring-buffer-kb";

namespace {

constexpr const char* kRejectionSymptom =
    "peer rejected plaintext: strict mTLS reset (503 connection termination)";

std::string isoTime(int64_t realtime_ns) {
  time_t secs = static_cast<time_t>(realtime_ns / 1'000'000'000);
  struct tm tm {};
  gmtime_r(&secs, &tm);
  char buf[40];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[48];
  std::snprintf(out, sizeof out, "%s.%03dZ", buf,
                static_cast<int>((realtime_ns / 1'000'000) % 1000));
  return out;
}

void addPodFields(logging::Fields& f, const PodLabels& pod) {
  f["pod"] = pod.pod;
  if (!pod.namespace_.empty()) f["namespace"] = pod.namespace_;
  if (!pod.workload.empty()) f["workload"] = pod.workload;
}

}  // namespace

double PodTally::captureRate() const {
  uint64_t captured = count(Verdict::Captured);
  uint64_t denominator = captured + count(Verdict::Bypassed);
  return denominator == 0 ? -1.0 : static_cast<double>(captured) / static_cast<double>(denominator);
}

Reporter::Reporter(Metrics* metrics) : metrics_(metrics) {}

void Reporter::addTarget(uint32_t netns, PodLabels pod) {
  gap_index_.clear();
  hot_.clear();
  tallies_.try_emplace(pod);
  targets_[netns] = std::move(pod);
}

void Reporter::removeTarget(uint32_t netns) {
  auto it = targets_.find(netns);
  if (it == targets_.end()) return;
  gap_index_.clear();
  hot_.clear();
  tallies_.erase(it->second);
  targets_.erase(it);
}

const PodLabels& Reporter::pod(uint32_t netns) const {
  auto it = targets_.find(netns);
  return it == targets_.end() ? unknown_ : it->second;
}

logging::Fields Reporter::fields(const PodLabels& pod, const Connection& conn,
                                 const Why* why) const {
  logging::Fields f;
  f["verdict"] = std::string(toString(conn.verdict));
  if (why != nullptr) f["reason"] = why->reason;
  f["netns"] = conn.netns;
  addPodFields(f, pod);
  if (conn.ownerKnown()) {
    f["pid"] = conn.pid;
    f["comm"] = std::string(conn.comm.data(), strnlen(conn.comm.data(), conn.comm.size()));
    f["uid"] = conn.uid;
    f["gid"] = conn.gid;
  }
  f["src"] = conn.src.str();
  f["dst"] = conn.dst.str();
  f["outcome"] = std::string(toString(conn.outcome));
  if ((conn.flags & kScanFlagFoundAtStart) != 0) {
    // Open before the namespace was watched: no establishment time is known.
    f["found_at_start"] = true;
  } else if (conn.decided_ns >= conn.established_ns) {
    f["decided_after_ms"] = (conn.decided_ns - conn.established_ns) / 1'000'000;
  }
  if (why != nullptr) {
    if (!why->rule.empty()) f["rule"] = why->rule;
    if (!why->remedy.empty()) f["remedy"] = why->remedy;
  }
  return f;
}

size_t Reporter::GapDstHash::operator()(const GapDst& k) const {
  return absl::Hash<std::tuple<uint32_t, std::array<uint8_t, 16>, uint16_t>>{}(
      std::make_tuple(k.netns, k.dst.addr.bytes, k.dst.port));
}

Gap* Reporter::gapFor(const PodLabels& pod, const Connection& conn, const Why& why, bool& first) {
  const GapDst dst{conn.netns, conn.dst};
  if (auto known = gap_index_.find(dst); known != gap_index_.end()) {
    for (const auto& [reason, gap] : known->second) {
      if (reason == why.reason) {
        first = false;
        return gap;
      }
    }
  }
  std::string key = pod.namespace_ + "/" + pod.pod + "|" + conn.dst.str() + "|" + why.reason;
  auto it = gaps_.find(key);
  first = it == gaps_.end();
  if (first) {
    if (gaps_.size() >= kMaxGaps) {
      ++gaps_dropped_;
      return nullptr;
    }
    Gap gap;
    gap.pod = pod;
    gap.dst = conn.dst.str();
    gap.why = why;
    gap.first_seen_ns = conn.decided_ns;
    it = gaps_.emplace(std::move(key), std::move(gap)).first;
  }
  gap_index_[dst].emplace_back(why.reason, &it->second);
  return &it->second;
}

Reporter::TargetHot& Reporter::hot(uint32_t netns) {
  auto [it, added] = hot_.try_emplace(netns);
  if (added) {
    // A netns not (or no longer) a target reports as unknown_: cached too,
    // until the targets change.
    it->second.pod = &pod(netns);
    it->second.tally = &tallies_[*it->second.pod];
    if (metrics_ != nullptr) {
      for (Verdict v : kAllVerdicts) {
        if (v == Verdict::Bypassed) continue;  // its counter depends on the reason
        it->second.counters[static_cast<size_t>(v)] =
            &metrics_->connectionCounter(*it->second.pod, v, "");
      }
    }
  }
  return it->second;
}

prometheus::Counter& Reporter::bypassedCounter(TargetHot& target, const std::string& reason) {
  for (const auto& [r, counter] : target.bypassed) {
    if (r == reason) return *counter;
  }
  // Reasons are a fixed few (reasonLabel): the list stays short.
  auto* counter = &metrics_->connectionCounter(*target.pod, Verdict::Bypassed, reason);
  target.bypassed.emplace_back(reason, counter);
  return *counter;
}

void Reporter::report(const Decision& decision, const Why& why) {
  const Connection& conn = decision.conn;
  TargetHot& target = hot(conn.netns);
  const PodLabels& pod = *target.pod;
  PodTally& tally = *target.tally;
  const bool bypassed = conn.verdict == Verdict::Bypassed;
  const bool rejected = bypassed && isRejection(conn.outcome);

  if (decision.type == Decision::Type::Verdict) {
    tally.by_verdict[static_cast<size_t>(conn.verdict)]++;
    if (metrics_ != nullptr) {
      if (bypassed) {
        bypassedCounter(target, why.reason).Increment();
      } else {
        target.counters[static_cast<size_t>(conn.verdict)]->Increment();
      }
    }
    if (conn.verdict == Verdict::Unknown) {
      // Events were lost while this connection waited for its accept. The
      // pod's first such verdict at warn, the rest at debug (all counted).
      const bool warn = !tally.unknown_logged;
      tally.unknown_logged = true;
      if (warn || logging::enabled(spdlog::level::debug)) {
        auto f = fields(pod, conn, nullptr);
        f["why"] = kUnknownWhy;
        logging::write(warn ? spdlog::level::warn : spdlog::level::debug, "verdict", f);
      }
      return;
    }
    if (!bypassed) {
      if (logging::enabled(spdlog::level::debug)) logging::debug("verdict", fields(pod, conn, nullptr));
      return;
    }
  } else if (!bypassed) {
    return;  // only bypassed connections are followed
  }

  bool first = false;
  Gap* gap = gapFor(pod, conn, why, first);
  if (gap != nullptr) {
    if (decision.type == Decision::Type::Verdict) {
      gap->count++;
      gap->last_seen_ns = conn.decided_ns;
    }
    if (conn.outcome != Outcome::Open) {
      const std::string_view name = toString(conn.outcome);
      auto o = gap->outcomes.find(name);
      if (o == gap->outcomes.end()) o = gap->outcomes.emplace(std::string(name), 0).first;
      ++o->second;
    }
  }
  if (rejected) {
    tally.rejected++;
    if (metrics_ != nullptr) {
      if (target.rejected == nullptr) target.rejected = &metrics_->bypassRejectedCounter(pod);
      target.rejected->Increment();
    }
  }
  // The first occurrence of a gap, and its first rejection, at warn;
  // repeats at debug, counted in the summary.
  bool warn = false;
  if (decision.type == Decision::Type::Verdict) {
    warn = first;
    if (!first) tally.folded++;
  }
  if (rejected && gap != nullptr && !gap->rejection_logged) {
    gap->rejection_logged = true;
    warn = true;
  }
  const auto level = warn ? spdlog::level::warn : spdlog::level::debug;
  // The fields are built only for a line that is written (a storm of
  // repeats at info level costs no JSON).
  if (!logging::enabled(level)) return;
  auto f = fields(pod, conn, &why);
  if (rejected) f["symptom"] = kRejectionSymptom;
  logging::write(level, decision.type == Decision::Type::Verdict ? "verdict" : "outcome", f);
}

void Reporter::logSummary() {
  for (auto& [pod, tally] : tallies_) {
    logging::Fields f;
    addPodFields(f, pod);
    for (Verdict v : kAllVerdicts) {
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

std::vector<Gap> Reporter::gaps(size_t limit) const {
  std::vector<Gap> out;
  out.reserve(gaps_.size());
  for (const auto& [key, gap] : gaps_) out.push_back(gap);
  std::stable_sort(out.begin(), out.end(),
                   [](const Gap& a, const Gap& b) { return a.last_seen_ns > b.last_seen_ns; });
  if (out.size() > limit) out.resize(limit);
  return out;
}

std::string Reporter::gapsJson(size_t limit, int64_t realtime_offset_ns) const {
  nlohmann::ordered_json doc;
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const Gap& g : gaps(limit)) {
    nlohmann::ordered_json j;
    j["namespace"] = g.pod.namespace_;
    j["pod"] = g.pod.pod;
    j["workload"] = g.pod.workload;
    j["dst"] = g.dst;
    j["reason"] = g.why.reason;
    j["rule"] = g.why.rule;
    j["remedy"] = g.why.remedy;
    j["count"] = g.count;
    j["outcomes"] = g.outcomes;
    j["first_seen"] = isoTime(static_cast<int64_t>(g.first_seen_ns) + realtime_offset_ns);
    j["last_seen"] = isoTime(static_cast<int64_t>(g.last_seen_ns) + realtime_offset_ns);
    list.push_back(std::move(j));
  }
  doc["gaps"] = std::move(list);
  doc["total_gaps"] = gaps_.size();
  doc["gaps_dropped"] = gaps_dropped_;
  return doc.dump();
}

}  // namespace cw
