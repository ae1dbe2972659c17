// The nft JSON parser: structure, rendering back to nft syntax, every
// expression Istio's native nftables rules use, and bad input.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "rules/evaluator.h"
#include "rules/explain.h"
#include "rules/nft_parser.h"

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

std::string fixture(const std::string& name) {
  return readFile(std::string(CW_FIXTURES) + "/rules/nft/" + name + ".json");
}

RuleSet parseOk(const std::string& json) {
  ParseResult r = parseNftJson(json);
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

Connection conn(const std::string& dst, uint16_t port, uint32_t uid = 1000, uint32_t gid = 1000) {
  Connection c;
  c.uid = uid;
  c.gid = gid;
  c.dst.addr = *Address::parse(dst);
  c.dst.port = port;
  c.src.addr = *Address::parse(c.dst.addr.isV4() ? "198.18.0.10" : "fd00::10");
  c.src.port = 40000;
  return c;
}

// One inet table "t" with a nat output base chain "out" holding `rules`
// (each a JSON expr array), plus a chain "r" that redirects to 15001.
std::string tableWith(const std::vector<std::string>& rules, const std::string& extra = "") {
  std::string json =
      R"({"nftables":[{"metainfo":{"version":"1.0.6","json_schema_version":1}},)"
      R"({"table":{"family":"inet","name":"t","handle":1}},)"
      R"({"chain":{"family":"inet","table":"t","name":"out","handle":1,"type":"nat","hook":"output","prio":-100,"policy":"accept"}},)"
      R"({"chain":{"family":"inet","table":"t","name":"r","handle":2}},)"
      R"({"rule":{"family":"inet","table":"t","chain":"r","handle":3,"expr":[{"redirect":{"port":15001}}]}})";
  int handle = 10;
  for (const std::string& expr : rules) {
    json += R"(,{"rule":{"family":"inet","table":"t","chain":"out","handle":)" +
            std::to_string(handle++) + R"(,"expr":)" + expr + "}}";
  }
  return json + extra + "]}";
}

TEST(RulesNftParser, EveryFixtureParses) {
  int files = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(CW_FIXTURES) + "/rules/nft")) {
    const std::string path = entry.path().string();
    ParseResult r = parseNftJson(readFile(path));
    ASSERT_TRUE(r.ok()) << path << ": " << r.error.str();
    EXPECT_EQ(r.rules->backend, Backend::Nftables);
    EXPECT_TRUE(r.rules->covers_ipv4 && r.rules->covers_ipv6);
    EXPECT_GT(r.rules->ruleCount(), 0u);
    for (const Table& t : r.rules->tables) {
      if (t.name.find("nat") == std::string::npos) continue;
      for (const Chain& c : t.chains) {
        for (const Rule& rule : c.rules) {
          EXPECT_TRUE(rule.understood()) << path << ": " << rule.text;
          EXPECT_FALSE(rule.text.empty());
          EXPECT_GT(rule.handle, 0u);
        }
      }
    }
    ++files;
  }
  EXPECT_GE(files, 40);
}

