// Evaluator semantics on small hand-written rule sets: jumps, goto, RETURN,
// policies, several base chains, loops, marks, three-valued matches.
#include <string>

#include <gtest/gtest.h>

#include "rules/evaluator.h"
#include "rules/iptables_parser.h"
#include "rules/nft_parser.h"

namespace cw::rules {
namespace {

RuleSet ipt(const std::string& text, Family family = Family::Ipv4) {
  ParseResult r = parseIptables(text, family);
  EXPECT_TRUE(r.ok()) << r.error.str();
  return r.ok() ? *r.rules : RuleSet{};
}

RuleSet nft(const std::string& json) {
  ParseResult r = parseNftJson(json);
  EXPECT_TRUE(r.ok()) << r.error.str();
  return r.ok() ? *r.rules : RuleSet{};
}

Connection conn(const std::string& dst, uint16_t port, uint32_t uid = 1000) {
  Connection c;
  c.uid = uid;
  c.gid = uid;
  c.dst.addr = *Address::parse(dst);
  c.dst.port = port;
  c.src.addr = *Address::parse(c.dst.addr.isV4() ? "198.18.0.10" : "fd00::10");
  c.src.port = 40000;
  return c;
}

std::vector<std::string> pathOf(const Evaluation& ev) {
  std::vector<std::string> out;
  for (const Rule& r : ev.path) out.push_back(r.text);
  return out;
}

TEST(RulesEvaluator, PathAndDecidingRule) {
  const RuleSet set =
      ipt("*nat\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n"
          "-A OUTPUT -j A\n"
          "-A A -p udp -j RETURN\n"
          "-A A -j B\n"
          "-A A -p tcp -j REDIRECT --to-ports 15001\n"
          "-A B -d 10.0.0.0/8 -j RETURN\n"
          "COMMIT\n");
  const Evaluation ev = evaluate(set, conn("203.0.113.5", 443));
  EXPECT_EQ(ev.decision.verdict, Verdict::Redirect);
  EXPECT_EQ(ev.decision.port, 15001);
  EXPECT_EQ(ev.decision.str(), "redirect to :15001");
  EXPECT_EQ(pathOf(ev), (std::vector<std::string>{"-A OUTPUT -j A", "-A A -j B",
                                                  "-A A -p tcp -j REDIRECT --to-ports 15001"}));
  ASSERT_TRUE(ev.deciding.has_value());
  EXPECT_EQ(ev.deciding->text, "-A A -p tcp -j REDIRECT --to-ports 15001");
  EXPECT_EQ(ev.chains, (std::vector<std::string>{"nat OUTPUT", "nat A", "nat B"}));
  EXPECT_TRUE(ev.enteredChain("B"));
  EXPECT_FALSE(ev.not_understood.has_value());

  // RETURN from B goes back into A, where a later rule decides.
  const Evaluation ten = evaluate(set, conn("10.1.1.1", 443));
  EXPECT_EQ(ten.decision.verdict, Verdict::Redirect);
  EXPECT_EQ(ten.path.size(), 4u);

  // RETURN that ends the traversal is the deciding rule.
  const Evaluation udp = [&] {
    Connection c = conn("203.0.113.5", 53);
    c.protocol = Protocol::Udp;
    return evaluate(set, c);
  }();
  EXPECT_EQ(udp.decision.verdict, Verdict::Accept);
  ASSERT_TRUE(udp.deciding.has_value());
  EXPECT_EQ(udp.deciding->text, "-A A -p udp -j RETURN");
  EXPECT_EQ(udp.note, "policy accept of OUTPUT");
}

TEST(RulesEvaluator, FallingOffTheEndHasNoDecidingRule) {
  const RuleSet set =
      ipt("*nat\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n-A OUTPUT -j A\n-A A -d 10.0.0.0/8 -j RETURN\n"
          "COMMIT\n");
  const Evaluation ev = evaluate(set, conn("203.0.113.5", 443));
  EXPECT_EQ(ev.decision.verdict, Verdict::Accept);
  EXPECT_FALSE(ev.deciding.has_value());
  EXPECT_EQ(ev.decision.str(), "accept (not translated)");
}

TEST(RulesEvaluator, GotoReturnsPastTheChainThatWentThere) {
  const RuleSet set =
      ipt("*nat\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n"
          "-A OUTPUT -j A\n"
          "-A OUTPUT -j REDIRECT --to-ports 2\n"
          "-A A -g B\n"
          "-A A -j REDIRECT --to-ports 1\n"
          "COMMIT\n");
  // B is empty: returning from it skips the rest of A.
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 443)).decision.port, 2);
}

