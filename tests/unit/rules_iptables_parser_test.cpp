// The iptables-save / iptables-restore parser: structure, every option
// Istio uses, and bad input (truncated, garbage, unknown, huge).
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "rules/evaluator.h"
#include "rules/explain.h"
#include "rules/iptables_parser.h"

#ifndef CW_FIXTURES
#define CW_FIXTURES "tests/fixtures"
#endif

namespace cw::rules {
namespace {

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string fixtureDir() { return std::string(CW_FIXTURES) + "/rules/iptables"; }

RuleSet parseOk(const std::string& text, Family family = Family::Ipv4) {
  ParseResult r = parseIptables(text, family);
  EXPECT_TRUE(r.ok()) << r.error.str();
  return r.ok() ? *r.rules : RuleSet{};
}

const Chain& chainOf(const RuleSet& set, const std::string& table, const std::string& chain) {
  for (const Table& t : set.tables) {
    if (t.name != table) continue;
    if (const Chain* c = t.find(chain)) return *c;
  }
  ADD_FAILURE() << "no chain " << table << " " << chain;
  static const Chain kEmpty;
  return kEmpty;
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

// A nat table whose OUTPUT jumps to T; `rules` are appended to T.
std::string natWith(const std::string& rules) {
  return "*nat\n:OUTPUT ACCEPT [0:0]\n:T - [0:0]\n:R - [0:0]\n-A OUTPUT -j T\n"
         "-A R -p tcp -j REDIRECT --to-ports 15001\n" +
         rules + "COMMIT\n";
}

TEST(RulesIptablesParser, EveryFixtureParses) {
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(fixtureDir())) {
    const std::string path = entry.path().string();
    const Family family = path.find(".v6.") != std::string::npos ? Family::Ipv6 : Family::Ipv4;
    ParseResult r = parseIptables(readFile(path), family);
    ASSERT_TRUE(r.ok()) << path << ": " << r.error.str();
    EXPECT_GT(r.rules->ruleCount(), 0u) << path;
    EXPECT_EQ(r.rules->covers_ipv4, family == Family::Ipv4);
    EXPECT_EQ(r.rules->covers_ipv6, family == Family::Ipv6);
    // Every nat rule Istio writes is understood (the probe SNAT's ipset is
    // the one exception: its contents are not in the rules).
    for (const Table& t : r.rules->tables) {
      if (t.name != "nat" || path.find("hostprobe") != std::string::npos) continue;
      for (const Chain& c : t.chains) {
        for (const Rule& rule : c.rules)
          EXPECT_TRUE(rule.understood()) << path << ": " << rule.text;
      }
    }
    ++files;
  }
  EXPECT_GE(files, 150);
}

TEST(RulesIptablesParser, ReadsTablesChainsAndRulesInOrder) {
  const RuleSet set = parseOk(readFile(fixtureDir() + "/cni-basic.v4.rules"));
  EXPECT_EQ(set.backend, Backend::Iptables);
  ASSERT_EQ(set.tables.size(), 1u);
  const Table& nat = set.tables[0];
  EXPECT_EQ(nat.name, "nat");
  EXPECT_EQ(nat.family, Family::Ipv4);
  const Chain& output = chainOf(set, "nat", "OUTPUT");
  EXPECT_TRUE(output.base);
  EXPECT_EQ(output.hook, "output");
  EXPECT_EQ(output.type, "nat");
  EXPECT_EQ(output.priority, -100);
  EXPECT_EQ(output.policy, ChainPolicy::Accept);
  const Chain& istio = chainOf(set, "nat", "ISTIO_OUTPUT");
  EXPECT_FALSE(istio.base);
  ASSERT_EQ(istio.rules.size(), 11u);
  EXPECT_EQ(istio.rules[0].text, "-A ISTIO_OUTPUT -p tcp --dport 15020 -j RETURN");
  EXPECT_EQ(istio.rules[0].line, 15);
  EXPECT_EQ(istio.rules.back().text, "-A ISTIO_OUTPUT -j ISTIO_REDIRECT");
  EXPECT_EQ(istio.rules.back().describe(), "-A ISTIO_OUTPUT -j ISTIO_REDIRECT");
  ASSERT_EQ(istio.rules.back().actions.size(), 1u);
  EXPECT_EQ(istio.rules.back().actions[0].kind, ActionKind::Jump);
  EXPECT_EQ(istio.rules.back().actions[0].chain, "ISTIO_REDIRECT");

  // -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
  const Rule& in = istio.rules[3];
  ASSERT_EQ(in.matches.size(), 5u);
  EXPECT_EQ(in.matches[0].kind, MatchKind::OutInterface);
  EXPECT_EQ(in.matches[1].kind, MatchKind::DestinationAddress);
  EXPECT_TRUE(in.matches[1].negated);
  EXPECT_EQ(in.matches[1].cidrs[0].str(), "127.0.0.1/32");
  EXPECT_EQ(in.matches[2].kind, MatchKind::Protocol);
  EXPECT_EQ(in.matches[3].kind, MatchKind::DestinationPort);
  EXPECT_TRUE(in.matches[3].negated);
  EXPECT_EQ(in.matches[3].l4, "tcp");
  EXPECT_EQ(in.matches[3].text, "! --dport 15008");
  EXPECT_EQ(in.matches[4].kind, MatchKind::OwnerUid);
  EXPECT_EQ(in.matches[4].ids[0].first, 1337u);

  const Chain& redirect = chainOf(set, "nat", "ISTIO_REDIRECT");
  ASSERT_EQ(redirect.rules.size(), 1u);
  EXPECT_EQ(redirect.rules[0].actions[0].kind, ActionKind::Redirect);
  EXPECT_EQ(redirect.rules[0].actions[0].ports, (PortRange{15001, 15001}));
}

TEST(RulesIptablesParser, InsertPositions) {
  // ipv6-ipnets: "-I PREROUTING 1 -i eth0 ..." then "-I PREROUTING 1 -i eth1 ...".
  const RuleSet set = parseOk(readFile(fixtureDir() + "/ipv6-ipnets.v6.rules"), Family::Ipv6);
  const Chain& pre = chainOf(set, "nat", "PREROUTING");
  ASSERT_EQ(pre.rules.size(), 5u);
  EXPECT_EQ(pre.rules[0].text, "-I PREROUTING 1 -i eth1 -d 2001:db8::/32 -j ISTIO_REDIRECT");
  EXPECT_EQ(pre.rules[1].text, "-I PREROUTING 1 -i eth0 -d 2001:db8::/32 -j ISTIO_REDIRECT");
  EXPECT_EQ(pre.rules[2].text, "-I PREROUTING 1 -i eth1 -j RETURN");

  const RuleSet two = parseOk(
      "*nat\n:X - [0:0]\n-A X -j RETURN\n-A X -j ACCEPT\n-I X 2 -j DROP\n"
      "-I X -p udp -j DROP\nCOMMIT\n");
  const Chain& x = chainOf(two, "nat", "X");
  ASSERT_EQ(x.rules.size(), 4u);
  EXPECT_EQ(x.rules[0].text, "-I X -p udp -j DROP");
  EXPECT_EQ(x.rules[2].text, "-I X 2 -j DROP");

  ParseResult bad = parseIptables("*nat\n:X - [0:0]\n-I X 3 -j DROP\nCOMMIT\n", Family::Ipv4);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error.line, 3);
  EXPECT_NE(bad.error.message.find("out of range"), std::string::npos);
}

TEST(RulesIptablesParser, SaveFormatHeadersCountersAndComments) {
  const std::string text =
      "# Generated by iptables-save v1.8.9 on Thu Nov 26 12:53:27 2026\n"
      "iptables-save\n"
      "*nat\n"
      ":PREROUTING ACCEPT [10:600]\n"
      ":OUTPUT DROP [3:180]\n"
      ":ISTIO_OUTPUT - [0:0]\n"
      "[5:300] -A OUTPUT -j ISTIO_OUTPUT\n"
      "-A ISTIO_OUTPUT -m comment --comment \"the \\\"proxy\\\" itself\" -m owner --uid-owner 1337 "
      "-j RETURN\n"
      "COMMIT\n"
      "# Completed on Thu Nov 26 12:53:27 2026\n";
  const RuleSet set = parseOk(text);
  const Chain& output = chainOf(set, "nat", "OUTPUT");
  EXPECT_EQ(output.policy, ChainPolicy::Drop);
  ASSERT_EQ(output.rules.size(), 1u);
  EXPECT_EQ(output.rules[0].text, "-A OUTPUT -j ISTIO_OUTPUT");
  const Rule& r = chainOf(set, "nat", "ISTIO_OUTPUT").rules.at(0);
  EXPECT_EQ(r.comment, "the \"proxy\" itself");
  EXPECT_TRUE(r.understood());
  ASSERT_EQ(r.matches.size(), 1u);

  // Policy DROP: what falls off the end is dropped.
  const Evaluation ev = evaluate(set, conn("203.0.113.5", 443));
  EXPECT_EQ(ev.decision.verdict, Verdict::Drop);
  EXPECT_NE(ev.note.find("policy drop"), std::string::npos);
}

TEST(RulesIptablesParser, MatchOptions) {
  const RuleSet set =
      parseOk(natWith("-A T -p tcp -m multiport ! --dports 53,15000:15010 -j RETURN\n"
                      "-A T -m owner --uid-owner 1000-2000 -m owner ! --gid-owner java -j RETURN\n"
                      "-A T -m mark --mark 0x539/0xfff -j RETURN\n"
                      "-A T -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n"
                      "-A T -m state ! --state NEW -j RETURN\n"
                      "-A T ! -o eth+ -s 10.0.0.0/8,192.168.0.1 -j RETURN\n"
                      "-A T -p udp -m udp --sport 1024: -j RETURN\n"
                      "-A T -m owner --socket-exists -p 6 -j R\n"));
  const Chain& t = chainOf(set, "nat", "T");
  ASSERT_EQ(t.rules.size(), 8u);
  for (const Rule& r : t.rules) EXPECT_TRUE(r.understood()) << r.text;

  const Match& ports = t.rules[0].matches[1];
  EXPECT_EQ(ports.kind, MatchKind::DestinationPort);
  EXPECT_TRUE(ports.negated);
  EXPECT_EQ(ports.ports, (std::vector<PortRange>{{53, 53}, {15000, 15010}}));
  EXPECT_EQ(ports.l4, "tcp");

  const Rule& owner = t.rules[1];
  EXPECT_EQ(owner.matches[0].ids[0], (OwnerId{1000, 2000, ""}));
  EXPECT_EQ(owner.matches[1].ids[0].name, "java");
  EXPECT_TRUE(owner.matches[1].negated);

  EXPECT_EQ(t.rules[2].matches[0].values, std::vector<uint32_t>{0x539});
  EXPECT_EQ(t.rules[2].matches[0].mask, 0xfffu);
  EXPECT_EQ(t.rules[3].matches[0].names, (std::vector<std::string>{"related", "established"}));
  EXPECT_TRUE(t.rules[4].matches[0].negated);
  EXPECT_EQ(t.rules[5].matches[0].kind, MatchKind::OutInterface);
  EXPECT_TRUE(t.rules[5].matches[0].negated);
  EXPECT_EQ(t.rules[5].matches[1].cidrs.size(), 2u);
  EXPECT_EQ(t.rules[6].matches[1].ports, (std::vector<PortRange>{{1024, 65535}}));
  EXPECT_EQ(t.rules[6].matches[1].l4, "udp");
  EXPECT_EQ(t.rules[7].matches[1].names, std::vector<std::string>{"tcp"});
}

TEST(RulesIptablesParser, TargetOptions) {
  const RuleSet set = parseOk(
      "*nat\n:OUTPUT ACCEPT [0:0]\n:X - [0:0]\n"
      "-A X -p tcp -j DNAT --to-destination 10.0.0.1:8080\n"
      "-A X -p tcp -j DNAT --to-destination [2001:db8::1]:80\n"
      "-A X -p tcp -j REDIRECT\n"
      "-A X -p tcp -j REDIRECT --to-ports 15001-15002 --random\n"
      "-A X -g X\n"
      "COMMIT\n*mangle\n:OUTPUT ACCEPT [0:0]\n"
      "-A OUTPUT -j MARK --set-xmark 0x53a/0xffffffff\n"
      "-A OUTPUT -j MARK --or-mark 0x1\n"
      "-A OUTPUT -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff\n"
      "-A OUTPUT -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n"
      "-A OUTPUT -j CT --zone 1\n"
      "-A OUTPUT -j LOG --log-prefix \"x y\"\n"
      "-A OUTPUT -j SOMETHING --odd 1\n"
      "COMMIT\n");
  const Chain& x = chainOf(set, "nat", "X");
  EXPECT_EQ(x.rules[0].actions[0].kind, ActionKind::Dnat);
  EXPECT_EQ(x.rules[0].actions[0].address->str(), "10.0.0.1");
  EXPECT_EQ(x.rules[0].actions[0].ports, (PortRange{8080, 8080}));
  EXPECT_EQ(x.rules[1].actions[0].kind, ActionKind::Unsupported);  // an IPv6 target in IPv4 rules
  EXPECT_EQ(x.rules[2].actions[0].kind, ActionKind::Redirect);
  EXPECT_FALSE(x.rules[2].actions[0].ports.has_value());
  EXPECT_EQ(x.rules[3].actions[0].ports, (PortRange{15001, 15002}));
  EXPECT_EQ(x.rules[4].actions[0].kind, ActionKind::Goto);

  const Chain& out = chainOf(set, "mangle", "OUTPUT");
  EXPECT_EQ(out.priority, -150);
  EXPECT_EQ(out.rules[0].actions[0].kind, ActionKind::SetMark);
  EXPECT_TRUE(out.rules[0].actions[0].mark_xor);
  EXPECT_EQ(out.rules[0].actions[0].mark_value, 0x53au);
  EXPECT_EQ(out.rules[1].actions[0].mark_mask, 0u);
  EXPECT_EQ(out.rules[2].actions[0].kind, ActionKind::Tproxy);
  EXPECT_EQ(out.rules[3].actions[0].kind, ActionKind::Unsupported);
  EXPECT_EQ(out.rules[4].actions[0].kind, ActionKind::NoOp);
  EXPECT_EQ(out.rules[5].actions[0].kind, ActionKind::NoOp);
  EXPECT_EQ(out.rules[6].actions[0].kind, ActionKind::Unsupported);
  EXPECT_EQ(out.rules[6].actions[0].text, "-j SOMETHING --odd 1");
}

TEST(RulesIptablesParser, UnknownOptionsAreKeptNotGuessed) {
  const RuleSet set = parseOk(natWith(
      "-A T -m owner --uid-owner 1337 --suppl-groups -j RETURN\n"  // modifies the owner match
      "-A T -m addrtype --dst-type LOCAL -j RETURN\n"              // unknown module
      "-A T -p tcp --tcp-flags SYN,ACK SYN -j RETURN\n"            // unknown option
      "-A T -j R\n"));
  const Chain& t = chainOf(set, "nat", "T");
  ASSERT_EQ(t.rules.size(), 4u);
  EXPECT_TRUE(t.rules[0].opaque);
  EXPECT_FALSE(t.rules[0].understood());
  EXPECT_FALSE(t.rules[1].opaque);  // an unknown module is one more condition
  EXPECT_FALSE(t.rules[1].understood());
  EXPECT_EQ(t.rules[1].matches[0].kind, MatchKind::Unsupported);
  EXPECT_EQ(t.rules[1].matches[0].text, "-m addrtype --dst-type LOCAL");
  EXPECT_TRUE(t.rules[2].opaque);

  // The first one is reached by every connection: unknown, and named.
  const Evaluation ev = evaluate(set, conn("203.0.113.5", 443));
  EXPECT_EQ(ev.decision.verdict, Verdict::Unknown);
  ASSERT_TRUE(ev.not_understood.has_value());
  EXPECT_EQ(ev.not_understood->line, 7);
  EXPECT_EQ(ev.not_understood->text, "-A T -m owner --uid-owner 1337 --suppl-groups -j RETURN");
  const Explanation x = explain(set, conn("203.0.113.5", 443), 15001);
  EXPECT_EQ(x.reason, Reason::Unknown);
  EXPECT_NE(x.remedy.find("--suppl-groups"), std::string::npos) << x.remedy;

  // An unknown module next to a definite mismatch does not matter.
  const RuleSet module =
      parseOk(natWith("-A T -p udp -m addrtype --dst-type LOCAL -j RETURN\n-A T -j R\n"));
  const Evaluation ev2 = evaluate(module, conn("203.0.113.5", 443));
  EXPECT_EQ(ev2.decision.verdict, Verdict::Redirect);
}

TEST(RulesIptablesParser, StructuralErrorsNameTheLine) {
  struct Bad {
    std::string text;
    int line;
    std::string says;
  };
  const std::vector<Bad> bad = {
      {"-A OUTPUT -j RETURN\n", 1, "outside a table"},
      {"*nat\n-A OUTPUT -j RETURN\n", 2, "no COMMIT"},
      {"*nat\n-A NOPE -j RETURN\nCOMMIT\n", 2, "does not exist"},
      {"*nat\n*mangle\nCOMMIT\n", 2, "before COMMIT"},
      {"COMMIT\n", 1, "COMMIT outside"},
      {"*nat\n-Q OUTPUT\nCOMMIT\n", 2, "unknown command"},
      {"*nat\n-A OUTPUT -d 2001:db8::1 -j RETURN\nCOMMIT\n", 2, "not IPv4"},
      {"*nat\n-A OUTPUT -m comment --comment \"open -j RETURN\nCOMMIT\n", 2, "unterminated quote"},
      {"*nat\n-A OUTPUT -p\nCOMMIT\n", 2, "needs a value"},
      {"*nat\n:OUTPUT MAYBE [0:0]\nCOMMIT\n", 2, "unknown policy"},
      {"*\nCOMMIT\n", 1, "without a name"},
      {"*nat\n-A\nCOMMIT\n", 2, "without a chain"},
      {"*nat\n-A OUTPUT -j\nCOMMIT\n", 2, "needs a target"},
  };
  for (const Bad& b : bad) {
    ParseResult r = parseIptables(b.text, Family::Ipv4);
    ASSERT_FALSE(r.ok()) << b.text;
    EXPECT_EQ(r.error.line, b.line) << b.text << " -> " << r.error.str();
    EXPECT_NE(r.error.message.find(b.says), std::string::npos) << r.error.str();
    EXPECT_EQ(r.error.str().find("line " + std::to_string(b.line) + ": "), 0u);
  }
  ParseResult v6 = parseIptables("*nat\n-A OUTPUT -d 10.0.0.1 -j RETURN\nCOMMIT\n", Family::Ipv6);
  EXPECT_FALSE(v6.ok());
  EXPECT_FALSE(parseIptables("", Family::Inet).ok());
}

TEST(RulesIptablesParser, EmptyInputIsAnEmptyRuleSet) {
  const RuleSet set = parseOk("");
  EXPECT_TRUE(set.tables.empty());
  const Evaluation ev = evaluate(set, conn("203.0.113.5", 443));
  EXPECT_EQ(ev.decision.verdict, Verdict::Accept);
  const Explanation x = explain(set, conn("203.0.113.5", 443), 15001);
  EXPECT_EQ(x.reason, Reason::NoCaptureRules);
}

TEST(RulesIptablesParser, EveryTruncationIsHandled) {
  const std::string text = readFile(fixtureDir() + "/tproxy.v4.legacy.save");
  int ok = 0;
  int errors = 0;
  for (size_t len = 0; len <= text.size(); ++len) {
    ParseResult r = parseIptables(std::string_view(text).substr(0, len), Family::Ipv4);
    if (r.ok()) {
      ++ok;
      // A parse that succeeds must evaluate and explain without trouble.
      (void)explain(*r.rules, conn("9.9.1.1", 443), 15001);
    } else {
      ++errors;
      EXPECT_GT(r.error.line, 0);
      EXPECT_FALSE(r.error.message.empty());
    }
  }
  EXPECT_GT(errors, 0);
  EXPECT_GT(ok, 0);
}

TEST(RulesIptablesParser, GarbageIsAnError) {
  std::string garbage;
  for (int i = 0; i < 4096; ++i) garbage += static_cast<char>((i * 7919 + 13) % 256);
  ParseResult r = parseIptables(garbage, Family::Ipv4);
  EXPECT_FALSE(r.ok());
  using namespace std::string_literals;
  EXPECT_FALSE(parseIptables("*nat\n-A OUTPUT\0 -j RETURN\nCOMMIT\n"s, Family::Ipv4).ok());
  EXPECT_FALSE(parseIptables("{\"nftables\": []}", Family::Ipv4).ok());
}

TEST(RulesIptablesParser, HugeInputIsRefused) {
  std::string huge(kMaxInputBytes + 1, '#');
  ParseResult r = parseIptables(huge, Family::Ipv4);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error.message.find("exceeds the limit"), std::string::npos);

