// CaptureExplainer with rules given as text (no netns): the reasons it gives,
// its rate-limited reads, and that its memo of explanations never answers one
// connection with another's explanation.
#include <gtest/gtest.h>

#include <string>

#include "pod_rules.h"

namespace cw {
namespace {

// Istio's OUTPUT capture (as in tests/fixtures/istio/basic.iptables),
// optionally with a source-port exemption in front.
std::string istioNat(bool with_sport_rule) {
  std::string s =
      "*nat\n"
      ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
      ":POSTROUTING ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n:ISTIO_REDIRECT - [0:0]\n"
      "-A OUTPUT -j ISTIO_OUTPUT\n";
  if (with_sport_rule) s += "-A ISTIO_OUTPUT -p tcp --sport 40000:40099 -j RETURN\n";
  s +=
      "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"
      "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN\n"
      "-A ISTIO_OUTPUT -d 198.18.9.0/24 -j RETURN\n"
      "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n"
      "-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"
      "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"
      "COMMIT\n";
  return s;
}

constexpr uint32_t kNetns = 4026532999;

Connection conn(uint32_t uid, uint32_t gid, const char* dst, uint16_t dport, uint16_t sport) {
  Connection c;
  c.netns = kNetns;
  c.uid = uid;
  c.gid = gid;
  c.src = Endpoint{*Address::parse("198.18.1.2"), sport};
  c.dst = Endpoint{*Address::parse(dst), dport};
  c.established_ns = 5'000'000'000;
  c.verdict = Verdict::Bypassed;
  return c;
}

struct Fixture {
  int reads = 0;
  CaptureExplainer ex;
  explicit Fixture(bool with_sport_rule)
      : ex(
            [this, with_sport_rule](const std::string&) {
              ++reads;
              RulesText t;
              t.iptables_nft_v4 = istioNat(with_sport_rule);
              return t;
            },
            [](const std::string&, const Address&) { return Route{"eth0", std::nullopt}; },
            15001, 1'000'000'000) {
    ex.addTarget(kNetns, "/run/netns/unit", 1'000'000'000);
  }
};

// The three gaps of istioNat's rules, from one source port: the proxy's uid,
// its gid and an excluded range, each with its own reason.
void expectTheThreeGaps(Fixture& f, uint64_t now, uint16_t sport) {
  EXPECT_EQ(f.ex.explain(conn(1337, 0, "198.18.0.1", 80, sport), now).reason, "owner-uid");
  EXPECT_EQ(f.ex.explain(conn(1000, 1337, "198.18.0.1", 80, sport), now).reason, "owner-gid");
  EXPECT_EQ(f.ex.explain(conn(1000, 1000, "198.18.9.7", 80, sport), now).reason, "excluded-cidr");
}

TEST(CaptureExplainer, GivesTheReasonOfEachConnectionNotTheOneExplainedBefore) {
  Fixture f(false);
  const uint64_t now = 1'500'000'000;
  // The same destination alternately by the proxy's uid, its gid, an
  // excluded range and an app the rules capture: each keeps its own reason.
  for (int round = 0; round < 3; ++round) {
    const uint16_t sport = static_cast<uint16_t>(41000 + round);
    expectTheThreeGaps(f, now, sport);
    const Why captured_now = f.ex.explain(conn(1000, 1000, "198.18.0.1", 80, sport), now);
    EXPECT_EQ(captured_now.reason, "unknown");
    EXPECT_NE(captured_now.remedy.find("redirect this connection"), std::string::npos);
  }
  // One read at addTarget; explaining did not re-read (within min interval).
  EXPECT_EQ(f.reads, 1);
}

// Past the minimum interval since the last read, a gap that the last read
// rules explain is answered from them, with their reason, and no re-read; one
// they say is captured makes the explainer look again.
TEST(CaptureExplainer, PastTheIntervalAGapTheLastReadExplainsIsAnsweredWithoutReadingAgain) {
  Fixture f(false);
  const uint64_t later = 3'500'000'000;  // the last read was at 1 s, the interval is 1 s
  for (int round = 0; round < 2; ++round) {
    expectTheThreeGaps(f, later, static_cast<uint16_t>(41000 + round));
  }
  EXPECT_EQ(f.reads, 1);
  EXPECT_EQ(f.ex.explain(conn(1000, 1000, "198.18.0.1", 80, 41005), later).reason, "unknown");
  EXPECT_EQ(f.reads, 2);
}

TEST(CaptureExplainer, SourcePortIsPartOfTheAnswerWhenTheRulesMatchOnIt) {
  Fixture f(true);
  const uint64_t now = 1'500'000'000;
  for (int round = 0; round < 2; ++round) {
    // Same uid, gid and destination; only the source port differs.
    // (A source-port exemption has no reason label of its own.)
    const Why exempt = f.ex.explain(conn(1000, 1000, "198.18.0.1", 80, 40050), now);
    EXPECT_NE(exempt.rule.find("--sport"), std::string::npos) << exempt.rule;
    EXPECT_EQ(exempt.remedy.find("redirect this connection"), std::string::npos) << exempt.remedy;
    const Why captured = f.ex.explain(conn(1000, 1000, "198.18.0.1", 80, 40150), now);
    EXPECT_EQ(captured.reason, "unknown");
    EXPECT_EQ(captured.rule.find("--sport"), std::string::npos) << captured.rule;
    EXPECT_NE(captured.remedy.find("redirect this connection"), std::string::npos);
  }
}

TEST(CaptureExplainer, ManyDistinctConnectionsStayCorrectPastTheMemoBound) {
  Fixture f(false);
  const uint64_t now = 1'500'000'000;
  // More distinct destinations than the memo holds, twice over: the answer
  // depends only on the destination's subnet.
  for (int pass = 0; pass < 2; ++pass) {
    for (int i = 0; i < 5000; ++i) {
      const bool excluded = i % 2 == 0;
      const std::string dst = std::string(excluded ? "198.18.9." : "198.18.0.") +
                              std::to_string(1 + i % 250);
      const Why w = f.ex.explain(conn(1000, 1000, dst.c_str(), static_cast<uint16_t>(1000 + i), 42000),
                                 now);
      ASSERT_EQ(w.reason, excluded ? "excluded-cidr" : "unknown") << dst << " pass " << pass;
    }
  }
}

}  // namespace
}  // namespace cw
