// Reporter: capture gaps are counted per (pod, destination, reason), and a
// repeated bypass finds its gap again (through the index in front of the
// gap table) also after the targets change.
#include "reporter.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

namespace cw {
namespace {

Decision bypassed(uint32_t netns, const std::string& dst, uint16_t port, uint64_t at_ns,
                  Outcome outcome = Outcome::Open) {
  Decision d;
  d.type = Decision::Type::Verdict;
  d.conn.verdict = Verdict::Bypassed;
  d.conn.outcome = outcome;
  d.conn.netns = netns;
  d.conn.src = Endpoint{*Address::parse("198.18.0.2"), 40000};
  d.conn.dst = Endpoint{*Address::parse(dst), port};
  d.conn.decided_ns = at_ns;
  return d;
}

Why why(const std::string& reason) { return Why{reason, "-A ISTIO_OUTPUT ...", "fix it"}; }

const Gap* find(const std::vector<Gap>& gaps, const std::string& pod, const std::string& dst,
                const std::string& reason) {
  for (const Gap& g : gaps) {
    if (g.pod.pod == pod && g.dst == dst && g.why.reason == reason) return &g;
  }
  return nullptr;
}

TEST(ReporterTest, RepeatsOfAGapAreCountedInIt) {
  Reporter r(nullptr);
  r.addTarget(7, PodLabels{"shop", "gateway-1", "gateway"});
  for (int i = 0; i < 5; ++i) r.report(bypassed(7, "198.19.0.1", 80, 100 + i), why("owner-uid-excluded"));
  r.report(bypassed(7, "198.19.0.1", 80, 200), why("destination-excluded"));  // another reason
  r.report(bypassed(7, "198.19.0.1", 443, 300), why("owner-uid-excluded"));  // another port
  r.report(bypassed(7, "198.19.0.1", 80, 400, Outcome::Reset), why("owner-uid-excluded"));

  const auto gaps = r.gaps();
  ASSERT_EQ(gaps.size(), 3u);
  const Gap* uid = find(gaps, "gateway-1", "198.19.0.1:80", "owner-uid-excluded");
  ASSERT_NE(uid, nullptr);
  EXPECT_EQ(uid->count, 6u);
  EXPECT_EQ(uid->first_seen_ns, 100u);
  EXPECT_EQ(uid->last_seen_ns, 400u);
  EXPECT_EQ(uid->outcomes.at("reset"), 1u);
  const Gap* dst = find(gaps, "gateway-1", "198.19.0.1:80", "destination-excluded");
  ASSERT_NE(dst, nullptr);
  EXPECT_EQ(dst->count, 1u);
  const Gap* port = find(gaps, "gateway-1", "198.19.0.1:443", "owner-uid-excluded");
  ASSERT_NE(port, nullptr);
  EXPECT_EQ(port->count, 1u);
  EXPECT_EQ(r.tallies().at(PodLabels{"shop", "gateway-1", "gateway"}).count(Verdict::Bypassed), 8u);
}

TEST(ReporterTest, ANetnsThatBecomesAnotherPodsGetsItsOwnGaps) {
  // A netns inode can be reused by a new pod: its bypasses are that pod's gaps.
  Reporter r(nullptr);
  r.addTarget(7, PodLabels{"shop", "gateway-1", "gateway"});
  r.report(bypassed(7, "198.19.0.1", 80, 100), why("owner-uid-excluded"));
  r.removeTarget(7);
  r.addTarget(7, PodLabels{"shop", "gateway-2", "gateway"});
  r.report(bypassed(7, "198.19.0.1", 80, 200), why("owner-uid-excluded"));
  r.report(bypassed(7, "198.19.0.1", 80, 300), why("owner-uid-excluded"));

  const auto gaps = r.gaps();
  ASSERT_EQ(gaps.size(), 2u);
  ASSERT_NE(find(gaps, "gateway-1", "198.19.0.1:80", "owner-uid-excluded"), nullptr);
  EXPECT_EQ(find(gaps, "gateway-1", "198.19.0.1:80", "owner-uid-excluded")->count, 1u);
  ASSERT_NE(find(gaps, "gateway-2", "198.19.0.1:80", "owner-uid-excluded"), nullptr);
  EXPECT_EQ(find(gaps, "gateway-2", "198.19.0.1:80", "owner-uid-excluded")->count, 2u);
}

TEST(ReporterTest, TwoNetnsOfOnePodShareItsGap) {
  // A pod restarted in a new netns, both watched for a while: one gap.
  Reporter r(nullptr);
  r.addTarget(7, PodLabels{"shop", "gateway-1", "gateway"});
  r.addTarget(8, PodLabels{"shop", "gateway-1", "gateway"});
  r.report(bypassed(7, "198.19.0.1", 80, 100), why("owner-uid-excluded"));
  r.report(bypassed(8, "198.19.0.1", 80, 200), why("owner-uid-excluded"));
  r.report(bypassed(8, "198.19.0.1", 80, 300), why("owner-uid-excluded"));
  const auto gaps = r.gaps();
  ASSERT_EQ(gaps.size(), 1u);
  EXPECT_EQ(gaps[0].count, 3u);
}

// A counter of `family` for one pod (and verdict and reason, where the
// family has them; reason "" for every verdict but bypassed).
double podCounter(const Metrics& m, const std::string& family_name, const std::string& pod,
                  const std::string& verdict = "", const std::string& reason = "") {
  for (const auto& family : m.registry()->Collect()) {
    if (family.name != family_name) continue;
    for (const auto& metric : family.metric) {
      std::map<std::string, std::string> labels;
      for (const auto& l : metric.label) labels[l.name] = l.value;
      if (labels["pod"] == pod && labels["verdict"] == verdict && labels["reason"] == reason) {
        return metric.counter.value;
      }
    }
  }
  return 0;
}

double connections(const Metrics& m, const std::string& pod, const std::string& verdict,
                   const std::string& reason = "") {
  return podCounter(m, "capturewatch_connections_total", pod, verdict, reason);
}

TEST(ReporterTest, VerdictsCountForThePodTheirNetnsIsNow) {
  // The reporter keeps each netns's pod, tally and counters between
  // verdicts: a netns that becomes another pod's counts for that pod.
  Metrics m;
  Reporter r(&m);
  r.addTarget(7, PodLabels{"shop", "gateway-1", "gateway"});
  Decision d = bypassed(7, "198.19.0.1", 80, 100);
  d.conn.verdict = Verdict::Captured;
  r.report(d);
  d.conn.verdict = Verdict::Proxy;
  r.report(d);
  r.removeTarget(7);
  r.addTarget(7, PodLabels{"shop", "gateway-2", "gateway"});
  d.conn.verdict = Verdict::Captured;
  r.report(d);
  r.report(d);
  r.addTarget(8, PodLabels{"shop", "gateway-3", "gateway"});  // targets change again
  d.conn.netns = 8;
  r.report(d);
  d.conn.netns = 9;  // not a target
  r.report(d);

  EXPECT_EQ(connections(m, "gateway-1", "captured"), 1);
  EXPECT_EQ(connections(m, "gateway-1", "proxy"), 1);
  EXPECT_EQ(connections(m, "gateway-2", "captured"), 2);
  EXPECT_EQ(connections(m, "gateway-2", "proxy"), 0);
  EXPECT_EQ(connections(m, "gateway-3", "captured"), 1);
  EXPECT_EQ(connections(m, "unknown", "captured"), 1);
  EXPECT_EQ(r.tallies().at(PodLabels{"shop", "gateway-2", "gateway"}).count(Verdict::Captured), 2u);
  EXPECT_EQ(r.tallies().at(PodLabels{"shop", "gateway-3", "gateway"}).count(Verdict::Captured), 1u);
  // gateway-1's tally went with its target.
  EXPECT_EQ(r.tallies().count(PodLabels{"shop", "gateway-1", "gateway"}), 0u);
}

TEST(ReporterTest, BypassedVerdictsCountByReasonAndRejectionForThePodTheirNetnsIsNow) {
  // The counters of each reason and the rejection counter are kept per
  // target too, and follow a netns that becomes another pod.
  Metrics m;
  Reporter r(&m);
  r.addTarget(7, PodLabels{"shop", "gateway-1", "gateway"});
  r.report(bypassed(7, "198.19.0.1", 80, 100), why("owner-uid"));
  r.report(bypassed(7, "198.19.0.1", 80, 110, Outcome::Reset), why("owner-uid"));
  r.report(bypassed(7, "198.19.0.2", 80, 120, Outcome::Data), why("excluded-port"));
  r.report(bypassed(7, "198.19.0.1", 80, 130, Outcome::PeerClosed), why("owner-uid"));
  r.removeTarget(7);
  r.addTarget(7, PodLabels{"shop", "gateway-2", "gateway"});
  r.report(bypassed(7, "198.19.0.2", 80, 200, Outcome::Reset), why("excluded-port"));
  r.report(bypassed(7, "198.19.0.1", 80, 210), why("owner-uid"));

  EXPECT_EQ(connections(m, "gateway-1", "bypassed", "owner-uid"), 3);
  EXPECT_EQ(connections(m, "gateway-1", "bypassed", "excluded-port"), 1);
  EXPECT_EQ(podCounter(m, "capturewatch_bypass_rejected_total", "gateway-1"), 2);
  EXPECT_EQ(connections(m, "gateway-2", "bypassed", "owner-uid"), 1);
  EXPECT_EQ(connections(m, "gateway-2", "bypassed", "excluded-port"), 1);
  EXPECT_EQ(podCounter(m, "capturewatch_bypass_rejected_total", "gateway-2"), 1);
  // Each gap tallies its connections' outcomes by name.
  const auto gaps = r.gaps();
  const Gap* g = find(gaps, "gateway-1", "198.19.0.1:80", "owner-uid");
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->outcomes,
            (std::map<std::string, uint64_t, std::less<>>{{"peer-closed", 1}, {"reset", 1}}));
}

TEST(ReporterTest, GapsBeyondTheBoundAreCountedAsDropped) {
  Reporter r(nullptr);
  r.addTarget(7, PodLabels{"shop", "gateway-1", "gateway"});
  const size_t extra = 3;
  for (size_t i = 0; i < Reporter::kMaxGaps + extra; ++i) {
    const uint16_t port = static_cast<uint16_t>(1000 + i);
    r.report(bypassed(7, "198.19.0.1", port, i + 1), why("owner-uid-excluded"));
    r.report(bypassed(7, "198.19.0.1", port, i + 1), why("owner-uid-excluded"));  // a repeat
  }
  EXPECT_EQ(r.gaps().size(), Reporter::kMaxGaps);
  EXPECT_EQ(r.gapsDropped(), 2 * extra);  // each verdict of a gap that has no room
  for (const Gap& g : r.gaps()) EXPECT_EQ(g.count, 2u) << g.dst;
}

}  // namespace
}  // namespace cw