  std::string many = "*nat\n";
  for (size_t i = 0; i <= kMaxRules; ++i) many += "-A OUTPUT -j RETURN\n";
  many += "COMMIT\n";
  ASSERT_LT(many.size(), kMaxInputBytes);
  ParseResult r2 = parseIptables(many, Family::Ipv4);
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.error.message.find("more than 100000 rules"), std::string::npos);
  EXPECT_EQ(r2.error.line, static_cast<int>(kMaxRules) + 2);

  // Just under the limit parses, and evaluation stays bounded.
  std::string big = "*nat\n:C - [0:0]\n-A OUTPUT -j C\n";
  for (size_t i = 0; i < kMaxRules - 2; ++i) big += "-A C -p udp -j RETURN\n";
  big += "-A C -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n";
  const RuleSet set = parseOk(big);
  EXPECT_EQ(set.ruleCount(), kMaxRules);
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 443)).decision.verdict, Verdict::Redirect);
}

TEST(RulesIptablesParser, LaterSectionOfTheSameTableReplacesIt) {
  const RuleSet set = parseOk(
      "*nat\n-A OUTPUT -j DROP\nCOMMIT\n*nat\n-A OUTPUT -p tcp -j REDIRECT --to-ports 1\nCOMMIT\n");
  ASSERT_EQ(set.tables.size(), 1u);
  EXPECT_EQ(chainOf(set, "nat", "OUTPUT").rules.size(), 1u);
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 443)).decision.port, 1);
}

TEST(RulesIptablesParser, FlushDeleteAndPolicyCommands) {
  const RuleSet set = parseOk(
      "*nat\n-N X\n-A X -j RETURN\n-A OUTPUT -j X\n-F OUTPUT\n-F X\n-X X\n-P OUTPUT DROP\n"
      "-Z\nCOMMIT\n");
  EXPECT_EQ(set.ruleCount(), 0u);
  EXPECT_EQ(chainOf(set, "nat", "OUTPUT").policy, ChainPolicy::Drop);
  bool has_x = false;
  for (const Chain& c : set.tables[0].chains) has_x = has_x || c.name == "X";
  EXPECT_FALSE(has_x);
}

}  // namespace
}  // namespace cw::rules