TEST(RulesEvaluator, RedirectWithoutPortKeepsTheDestinationPort) {
  const RuleSet set = ipt("*nat\n-A OUTPUT -p tcp -j REDIRECT\nCOMMIT\n");
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 8443)).decision.port, 8443);
}

TEST(RulesEvaluator, DnatDecision) {
  const RuleSet set =
      ipt("*nat\n-A OUTPUT -p tcp --dport 80 -j DNAT --to-destination 10.9.9.9\n"
          "-A OUTPUT -p tcp -j DNAT --to-destination 10.9.9.9:8080-8081\nCOMMIT\n");
  const Evaluation ev = evaluate(set, conn("203.0.113.5", 80));
  EXPECT_EQ(ev.decision.verdict, Verdict::Dnat);
  EXPECT_EQ(ev.decision.destination.str(), "10.9.9.9:80");
  EXPECT_EQ(ev.decision.str(), "dnat to 10.9.9.9:80");
  // A port range leaves the chosen port open: unknown, not a guess.
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 81)).decision.verdict, Verdict::Unknown);
}

TEST(RulesEvaluator, JumpLoopsAreCaught) {
  const RuleSet jumps = ipt(
      "*nat\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A OUTPUT -j A\n-A A -j B\n-A B -j A\n"
      "COMMIT\n");
  const Evaluation ev = evaluate(jumps, conn("203.0.113.5", 443));
  EXPECT_EQ(ev.decision.verdict, Verdict::Unknown);
  EXPECT_NE(ev.note.find("deeper than 64"), std::string::npos) << ev.note;
  ASSERT_TRUE(ev.not_understood.has_value());

  const RuleSet gotos = ipt(
      "*nat\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A OUTPUT -j A\n-A A -g B\n-A B -g A\n"
      "COMMIT\n");
  const Evaluation ev2 = evaluate(gotos, conn("203.0.113.5", 443));
  EXPECT_EQ(ev2.decision.verdict, Verdict::Unknown);
  EXPECT_NE(ev2.note.find("a jump loop?"), std::string::npos) << ev2.note;
  EXPECT_LE(ev2.path.size(), Evaluator::kMaxPathLength);

  // A goto loop that matches nothing else: the path limit ends it.
  const RuleSet spin = ipt(
      "*nat\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n-A OUTPUT -j A\n-A A -p udp -j RETURN\n-A A -g A\n"
      "COMMIT\n");
  EXPECT_EQ(evaluate(spin, conn("203.0.113.5", 443)).decision.verdict, Verdict::Unknown);
}

TEST(RulesEvaluator, JumpToAMissingChainIsUnknown) {
  // nft JSON can name a chain that is not listed.
  const RuleSet set = nft(
      R"({"nftables":[{"table":{"family":"inet","name":"t"}},)"
      R"({"chain":{"family":"inet","table":"t","name":"o","type":"nat","hook":"output","prio":-100,"policy":"accept"}},)"
      R"({"rule":{"family":"inet","table":"t","chain":"o","expr":[{"jump":{"target":"gone"}}]}}]})");
  const Evaluation ev = evaluate(set, conn("203.0.113.5", 443));
  EXPECT_EQ(ev.decision.verdict, Verdict::Unknown);
  EXPECT_NE(ev.note.find("gone"), std::string::npos);
}