TEST(RulesNftParser, ReadsTablesChainsAndRendersRules) {
  const RuleSet set = parseOk(fixture("tproxy"));
  ASSERT_EQ(set.tables.size(), 3u);
  EXPECT_EQ(set.tables[0].name, "istio-proxy-nat");
  EXPECT_EQ(set.tables[0].family, Family::Inet);
  const Chain& output = chainOf(set, "istio-proxy-nat", "output");
  EXPECT_TRUE(output.base);
  EXPECT_EQ(output.type, "nat");
  EXPECT_EQ(output.hook, "output");
  EXPECT_EQ(output.priority, -100);
  EXPECT_EQ(output.policy, ChainPolicy::Accept);
  const Chain& mangle_out = chainOf(set, "istio-proxy-mangle", "output");
  EXPECT_EQ(mangle_out.type, "route");
  EXPECT_EQ(mangle_out.priority, -150);

  const std::vector<std::string> expected = {
      R"(oifname "lo" ip saddr 127.0.0.6 counter return)",
      R"(oifname "lo" ip6 saddr ::6 counter return)",
      R"(oifname "lo" ip daddr != 127.0.0.1 tcp dport != { 53, 15008 } skuid 1337 counter jump istio-in-redirect)",
      R"(oifname "lo" ip6 daddr != ::1 tcp dport != { 53, 15008 } skuid 1337 counter jump istio-in-redirect)",
      R"(oifname "lo" tcp dport != 53 skuid != 1337 counter return)",
      R"(skuid 1337 counter return)",
      R"(oifname "lo" ip daddr != 127.0.0.1 tcp dport != 15008 skgid 1337 counter jump istio-in-redirect)",
      R"(oifname "lo" ip6 daddr != ::1 tcp dport != 15008 skgid 1337 counter jump istio-in-redirect)",
      R"(oifname "lo" tcp dport != 53 skgid != 1337 counter return)",
      R"(skgid 1337 counter return)",
      R"(counter jump istio-output-dns)",
      R"(ip daddr 127.0.0.1 counter return)",
      R"(ip6 daddr ::1 counter return)",
      R"(ip daddr 1.1.0.0/16 counter return)",
      R"(ip daddr 9.9.0.0/16 counter jump istio-redirect)",
  };
  const Chain& istio = chainOf(set, "istio-proxy-nat", "istio-output");
  ASSERT_EQ(istio.rules.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(istio.rules[i].text, expected[i]);
  EXPECT_EQ(istio.rules[5].describe(),
            "inet istio-proxy-nat istio-output: skuid 1337 counter return");

  // `tcp dport` carries its implicit dependency on TCP; `ip daddr` on IPv4.
  const Rule& in = istio.rules[2];
  EXPECT_EQ(in.matches[1].kind, MatchKind::DestinationAddress);
  EXPECT_EQ(in.matches[1].family, Family::Ipv4);
  EXPECT_TRUE(in.matches[1].negated);
  EXPECT_EQ(in.matches[2].kind, MatchKind::DestinationPort);
  EXPECT_EQ(in.matches[2].l4, "tcp");
  EXPECT_EQ(in.matches[2].ports, (std::vector<PortRange>{{53, 53}, {15008, 15008}}));

  const Chain& tp = chainOf(set, "istio-proxy-mangle", "istio-tproxy");
  EXPECT_EQ(tp.rules[0].text,
            "meta l4proto tcp ip daddr != 127.0.0.1 tproxy ip to :15006 meta mark set 0x539 "
            "counter accept");
  EXPECT_EQ(tp.rules[0].actions[0].kind, ActionKind::Tproxy);
  EXPECT_EQ(tp.rules[0].actions[1].kind, ActionKind::SetMark);
  const Chain& inbound = chainOf(set, "istio-proxy-mangle", "istio-inbound");
  EXPECT_EQ(inbound.rules[4].text,
            "meta l4proto tcp ct state established,related counter jump istio-divert");
  EXPECT_EQ(chainOf(set, "istio-proxy-raw", "istio-output-dns").rules[0].text,
            "udp dport 53 skuid 1337 counter ct zone set 1");
}

TEST(RulesNftParser, AmbientMarksRender) {
  const RuleSet set = parseOk(fixture("ambient-default"));
  const Chain& out = chainOf(set, "istio-ambient-nat", "istio-output");
  EXPECT_EQ(
      out.rules.back().text,
      "meta l4proto tcp ip daddr != 127.0.0.1 mark & 0xfff != 0x539 counter redirect to :15001");
  const Match& mark = out.rules.back().matches[2];
  EXPECT_EQ(mark.kind, MatchKind::Mark);
  EXPECT_EQ(mark.mask, 0xfffu);
  EXPECT_EQ(mark.values, std::vector<uint32_t>{0x539});
  EXPECT_EQ(chainOf(set, "istio-ambient-mangle", "istio-output").rules[0].text,
            "ct mark & 0xfff == 0x111 counter meta mark set ct mark");
}

TEST(RulesNftParser, FamilySelectorsOfInetTables) {
  // An `ip daddr != X` match never matches an IPv6 packet, and vice versa.
  const RuleSet set = parseOk(tableWith({
      R"([{"match":{"op":"!=","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"10.0.0.1"}},{"jump":{"target":"r"}}])",
  }));
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 443)).decision.verdict, Verdict::Redirect);
  EXPECT_EQ(evaluate(set, conn("10.0.0.1", 443)).decision.verdict, Verdict::Accept);
  EXPECT_EQ(evaluate(set, conn("2001:db8::1", 443)).decision.verdict, Verdict::Accept);

  const RuleSet v6 = parseOk(tableWith({
      R"([{"match":{"op":"==","left":{"meta":{"key":"nfproto"}},"right":"ipv6"}},{"jump":{"target":"r"}}])",
  }));
  EXPECT_EQ(evaluate(v6, conn("2001:db8::1", 443)).decision.verdict, Verdict::Redirect);
  EXPECT_EQ(evaluate(v6, conn("203.0.113.5", 443)).decision.verdict, Verdict::Accept);
}

TEST(RulesNftParser, OwnerNamesAreNotResolved) {
  // nft prints numeric ids; a name (from another writer) stays unresolved.
  const RuleSet set = parseOk(tableWith({
      R"([{"match":{"op":"!=","left":{"meta":{"key":"skgid"}},"right":"java"}},{"match":{"op":"!=","left":{"meta":{"key":"skgid"}},"right":202}},{"return":null}])",
      R"([{"jump":{"target":"r"}}])",
  }));
  const Rule& r = chainOf(set, "t", "out").rules[0];
  EXPECT_EQ(r.text, "skgid != java skgid != 202 return");
  EXPECT_EQ(r.matches[0].ids[0].name, "java");
  const Evaluation unknown = evaluate(set, conn("203.0.113.5", 443, 1000, 1000));
  EXPECT_EQ(unknown.decision.verdict, Verdict::Unknown);
  ASSERT_TRUE(unknown.not_understood.has_value());
  EXPECT_EQ(unknown.not_understood->text, "skgid != java skgid != 202 return");
  EXPECT_NE(unknown.note.find("skgid != java"), std::string::npos);
  // GID 202: the numeric condition fails, so the name does not matter.
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 443, 1000, 202)).decision.verdict, Verdict::Redirect);
}

TEST(RulesNftParser, SetsRangesAndRelations) {
  const RuleSet set = parseOk(tableWith({
      R"([{"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":{"set":[{"range":[8000,8999]},443]}}},{"jump":{"target":"r"}}])",
      R"([{"match":{"op":"<","left":{"payload":{"protocol":"th","field":"dport"}},"right":1024}},{"drop":null}])",
      R"([{"match":{"op":"==","left":{"meta":{"key":"skuid"}},"right":{"range":[2000,2999]}}},{"accept":null}])",
      R"([{"match":{"op":"==","left":{"payload":{"protocol":"ip6","field":"daddr"}},"right":{"set":["::1",{"prefix":{"addr":"2001:db8::","len":32}}]}}},{"dnat":{"family":"ip6","addr":"2001:db8::99","port":8080}}])",
  }));
  const Chain& out = chainOf(set, "t", "out");
  for (const Rule& r : out.rules) EXPECT_TRUE(r.understood()) << r.text;
  EXPECT_EQ(out.rules[0].text, "tcp dport { 8000-8999, 443 } jump r");
  EXPECT_EQ(out.rules[1].text, "th dport < 1024 drop");
  EXPECT_EQ(out.rules[3].text, "ip6 daddr { ::1, 2001:db8::/32 } dnat ip6 to [2001:db8::99]:8080");
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 8500)).decision.verdict, Verdict::Redirect);
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 443)).decision.verdict, Verdict::Redirect);
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 80)).decision.verdict, Verdict::Drop);
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 2000, 2500)).decision.verdict, Verdict::Accept);
  const Evaluation dnat = evaluate(set, conn("2001:db8::7", 5000));
  EXPECT_EQ(dnat.decision.verdict, Verdict::Dnat);
  EXPECT_EQ(dnat.decision.destination.str(), "[2001:db8::99]:8080");
  EXPECT_EQ(evaluate(set, conn("2001:db9::7", 5000)).decision.verdict, Verdict::Accept);
}