TEST(RulesEvaluator, BaseChainsRunInPriorityOrder) {
  // Two nat output chains: accept in the first lets the second run; a
  // redirect in the first is final.
  auto twoTables = [](const std::string& first_stmt) {
    return R"({"nftables":[{"table":{"family":"ip","name":"late"}},)"
           R"({"chain":{"family":"ip","table":"late","name":"o","type":"nat","hook":"output","prio":0,"policy":"accept"}},)"
           R"({"rule":{"family":"ip","table":"late","chain":"o","expr":[{"redirect":{"port":2}}]}},)"
           R"({"table":{"family":"inet","name":"early"}},)"
           R"({"chain":{"family":"inet","table":"early","name":"o","type":"nat","hook":"output","prio":-100,"policy":"accept"}},)"
           R"({"chain":{"family":"inet","table":"early","name":"filter","type":"filter","hook":"output","prio":-200,"policy":"drop"}},)"
           R"({"rule":{"family":"inet","table":"early","chain":"o","expr":[)" +
           first_stmt + "]}}]}";
  };
  const RuleSet accept = nft(twoTables(R"({"accept":null})"));
  const Evaluation a = evaluate(accept, conn("203.0.113.5", 443));
  EXPECT_EQ(a.decision.verdict, Verdict::Redirect);
  EXPECT_EQ(a.decision.port, 2);
  EXPECT_EQ(a.chains, (std::vector<std::string>{"early o", "late o"}));

  const RuleSet redirect = nft(twoTables(R"({"redirect":{"port":1}})"));
  EXPECT_EQ(evaluate(redirect, conn("203.0.113.5", 443)).decision.port, 1);

  // The ip table does not see IPv6 packets; the filter chain is not nat.
  const Evaluation v6 = evaluate(accept, conn("2001:db8::1", 443));
  EXPECT_EQ(v6.decision.verdict, Verdict::Accept);
  EXPECT_EQ(v6.chains, (std::vector<std::string>{"early o"}));
}

TEST(RulesEvaluator, FamiliesAndCoverage) {
  const RuleSet v4 = ipt("*nat\n-A OUTPUT -j REDIRECT --to-ports 1\nCOMMIT\n");
  const Evaluation ev = evaluate(v4, conn("2001:db8::1", 443));
  EXPECT_EQ(ev.decision.verdict, Verdict::Unknown);
  EXPECT_NE(ev.note.find("no IPv6 rules"), std::string::npos);
  EXPECT_FALSE(ev.not_understood.has_value());

  Connection mixed = conn("203.0.113.5", 443);
  mixed.src.addr = *Address::parse("fd00::1");
  EXPECT_EQ(evaluate(v4, mixed).decision.verdict, Verdict::Unknown);

  // A v4-mapped destination is IPv4.
  EXPECT_EQ(evaluate(v4, conn("::ffff:203.0.113.5", 443)).decision.verdict, Verdict::Redirect);

  const RuleSet none = ipt("*mangle\n-A OUTPUT -j MARK --set-mark 1\nCOMMIT\n");
  const Evaluation no_nat = evaluate(none, conn("203.0.113.5", 443));
  EXPECT_EQ(no_nat.decision.verdict, Verdict::Accept);
  EXPECT_NE(no_nat.note.find("no nat output chain"), std::string::npos);
}

TEST(RulesEvaluator, MatchesAndTheirNegations) {
  const RuleSet set = ipt(
      "*nat\n:OUTPUT ACCEPT [0:0]\n"
      "-A OUTPUT -o eth+ ! -d 10.0.0.0/8 -p tcp -m multiport --dports 80,8000:8999 "
      "-j REDIRECT --to-ports 1\n"
      "-A OUTPUT ! -o eth+ -j REDIRECT --to-ports 2\n"
      "-A OUTPUT -m owner --uid-owner 500-599 -j REDIRECT --to-ports 3\n"
      "-A OUTPUT -m conntrack --ctstate NEW -m owner ! --socket-exists -j REDIRECT --to-ports 4\n"
      "-A OUTPUT -m conntrack --ctstate ESTABLISHED -j REDIRECT --to-ports 5\n"
      "-A OUTPUT -i eth0 -j REDIRECT --to-ports 6\n"
      "-A OUTPUT ! -i eth0 -m mark ! --mark 0x1/0xf -j REDIRECT --to-ports 7\n"
      "-A OUTPUT -j REDIRECT --to-ports 8\n"
      "COMMIT\n");
  auto port = [&](Connection c) { return evaluate(set, c).decision.port; };
  EXPECT_EQ(port(conn("203.0.113.5", 8500)), 1);
  EXPECT_EQ(port(conn("10.0.0.5", 8500)), 7);
  Connection lo = conn("203.0.113.5", 443);
  lo.out_interface = "lo";
  EXPECT_EQ(port(lo), 2);
  EXPECT_EQ(port(conn("203.0.113.5", 443, 550)), 3);
  Connection marked = conn("203.0.113.5", 443);
  marked.mark = 0x31;
  EXPECT_EQ(port(marked), 8);
  Connection no_oif = conn("203.0.113.5", 443);
  no_oif.out_interface = "";
  const Evaluation unknown = evaluate(set, no_oif);
  EXPECT_EQ(unknown.decision.verdict, Verdict::Unknown);
  EXPECT_NE(unknown.note.find("`! -o eth+`"), std::string::npos) << unknown.note;
}