TEST(RulesNftParser, UnknownExpressionsAreKept) {
  const RuleSet set = parseOk(tableWith({
      // iptables-nft's compat expression: opaque to us.
      R"([{"xt":{"type":"match","name":"owner"}},{"counter":{"packets":0,"bytes":0}},{"return":null}])",
      R"([{"jump":{"target":"r"}}])",
  }));
  const Rule& xt = chainOf(set, "t", "out").rules[0];
  EXPECT_FALSE(xt.understood());
  EXPECT_EQ(xt.text, R"(xt match "owner" counter return)");
  const Evaluation ev = evaluate(set, conn("203.0.113.5", 443));
  EXPECT_EQ(ev.decision.verdict, Verdict::Unknown);
  EXPECT_EQ(ev.not_understood->text, R"(xt match "owner" counter return)");

  // A named set's contents are not modelled: unknown unless another
  // condition decides.
  const RuleSet named = parseOk(tableWith({
      R"([{"match":{"op":"==","left":{"meta":{"key":"l4proto"}},"right":"udp"}},{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"@probes"}},{"return":null}])",
      R"([{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"@probes"}},{"return":null}])",
      R"([{"jump":{"target":"r"}}])",
  }));
  const Evaluation ev2 = evaluate(named, conn("203.0.113.5", 443));
  EXPECT_EQ(ev2.decision.verdict, Verdict::Unknown);
  EXPECT_EQ(ev2.not_understood->text, "ip daddr @probes return");
  // An IPv6 packet fails the `ip` dependency: the set does not matter.
  EXPECT_EQ(evaluate(named, conn("2001:db8::1", 443)).decision.verdict, Verdict::Redirect);

  // An unknown statement makes the whole rule opaque.
  const RuleSet odd = parseOk(tableWith({
      R"([{"match":{"op":"==","left":{"meta":{"key":"l4proto"}},"right":"udp"}},{"frobnicate":{"x":1}},{"return":null}])",
  }));
  const Rule& frob = chainOf(odd, "t", "out").rules[0];
  EXPECT_TRUE(frob.opaque);
  EXPECT_EQ(frob.text, R"(meta l4proto udp {"frobnicate":{"x":1}} return)");
  EXPECT_EQ(evaluate(odd, conn("203.0.113.5", 443)).decision.verdict, Verdict::Unknown);

  // A match after a statement that changes the packet needs ordering.
  const RuleSet ordered = parseOk(tableWith({
      R"([{"mangle":{"key":{"meta":{"key":"mark"}},"value":1}},{"match":{"op":"==","left":{"meta":{"key":"mark"}},"right":1}},{"accept":null}])",
  }));
  EXPECT_TRUE(chainOf(ordered, "t", "out").rules[0].opaque);
}

TEST(RulesNftParser, OtherFamiliesAndObjectsAreSkipped) {
  const std::string json =
      R"({"nftables":[{"table":{"family":"bridge","name":"b"}},)"
      R"({"chain":{"family":"bridge","table":"b","name":"c","type":"filter","hook":"output","prio":0}},)"
      R"({"rule":{"family":"bridge","table":"b","chain":"c","expr":[{"drop":null}]}},)"
      R"({"table":{"family":"ip","name":"nat"}},)"
      R"({"chain":{"family":"ip","table":"nat","name":"OUTPUT","type":"nat","hook":"output","prio":"dstnat","policy":"accept"}},)"
      R"({"set":{"family":"ip","table":"nat","name":"s","type":"ipv4_addr"}},)"
      R"({"rule":{"family":"ip","table":"nat","chain":"OUTPUT","expr":[{"match":{"op":"==","left":{"meta":{"key":"l4proto"}},"right":6}},{"redirect":{"port":15001}}],"comment":"istio"}}]})";
  const RuleSet set = parseOk(json);
  ASSERT_EQ(set.tables.size(), 1u);
  EXPECT_EQ(set.tables[0].family, Family::Ipv4);
  const Chain& out = chainOf(set, "nat", "OUTPUT");
  EXPECT_EQ(out.priority, -100);
  EXPECT_EQ(out.rules[0].text, "meta l4proto 6 redirect to :15001 comment \"istio\"");
  EXPECT_EQ(out.rules[0].comment, "istio");
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 443)).decision.verdict, Verdict::Redirect);
  // An ip table says nothing about IPv6 packets: not translated.
  EXPECT_EQ(evaluate(set, conn("2001:db8::1", 443)).decision.verdict, Verdict::Accept);
}

TEST(RulesNftParser, BadInputIsAnErrorWithAPlace) {
  struct Bad {
    std::string json;
    int line;
    std::string says;
  };
  const std::vector<Bad> bad = {
      {"", 1, "invalid JSON"},
      {"{\"nftables\": [\n{\"table\": \n", 3, "invalid JSON"},
      {"not json at all", 1, "invalid JSON"},
      {"[]", 1, "no top-level"},
      {"{\"nftables\": {}}", 1, "no top-level"},
      {"{\"nftables\": [1]}", 0, "nftables[0]: expected an object"},
      {R"({"nftables":[{"chain":{"family":"inet","table":"nope","name":"c"}}]})", 0,
       "unknown table inet nope"},
      {R"({"nftables":[{"table":{"family":"inet","name":"t"}},{"rule":{"family":"inet","table":"t","chain":"c","expr":[]}}]})",
       0, "nftables[1]: rule in unknown chain c"},
      {R"({"nftables":[{"table":{"family":"inet","name":"t"}},{"chain":{"family":"inet","table":"t","name":"c"}},{"rule":{"family":"inet","table":"t","chain":"c","expr":{}}}]})",
       0, "without an expr array"},
      {R"({"nftables":[{"table":{"family":"inet","name":"t"}},{"chain":{"family":"inet","table":"t","name":"c","hook":"output","prio":"later"}}]})",
       0, "priority"},
      {R"({"nftables":[{"table":{"family":"inet"}}]})", 0, "without family or name"},
      {R"({"nftables":[{"table":{"family":"inet","name":"t"}},{"table":{"family":"inet","name":"t"}}]})",
       0, "duplicate table"},
  };
  for (const Bad& b : bad) {
    ParseResult r = parseNftJson(b.json);
    ASSERT_FALSE(r.ok()) << b.json;
    EXPECT_EQ(r.error.line, b.line) << b.json << " -> " << r.error.str();
    EXPECT_NE(r.error.str().find(b.says), std::string::npos) << r.error.str();
  }
}