TEST(RulesEvaluator, MarksSetEarlierAreSeenLater) {
  const RuleSet set =
      ipt("*nat\n:OUTPUT ACCEPT [0:0]\n"
          "-A OUTPUT -p tcp -j MARK --set-xmark 0x10/0xf0\n"
          "-A OUTPUT -m mark --mark 0x10/0xf0 -j REDIRECT --to-ports 1\n"
          "-A OUTPUT -j REDIRECT --to-ports 2\n"
          "COMMIT\n");
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 443)).decision.port, 1);
  Connection udp = conn("203.0.113.5", 443);
  udp.protocol = Protocol::Udp;
  EXPECT_EQ(evaluate(set, udp).decision.port, 2);
}

TEST(RulesEvaluator, ThreeValuedMatching) {
  const RuleSet set =
      ipt("*nat\n:OUTPUT ACCEPT [0:0]\n"
          "-A OUTPUT -p udp -m owner --uid-owner nobody -j RETURN\n"  // false: protocol decides
          "-A OUTPUT -m owner --uid-owner 7 -m owner --uid-owner nobody -j RETURN\n"
          "-A OUTPUT -m owner ! --gid-owner staff -j REDIRECT --to-ports 1\n"
          "COMMIT\n");
  // uid 1000: rule 2's numeric condition fails; rule 3's name is unknown.
  const Evaluation ev = evaluate(set, conn("203.0.113.5", 443));
  EXPECT_EQ(ev.decision.verdict, Verdict::Unknown);
  EXPECT_EQ(ev.not_understood->text,
            "-A OUTPUT -m owner ! --gid-owner staff -j REDIRECT --to-ports 1");
  EXPECT_FALSE(ev.deciding.has_value());
  // uid 7: rule 2 depends on the name.
  const Evaluation seven = evaluate(set, conn("203.0.113.5", 443, 7));
  EXPECT_EQ(seven.not_understood->line, 4);

  // A source port match with the source port unknown.
  const RuleSet sport = ipt("*nat\n-A OUTPUT -p tcp --sport 40000 -j RETURN\nCOMMIT\n");
  Connection c = conn("203.0.113.5", 443);
  EXPECT_EQ(evaluate(sport, c).decision.verdict, Verdict::Accept);
  c.src.port = 0;
  EXPECT_EQ(evaluate(sport, c).decision.verdict, Verdict::Unknown);
}

TEST(RulesEvaluator, TargetsNotExpectedInNatOutputAreUnknown) {
  for (const char* target : {"-j SNAT --to-source 1.2.3.4", "-j MASQUERADE",
                             "-j CONNMARK --restore-mark", "-j TPROXY --on-port 1"}) {
    const RuleSet set = ipt(std::string("*nat\n-A OUTPUT ") + target + "\nCOMMIT\n");
    const Evaluation ev = evaluate(set, conn("203.0.113.5", 443));
    EXPECT_EQ(ev.decision.verdict, Verdict::Unknown) << target;
    ASSERT_TRUE(ev.not_understood.has_value());
  }
  // Dropping and rejecting end the traversal.
  EXPECT_EQ(
      evaluate(ipt("*nat\n-A OUTPUT -j DROP\nCOMMIT\n"), conn("203.0.113.5", 443)).decision.verdict,
      Verdict::Drop);
}

TEST(RulesEvaluator, InterfaceWildcardsPerBackend) {
  const RuleSet set = nft(
      R"({"nftables":[{"table":{"family":"inet","name":"t"}},)"
      R"({"chain":{"family":"inet","table":"t","name":"o","type":"nat","hook":"output","prio":-100,"policy":"accept"}},)"
      R"({"rule":{"family":"inet","table":"t","chain":"o","expr":[{"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"veth*"}},{"redirect":{"port":1}}]}},)"
      R"({"rule":{"family":"inet","table":"t","chain":"o","expr":[{"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"eth+"}},{"redirect":{"port":2}}]}}]})");
  Connection c = conn("203.0.113.5", 443);
  c.out_interface = "veth12";
  EXPECT_EQ(evaluate(set, c).decision.port, 1);
  c.out_interface = "eth0";  // '+' is not a wildcard in nft
  EXPECT_EQ(evaluate(set, c).decision.verdict, Verdict::Accept);
  c.out_interface = "eth+";
  EXPECT_EQ(evaluate(set, c).decision.port, 2);
}

}  // namespace
}  // namespace cw::rules