TEST(RulesNftParser, EveryTruncationIsHandled) {
  const std::string json = fixture("outbound-ports-include");
  int errors = 0;
  for (size_t len = 0; len < json.size(); len += 7) {
    ParseResult r = parseNftJson(std::string_view(json).substr(0, len));
    if (r.ok()) {
      (void)explain(*r.rules, conn("203.0.113.5", 32000), 15001);
    } else {
      ++errors;
      EXPECT_FALSE(r.error.message.empty());
    }
  }
  EXPECT_GT(errors, 100);
}

TEST(RulesNftParser, GarbageAndHostileShapes) {
  std::string garbage;
  for (int i = 0; i < 4096; ++i) garbage += static_cast<char>((i * 7919 + 13) % 256);
  EXPECT_FALSE(parseNftJson(garbage).ok());
  EXPECT_FALSE(parseNftJson(std::string(100000, '[') + std::string(100000, ']')).ok());
  ParseResult deep = parseNftJson(std::string(1000, '['));
  ASSERT_FALSE(deep.ok());
  EXPECT_NE(deep.error.message.find("nested deeper"), std::string::npos);
  // Wrong types everywhere: no crash, rules kept as not understood.
  const RuleSet set = parseOk(tableWith({
      R"([{"match":{"op":5,"left":[],"right":null}},{"jump":{"target":7}},{"redirect":{"port":"x"}},{"dnat":{"addr":{"map":1}}},{"mangle":{"key":1}}])",
      R"([{"match":{"op":"==","left":{"meta":{"key":"skuid"}},"right":-1}},{"return":null}])",
      R"([{"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":70000}},{"return":null}])",
      R"([{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":{"prefix":{"addr":"::1","len":300}}}},{"return":null}])",
      R"([1, "x", {"a":1,"b":2}])",
      // Relations at the edges of the integer range (no overflow).
      R"([{"match":{"op":"<","left":{"meta":{"key":"skuid"}},"right":-9223372036854775808}},{"return":null}])",
      R"([{"match":{"op":">","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":9223372036854775807}},{"return":null}])",
      R"([{"match":{"op":">=","left":{"meta":{"key":"skgid"}},"right":18446744073709551615}},{"return":null}])",
  }));
  for (const Rule& r : chainOf(set, "t", "out").rules) EXPECT_FALSE(r.understood()) << r.text;
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 443)).decision.verdict, Verdict::Unknown);
}

TEST(RulesNftParser, RelationsAtTheEdges) {
  const RuleSet set = parseOk(tableWith({
      R"([{"match":{"op":"<","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":0}},{"drop":null}])",
      R"([{"match":{"op":">","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":65535}},{"drop":null}])",
      R"([{"match":{"op":">","left":{"meta":{"key":"skuid"}},"right":4294967295}},{"drop":null}])",
      R"([{"match":{"op":">=","left":{"meta":{"key":"skuid"}},"right":4294967295}},{"jump":{"target":"r"}}])",
  }));
  for (const Rule& r : chainOf(set, "t", "out").rules) EXPECT_TRUE(r.understood()) << r.text;
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 0)).decision.verdict, Verdict::Accept);
  EXPECT_EQ(evaluate(set, conn("203.0.113.5", 65535, 4294967295u)).decision.verdict,
            Verdict::Redirect);
}

TEST(RulesNftParser, HugeInputIsRefused) {
  ParseResult r = parseNftJson(std::string(kMaxInputBytes + 1, ' '));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error.message.find("exceeds the limit"), std::string::npos);

  std::vector<std::string> rules(kMaxRules, R"([{"return":null}])");
  ParseResult many = parseNftJson(tableWith(rules));
  ASSERT_FALSE(many.ok());
  EXPECT_NE(many.error.message.find("more than 100000 rules"), std::string::npos);
}

}  // namespace
}  // namespace cw::rules
