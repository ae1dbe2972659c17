// Scenarios over Istio's own rule sets (tests/fixtures/rules, see ORIGIN.md):
// each scenario is one Istio configuration, read from every form we hold of
// it (the iptables golden text, what iptables-legacy-save and iptables-nft-save
// print after loading it, and the nft JSON of the native nftables backend),
// and many connections are evaluated against each with the expected
// decision and reason. The forms must agree.
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "rules/evaluator.h"
#include "rules/explain.h"
#include "rules/iptables_parser.h"
#include "rules/nft_parser.h"

#ifndef CW_FIXTURES
#define CW_FIXTURES "tests/fixtures"
#endif

namespace cw::rules {
namespace {

std::string readFixture(const std::string& relative) {
  const std::string path = std::string(CW_FIXTURES) + "/rules/" + relative;
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing fixture " << path;
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

Address addr(const std::string& text) {
  auto a = Address::parse(text);
  EXPECT_TRUE(a.has_value()) << text;
  return a.value_or(Address{});
}

// A rule set in one of its forms.
struct Source {
  std::string label;
  RuleSet rules;
};

Source iptablesSource(const std::string& file, Family family) {
  ParseResult r = parseIptables(readFixture("iptables/" + file), family);
  EXPECT_TRUE(r.ok()) << file << ": " << r.error.str();
  return {file, r.ok() ? *r.rules : RuleSet{}};
}

Source nftSource(const std::string& name) {
  ParseResult r = parseNftJson(readFixture("nft/" + name + ".json"));
  EXPECT_TRUE(r.ok()) << name << ".json: " << r.error.str();
  return {name + ".json", r.ok() ? *r.rules : RuleSet{}};
}

// Every form of an Istio configuration: v4 (and v6) golden text, the two
// save outputs, and the nft JSON when the native backend has that case.
std::vector<Source> allForms(const std::string& iptables_name, bool v6,
                             const std::string& nft_name) {
  std::vector<Source> out;
  for (const char* suffix : {".rules", ".legacy.save", ".nft.save"}) {
    out.push_back(iptablesSource(iptables_name + ".v4" + suffix, Family::Ipv4));
    if (v6) out.push_back(iptablesSource(iptables_name + ".v6" + suffix, Family::Ipv6));
  }
  if (!nft_name.empty()) out.push_back(nftSource(nft_name));
  return out;
}

// ---- connections ------------------------------------------------------

constexpr const char* kPodV4 = "198.18.0.10";
constexpr const char* kPodV6 = "fd00::10";

struct Conn {
  Connection c;
  Conn& uid(uint32_t v) {
    c.uid = v;
    return *this;
  }
  Conn& gid(uint32_t v) {
    c.gid = v;
    return *this;
  }
  Conn& udp() {
    c.protocol = Protocol::Udp;
    return *this;
  }
  Conn& via(const std::string& interface) {
    c.out_interface = interface;
    return *this;
  }
  Conn& from(const std::string& a) {
    c.src.addr = addr(a);
    return *this;
  }
};

// A connection from the pod (UID/GID 1000) to dst:port. Loopback
// destinations leave through "lo" from the matching loopback source.
Conn to(const std::string& dst, uint16_t port) {
  Conn conn;
  conn.c.uid = 1000;
  conn.c.gid = 1000;
  conn.c.dst.addr = addr(dst);
  conn.c.dst.port = port;
  const bool v4 = conn.c.dst.addr.isV4();
  conn.c.src.addr = addr(v4 ? kPodV4 : kPodV6);
  conn.c.src.port = 40000;
  if (conn.c.dst.addr.isLoopback()) {
    conn.c.out_interface = "lo";
    conn.c.src.addr = addr(v4 ? "127.0.0.1" : "::1");
  } else if (conn.c.dst.addr == addr(kPodV4) || conn.c.dst.addr == addr(kPodV6)) {
    conn.c.out_interface = "lo";  // the pod's own address is local
  } else {
    conn.c.out_interface = "eth0";
  }
  return conn;
}

// ---- expectations -----------------------------------------------------

struct Expect {
  Verdict verdict = Verdict::Unknown;
  uint16_t port = 0;
  Reason reason = Reason::Unknown;
  // Substrings of the deciding / not understood rule in each syntax
  // (empty: not checked; "-" : no rule expected).
  std::string iptables_rule;
  std::string nft_rule;
};

Expect captured() {
  return {Verdict::Redirect, 15001, Reason::None, "REDIRECT --to-ports 15001",
          "redirect to :15001"};
}

Expect redirected(uint16_t port, std::string ipt = "", std::string nft = "") {
  return {Verdict::Redirect, port, Reason::Unknown, std::move(ipt), std::move(nft)};
}

Expect escapes(Reason reason, std::string ipt = "", std::string nft = "") {
  return {Verdict::Accept, 0, reason, std::move(ipt), std::move(nft)};
}

Expect unknown(std::string ipt, std::string nft = "") {
  return {Verdict::Unknown, 0, Reason::Unknown, std::move(ipt), std::move(nft)};
}

struct Case {
  std::string what;
  Connection conn;
  Expect expect;
};

Case when(std::string what, const Conn& conn, Expect expect) {
  return {std::move(what), conn.c, std::move(expect)};
}

// Runs every case against every source that covers its family; returns
// how many evaluations were checked.
int run(const std::vector<Source>& sources, const std::vector<Case>& cases) {
  int checked = 0;
  for (const Source& source : sources) {
    const Evaluator evaluator(source.rules);
    const Policy policy = summarise(source.rules);
    for (const Case& c : cases) {
      const bool v4 = c.conn.dst.addr.isV4();
      if (v4 ? !source.rules.covers_ipv4 : !source.rules.covers_ipv6) continue;
      SCOPED_TRACE(source.label + ": " + c.what + " (" + c.conn.dst.str() + " uid " +
                   std::to_string(c.conn.uid) + " gid " + std::to_string(c.conn.gid) + ")");
      const Explanation x = explain(evaluator, policy, c.conn, 15001);
      const Evaluation& ev = x.evaluation;
      EXPECT_EQ(verdictName(ev.decision.verdict), verdictName(c.expect.verdict))
          << "note: " << ev.note << "; rule: " << x.rule;
      if (c.expect.verdict == Verdict::Redirect) {
        EXPECT_EQ(ev.decision.port, c.expect.port);
      }
      EXPECT_EQ(x.captured, c.expect.reason == Reason::None);
      EXPECT_EQ(reasonName(x.reason), reasonName(c.expect.reason))
          << "rule: " << x.rule << "; remedy: " << x.remedy;
      const std::string& want =
          source.rules.backend == Backend::Iptables ? c.expect.iptables_rule : c.expect.nft_rule;
      if (want == "-") {
        EXPECT_EQ(x.rule, "");
      } else if (!want.empty()) {
        EXPECT_NE(x.rule.find(want), std::string::npos) << "rule: " << x.rule;
      }
      if (c.expect.verdict == Verdict::Unknown) {
        EXPECT_TRUE(ev.not_understood.has_value());
      }
      if (!x.captured) {
        EXPECT_FALSE(x.remedy.empty());
      }
      ++checked;
    }
  }
  return checked;
}

const char* kUidReturn = "--uid-owner 1337 -j RETURN";
const char* kUidReturnNft = "skuid 1337 counter return";
const char* kGidReturn = "--gid-owner 1337 -j RETURN";
const char* kGidReturnNft = "skgid 1337 counter return";

// ---- the scenarios ----------------------------------------------------

// Default injected pod (istio-cni). Everything outbound is captured except
// the proxy's UID/GID, the agent port 15020 and pod-local traffic.
TEST(RulesScenario, CniBasic) {
  const auto sources = allForms("cni-basic", false, "");
  const int n =
      run(sources, {
                       when("app", to("203.0.113.5", 443), captured()),
                       when("app, other port", to("10.1.2.3", 5432), captured()),
                       when("root is captured", to("203.0.113.5", 443).uid(0).gid(0), captured()),
                       when("app as the proxy UID", to("203.0.113.5", 443).uid(1337),
                            escapes(Reason::OwnerUid, kUidReturn)),
                       when("app with the proxy GID", to("203.0.113.5", 443).gid(1337),
                            escapes(Reason::OwnerGid, kGidReturn)),
                       when("proxy UID and GID", to("203.0.113.5", 443).uid(1337).gid(1337),
                            escapes(Reason::OwnerUid, kUidReturn)),
                       when("agent port 15020", to("203.0.113.5", 15020),
                            escapes(Reason::ExcludedPort, "--dport 15020 -j RETURN")),
                       when("udp to agent port 15020", to("203.0.113.5", 15020).udp(),
                            escapes(Reason::ExcludedPort, "-p udp")),
                       when("udp is not redirected", to("203.0.113.5", 53).udp(),
                            escapes(Reason::NotIncluded, "-")),
                       when("loopback", to("127.0.0.1", 8080),
                            escapes(Reason::Local, "-o lo -m owner ! --uid-owner 1337 -j RETURN")),
                       when("own address over lo", to(kPodV4, 8080),
                            escapes(Reason::Local, "-o lo -m owner ! --uid-owner 1337 -j RETURN")),
                       when("proxy to own address: inbound redirect", to(kPodV4, 8080).uid(1337),
                            redirected(15006, "REDIRECT --to-ports 15006")),
                       when("proxy to 127.0.0.1", to("127.0.0.1", 8080).uid(1337),
                            escapes(Reason::OwnerUid, kUidReturn)),
                       when("proxy to own address port 15008", to(kPodV4, 15008).uid(1337),
                            escapes(Reason::OwnerUid, kUidReturn)),
                       when("inbound passthrough source", to(kPodV4, 8080).from("127.0.0.6"),
                            escapes(Reason::Local, "-s 127.0.0.6/32")),
                       when("source unknown over lo", to(kPodV4, 8080).from("0.0.0.0"),
                            unknown("-s 127.0.0.6/32")),
                       when("source unknown off-pod does not matter",
                            to("203.0.113.5", 443).from("0.0.0.0"), captured()),
                   });
  EXPECT_EQ(n, 17 * 3);
}

// OpenShift-style pod: the proxy runs as 1000670000/1000670001, so 1337 is
// an ordinary UID.
TEST(RulesScenario, CniCustomUid) {
  for (const char* name : {"cni-custom-uid", "cni-custom-uid-tproxy"}) {
    const auto sources = allForms(name, false, "");
    run(sources, {
                     when("app", to("203.0.113.5", 443), captured()),
                     when("UID 1337 is not special here",
                          to("203.0.113.5", 443).uid(1337).gid(1337), captured()),
                     when("proxy UID", to("203.0.113.5", 443).uid(1000670000),
                          escapes(Reason::OwnerUid, "--uid-owner 1000670000 -j RETURN")),
                     when("proxy GID", to("203.0.113.5", 443).gid(1000670001),
                          escapes(Reason::OwnerGid, "--gid-owner 1000670001 -j RETURN")),
                     when("neighbouring UID", to("203.0.113.5", 443).uid(1000670001), captured()),
                     when("loopback", to("127.0.0.1", 80), escapes(Reason::Local)),
                 });
    for (const Source& s : sources) {
      const Policy p = summarise(s.rules);
      EXPECT_EQ(p.proxy_uid, 1000670000u) << s.label;
      EXPECT_EQ(p.proxy_gid, 1000670001u) << s.label;
    }
  }
}

// excludeOutboundPorts=5555,6666.
TEST(RulesScenario, CniIncludeExcludePorts) {
  run(allForms("cni-include-exclude-ports", false, ""),
      {
          when("excluded port", to("203.0.113.5", 5555),
               escapes(Reason::ExcludedPort, "--dport 5555 -j RETURN")),
          when("second excluded port", to("203.0.113.5", 6666),
               escapes(Reason::ExcludedPort, "--dport 6666 -j RETURN")),
          when("udp excluded port", to("203.0.113.5", 5555).udp(),
               escapes(Reason::ExcludedPort, "-p udp")),
          when("neighbouring port", to("203.0.113.5", 5556), captured()),
          when("inbound-only port 1111 is captured outbound", to("203.0.113.5", 1111), captured()),
          when("proxy UID on excluded port: the port rule comes first",
               to("203.0.113.5", 5555).uid(1337), escapes(Reason::ExcludedPort, "--dport 5555")),
          when("proxy UID", to("203.0.113.5", 443).uid(1337),
               escapes(Reason::OwnerUid, kUidReturn)),
      });
}

// includeOutboundIPRanges=127.0.0.0/8, excludeOutboundIPRanges=10.0.0.0/8.
TEST(RulesScenario, CniIncludeExcludeIp) {
  run(allForms("cni-include-exclude-ip", false, ""),
      {
          when("excluded range", to("10.1.2.3", 443),
               escapes(Reason::ExcludedCidr, "-d 10.0.0.0/8 -j RETURN")),
          when("excluded range, other port", to("10.255.0.1", 80), escapes(Reason::ExcludedCidr)),
          when("outside the include range", to("203.0.113.5", 443),
               escapes(Reason::NotIncluded, "-")),
          when("just outside 10/8", to("11.0.0.1", 443), escapes(Reason::NotIncluded)),
          when("inside 127/8 include", to("127.0.0.5", 8080), captured()),
          when("127.0.0.1 itself", to("127.0.0.1", 8080),
               escapes(Reason::Local, "-d 127.0.0.1/32 -j RETURN")),
          when("proxy UID", to("203.0.113.5", 443).uid(1337),
               escapes(Reason::OwnerUid, kUidReturn)),
          when("proxy GID", to("203.0.113.5", 443).gid(1337),
               escapes(Reason::OwnerGid, kGidReturn)),
          when("proxy over lo to 127.0.0.5: inbound redirect", to("127.0.0.5", 8080).uid(1337),
               redirected(15006, "REDIRECT --to-ports 15006")),
      });
}

// DNS capture by the agent: port 53 goes to the DNS proxy (15053).
TEST(RulesScenario, CniDns) {
  run(allForms("cni-dns", false, ""),
      {
          when("tcp dns", to("8.8.8.8", 53), redirected(15053, "--dport 53 -j REDIRECT")),
          when("udp dns", to("8.8.8.8", 53).udp(), redirected(15053, "--dport 53 -j REDIRECT")),
          when("https", to("8.8.8.8", 443), captured()),
          when("proxy resolving", to("8.8.8.8", 53).uid(1337),
               escapes(Reason::OwnerUid, kUidReturn)),
          when("loopback dns from the app", to("127.0.0.53", 53), redirected(15053)),
          when("loopback other port", to("127.0.0.1", 8080),
               escapes(Reason::Local, "! --dport 53")),
      });
}

// TPROXY interception: inbound is TPROXY (mangle), outbound still REDIRECT.
TEST(RulesScenario, CniTproxy) {
  run(allForms("cni-tproxy", false, ""),
      {
          when("app", to("203.0.113.5", 443), captured()),
          when("proxy UID", to("203.0.113.5", 443).uid(1337),
               escapes(Reason::OwnerUid, kUidReturn)),
          when("agent port", to("203.0.113.5", 15020), escapes(Reason::ExcludedPort)),
      });
}

// Baseline istio-iptables without outbound ranges: no outbound redirect at all.
TEST(RulesScenario, Empty) {
  for (const char* name :
       {"empty", "drop-invalid", "inbound-ports-include", "inbound-ports-wildcard",
        "inbound-ports-tproxy", "inbound-ports-wildcard-tproxy"}) {
    const auto sources = allForms(name, false, name);
    run(sources, {
                     when("app", to("203.0.113.5", 443), escapes(Reason::NoCaptureRules, "-")),
                     when("proxy UID: still no capture at all", to("203.0.113.5", 443).uid(1337),
                          escapes(Reason::NoCaptureRules, kUidReturn, kUidReturnNft)),
                     when("loopback", to("127.0.0.1", 80), escapes(Reason::NoCaptureRules)),
                 });
    for (const Source& s : sources) {
      const Policy p = summarise(s.rules);
      EXPECT_FALSE(p.capture) << s.label;
      EXPECT_NE(p.str().find("capture: none"), std::string::npos) << p.str();
      EXPECT_EQ(p.proxy_uid, 1337u) << s.label;
    }
  }
}

// OutboundIPRangesInclude=10.0.0.0/8.
TEST(RulesScenario, Ipnets) {
  for (const char* name : {"ipnets", "ipnets-with-kube-virt-interfaces"}) {
    run(allForms(name, false, name),
        {
            when("inside 10/8", to("10.1.2.3", 443), captured()),
            when("edge of 10/8", to("10.255.255.255", 80), captured()),
            when("outside", to("203.0.113.5", 443), escapes(Reason::NotIncluded, "-", "-")),
            when("proxy UID", to("10.1.2.3", 443).uid(1337),
                 escapes(Reason::OwnerUid, kUidReturn, kUidReturnNft)),
            when("proxy GID", to("10.1.2.3", 443).gid(1337),
                 escapes(Reason::OwnerGid, kGidReturn, kGidReturnNft)),
            when("loopback", to("127.0.0.1", 80), escapes(Reason::Local)),
        });
  }
}

// RerouteVirtualInterfaces + include "*": everything captured.
TEST(RulesScenario, KubeVirtInterfaces) {
  run(allForms("kube-virt-interfaces", false, "kube-virt-interfaces"),
      {
          when("app", to("203.0.113.5", 443), captured()),
          when("app through eth1", to("203.0.113.5", 443).via("eth1"), captured()),
          when("proxy", to("203.0.113.5", 443).uid(1337).gid(1337), escapes(Reason::OwnerUid)),
      });
}

// IPv6: include and exclude the same 2001:db8::/32 (the exclude comes first).
TEST(RulesScenario, Ipv6Ipnets) {
  for (const char* name : {"ipv6-ipnets", "ipv6-uid-gid"}) {
    const bool custom_ids = std::string(name) == "ipv6-uid-gid";
    run(allForms(name, true, name),
        {
            when("excluded before included", to("2001:db8::1", 443),
                 escapes(Reason::ExcludedCidr, "-d 2001:db8::/32 -j RETURN",
                         "ip6 daddr 2001:db8::/32 counter return")),
            when("outside", to("2001:db9::1", 443), escapes(Reason::NotIncluded, "-", "-")),
            when("loopback", to("::1", 8080), escapes(Reason::Local)),
            when("own address", to(kPodV6, 8080), escapes(Reason::Local)),
            when("IPv4: no outbound capture for the family", to("203.0.113.5", 443),
                 escapes(Reason::NoCaptureRules)),
            when("proxy", to("2001:db9::1", 443).uid(custom_ids ? 3 : 1337),
                 escapes(Reason::OwnerUid)),
        });
  }
}

// IPv6 with OutboundPortsInclude=32000,31000.
TEST(RulesScenario, Ipv6OutboundPorts) {
  run(allForms("ipv6-outbound-ports", true, "ipv6-outbound-ports"),
      {
          when("v6 included port", to("2001:db8::1", 32000), captured()),
          when("v6 second included port", to("2001:db8::1", 31000), captured()),
          when("v6 other port", to("2001:db8::1", 443), escapes(Reason::NotIncluded, "-", "-")),
          when("v6 proxy", to("2001:db8::1", 32000).uid(1337),
               escapes(Reason::OwnerUid, kUidReturn, kUidReturnNft)),
          when("v6 loopback", to("::1", 32000), escapes(Reason::Local)),
          when("v4 included port", to("203.0.113.5", 32000), captured()),
          when("v4 other port", to("203.0.113.5", 443), escapes(Reason::NotIncluded)),
          when("udp to an included port", to("203.0.113.5", 32000).udp(),
               escapes(Reason::NotIncluded)),
      });
}

// OutboundPortsInclude=32000,31000 (IPv4 only).
TEST(RulesScenario, OutboundPortsInclude) {
  const auto sources = allForms("outbound-ports-include", false, "outbound-ports-include");
  run(sources, {
                   when("included port", to("203.0.113.5", 32000),
                        {Verdict::Redirect, 15001, Reason::None, "REDIRECT --to-ports 15001",
                         "redirect to :15001"}),
                   when("second included port", to("203.0.113.5", 31000), captured()),
                   when("443 is not included", to("203.0.113.5", 443),
                        escapes(Reason::NotIncluded, "-", "-")),
                   when("proxy on included port", to("203.0.113.5", 32000).uid(1337),
                        escapes(Reason::OwnerUid, kUidReturn, kUidReturnNft)),
                   when("proxy group on included port", to("203.0.113.5", 32000).gid(1337),
                        escapes(Reason::OwnerGid, kGidReturn, kGidReturnNft)),
               });
  for (const Source& s : sources) {
    const Policy p = summarise(s.rules);
    EXPECT_EQ(p.included_ports, (std::vector<PortRange>{{32000, 32000}, {31000, 31000}}))
        << s.label;
    EXPECT_FALSE(p.includes_all);
  }
}

// ProxyUID=3,4 ProxyGID=1,2; exclude 1.1.0.0/16, include 9.9.0.0/16; DNS.
TEST(RulesScenario, IpRange) {
  const auto sources = allForms("ip-range", false, "ip-range");
  run(sources,
      {
          when("included range", to("9.9.1.1", 443), captured()),
          when("excluded range", to("1.1.1.1", 443),
               escapes(Reason::ExcludedCidr, "-d 1.1.0.0/16 -j RETURN",
                       "ip daddr 1.1.0.0/16 counter return")),
          when("elsewhere", to("203.0.113.5", 443), escapes(Reason::NotIncluded, "-", "-")),
          when("first proxy UID", to("9.9.1.1", 443).uid(3),
               escapes(Reason::OwnerUid, "--uid-owner 3 -j RETURN", "skuid 3 counter return")),
          when("second proxy UID", to("9.9.1.1", 443).uid(4),
               escapes(Reason::OwnerUid, "--uid-owner 4 -j RETURN", "skuid 4 counter return")),
          when("first proxy GID", to("9.9.1.1", 443).gid(1), escapes(Reason::OwnerGid)),
          when("second proxy GID", to("9.9.1.1", 443).gid(2), escapes(Reason::OwnerGid)),
          when("UID 1337 is an app here", to("9.9.1.1", 443).uid(1337).gid(1337), captured()),
          when("DNS to the resolver", to("127.0.0.53", 53), redirected(15053)),
          when("udp DNS to the resolver", to("127.0.0.53", 53).udp(), redirected(15053)),
          when("DNS elsewhere is not included", to("8.8.8.8", 53), escapes(Reason::NotIncluded)),
      });
  for (const Source& s : sources) {
    const Policy p = summarise(s.rules);
    EXPECT_EQ(p.exempt_uids.size(), 2u) << s.label;
    EXPECT_EQ(p.exempt_gids.size(), 2u) << s.label;
    EXPECT_EQ(p.proxy_uid, 3u);
    EXPECT_EQ(p.excluded_cidrs.size(), 1u);
    EXPECT_EQ(p.included_cidrs.size(), 1u);
  }
}

// TPROXY + ExcludeInterfaces=not-istio-nic + ranges; IPv6 on but no IPv6 include.
TEST(RulesScenario, TproxyExcludeInterface) {
  const auto sources = allForms("tproxy", true, "tproxy");
  run(sources, {
                   when("included range", to("9.9.1.1", 443), captured()),
                   when("excluded interface", to("9.9.1.1", 443).via("not-istio-nic"),
                        escapes(Reason::ExcludedInterface, "-A OUTPUT -o not-istio-nic -j RETURN",
                                "oifname \"not-istio-nic\" counter return")),
                   when("excluded range", to("1.1.1.1", 443), escapes(Reason::ExcludedCidr)),
                   when("proxy", to("9.9.1.1", 443).uid(1337), escapes(Reason::OwnerUid)),
                   when("DNS resolver", to("127.0.0.53", 53), redirected(15053)),
                   when("v6 has no outbound redirect", to("2001:db8::1", 443),
                        escapes(Reason::NoCaptureRules)),
                   when("v6 excluded interface", to("2001:db8::1", 443).via("not-istio-nic"),
                        escapes(Reason::NoCaptureRules, "-o not-istio-nic -j RETURN",
                                "oifname \"not-istio-nic\" counter return")),
               });
  for (const Source& s : sources) {
    const Policy p = summarise(s.rules);
    EXPECT_EQ(p.excluded_interfaces, std::vector<std::string>{"not-istio-nic"}) << s.label;
  }
}

// ExcludeInterfaces without any outbound include: nothing is captured.
TEST(RulesScenario, BasicExcludeNic) {
  const auto sources = allForms("basic-exclude-nic", false, "basic-exclude-nic");
  run(sources,
      {
          when("app", to("203.0.113.5", 443), escapes(Reason::NoCaptureRules, "-", "-")),
          when("excluded interface: the rule is named", to("203.0.113.5", 443).via("not-istio-nic"),
               escapes(Reason::NoCaptureRules, "-o not-istio-nic -j RETURN",
                       "oifname \"not-istio-nic\" counter return")),
      });
  for (const Source& s : sources) {
    EXPECT_EQ(summarise(s.rules).excluded_interfaces, std::vector<std::string>{"not-istio-nic"});
  }
}

// OwnerGroupsInclude=java,202. The golden text names the group "java",
// which is not resolved: the answer is unknown unless another condition
// decides. The saved and nft forms were loaded with java=30001.
TEST(RulesScenario, OutboundOwnerGroups) {
  for (const char* name : {"outbound-owner-groups", "ipv6-dns-outbound-owner-groups"}) {
    const bool v6 = std::string(name).starts_with("ipv6");
    std::vector<Source> golden{iptablesSource(std::string(name) + ".v4.rules", Family::Ipv4)};
    if (v6) golden.push_back(iptablesSource(std::string(name) + ".v6.rules", Family::Ipv6));
    run(golden, {
                    when("group name unresolved", to("203.0.113.5", 443),
                         unknown("! --gid-owner java -m owner ! --gid-owner 202 -j RETURN")),
                    when("202 decides without the name", to("203.0.113.5", 443).gid(202),
                         escapes(Reason::NoCaptureRules, "-")),
                    when("proxy GID returns before", to("203.0.113.5", 443).gid(1337),
                         escapes(Reason::NoCaptureRules, kGidReturn)),
                });
    std::vector<Source> resolved;
    for (const char* suffix : {".legacy.save", ".nft.save"}) {
      resolved.push_back(iptablesSource(std::string(name) + ".v4" + suffix, Family::Ipv4));
    }
    resolved.push_back(nftSource(name));
    run(resolved,
        {
            when("numeric: exact", to("203.0.113.5", 443),
                 escapes(Reason::NoCaptureRules, "! --gid-owner 30001 -m owner ! --gid-owner 202",
                         "skgid != 30001 skgid != 202 counter return")),
            when("included group 30001", to("203.0.113.5", 443).gid(30001),
                 escapes(Reason::NoCaptureRules, "-", "-")),
        });
    const Policy p = summarise(golden[0].rules);
    EXPECT_EQ(p.included_gids, (std::vector<OwnerId>{{0, 0, "java"}, {202, 202, ""}}));
  }
}

// OwnerGroupsExclude=888,ftp.
TEST(RulesScenario, OutboundOwnerGroupsExclude) {
  for (const char* name :
       {"outbound-owner-groups-exclude", "ipv6-dns-outbound-owner-groups-exclude"}) {
    run({iptablesSource(std::string(name) + ".v4.rules", Family::Ipv4)},
        {
            when("888 decides before the name", to("203.0.113.5", 443).gid(888),
                 escapes(Reason::NoCaptureRules, "--gid-owner 888 -j RETURN")),
            when("other groups reach the name", to("203.0.113.5", 443),
                 unknown("--gid-owner ftp -j RETURN")),
            when("proxy UID returns before", to("203.0.113.5", 443).uid(1337),
                 escapes(Reason::NoCaptureRules, kUidReturn)),
        });
    run({iptablesSource(std::string(name) + ".v4.legacy.save", Family::Ipv4), nftSource(name)},
        {
            when("ftp resolved", to("203.0.113.5", 443).gid(30002),
                 escapes(Reason::NoCaptureRules, "--gid-owner 30002 -j RETURN",
                         "skgid 30002 counter return")),
            when("888", to("203.0.113.5", 443).gid(888),
                 escapes(Reason::NoCaptureRules, "--gid-owner 888 -j RETURN",
                         "skgid 888 counter return")),
        });
  }
}

// DNS capture with ProxyUID=3,4 ProxyGID=1,2, both families, no outbound
// include: only DNS to the configured resolver is redirected (to 15053).
TEST(RulesScenario, DnsUidGid) {
  run(allForms("dns-uid-gid", true, "dns-uid-gid"),
      {
          when("v4 resolver", to("127.0.0.53", 53),
               redirected(15053, "REDIRECT --to-ports 15053", "redirect to :15053")),
          when("v4 resolver over udp", to("127.0.0.53", 53).udp(), redirected(15053)),
          when("v6 resolver", to("::127.0.0.53", 53), redirected(15053)),
          when(
              "proxy resolving", to("127.0.0.53", 53).uid(3),
              escapes(Reason::NoCaptureRules, "--uid-owner 3 -j RETURN", "skuid 3 counter return")),
          when("v4 app elsewhere", to("203.0.113.5", 443),
               escapes(Reason::NoCaptureRules, "-", "-")),
          when("DNS elsewhere", to("8.8.8.8", 53), escapes(Reason::NoCaptureRules)),
          when("v6 loopback", to("::1", 8080), escapes(Reason::NoCaptureRules)),
          when("v6 app", to("2001:db8::1", 443), escapes(Reason::NoCaptureRules)),
          when(
              "v6 proxy GID", to("2001:db8::1", 443).gid(2),
              escapes(Reason::NoCaptureRules, "--gid-owner 2 -j RETURN", "skgid 2 counter return")),
      });
  // Without DNS servers configured nothing goes to 15053, and the proxy's
  // port-53 traffic over loopback is not special.
  run(allForms("ipv6-dns-uid-gid", true, "ipv6-dns-uid-gid"),
      {
          when("v4 resolver", to("127.0.0.53", 53), escapes(Reason::NoCaptureRules)),
          when("proxy to the resolver: inbound redirect", to("127.0.0.53", 53).uid(3),
               redirected(15006)),
          when("v6 app", to("2001:db8::1", 443), escapes(Reason::NoCaptureRules)),
      });
}

// OutboundIPRangesInclude=127.1.2.3/32: a loopback include range.
TEST(RulesScenario, LoopbackOutboundIprange) {
  run(allForms("loopback-outbound-iprange", false, "loopback-outbound-iprange"),
      {
          when("the included loopback address", to("127.1.2.3", 8080), captured()),
          when("other loopback", to("127.1.2.4", 8080), escapes(Reason::NotIncluded)),
          when("127.0.0.1", to("127.0.0.1", 8080), escapes(Reason::Local)),
          when("elsewhere", to("203.0.113.5", 443), escapes(Reason::NotIncluded)),
          when("proxy UID over lo: inbound redirect", to("127.1.2.3", 8080).uid(3),
               redirected(15006)),
          when("proxy UID elsewhere", to("203.0.113.5", 443).uid(3), escapes(Reason::OwnerUid)),
      });
}

// HostIPv4LoopbackCidr=127.0.0.1/8 (no outbound include): the proxy's
// loopback traffic to any 127/8 address is not sent to the inbound port.
TEST(RulesScenario, HostIpv4LoopbackCidr) {
  run(allForms("host-ipv4-loopback-cidr", false, "host-ipv4-loopback-cidr"),
      {
          when("app to 127/8", to("127.9.9.9", 80),
               escapes(Reason::NoCaptureRules, "-o lo -m owner ! --uid-owner 1337 -j RETURN",
                       "oifname \"lo\" skuid != 1337 counter return")),
          when("proxy to 127.0.0.5 is not in-redirected", to("127.0.0.5", 80).uid(1337),
               escapes(Reason::NoCaptureRules, kUidReturn, kUidReturnNft)),
          when("proxy to its own address is", to(kPodV4, 80).uid(1337), redirected(15006)),
          when("app elsewhere", to("203.0.113.5", 443), escapes(Reason::NoCaptureRules)),
      });
}

// Ambient in-pod redirection (ztunnel): REDIRECT straight from ISTIO_OUTPUT
// unless the packet carries ztunnel's mark.
TEST(RulesScenario, AmbientInPod) {
  for (const char* name : {"ambient-default", "ambient-ingress", "ambient-virtual_interfaces"}) {
    std::vector<Source> sources{iptablesSource(std::string(name) + ".v4.rules", Family::Ipv4),
                                iptablesSource(std::string(name) + ".v4.nft.save", Family::Ipv4),
                                nftSource(name)};
    Conn ztunnel = to("203.0.113.5", 443);
    ztunnel.c.mark = 0x539;
    run(sources,
        {
            when("app", to("203.0.113.5", 443), captured()),
            when("ztunnel's own traffic carries its mark", ztunnel, escapes(Reason::NotIncluded)),
            when("probe SNAT address", to("169.254.7.127", 8080),
                 escapes(Reason::ExcludedCidr, "-d 169.254.7.127", "ip daddr 169.254.7.127")),
        });
  }
}

// The four forms of one configuration agree on a grid of connections.
TEST(RulesScenario, FormsAgreeOnAGrid) {
  int compared = 0;
  const std::vector<std::pair<const char*, bool>> configs = {{"tproxy", true},
                                                             {"ipv6-ipnets", true},
                                                             {"ip-range", false},
                                                             {"dns-uid-gid", true},
                                                             {"ipv6-outbound-ports", true},
                                                             {"kube-virt-interfaces", false},
                                                             {"empty", false},
                                                             {"outbound-ports-include", false}};
  for (const auto& [name, v6] : configs) {
    const auto sources = allForms(name, v6, name);
    std::vector<Connection> grid;
    for (const char* dst : {"203.0.113.5", "9.9.1.1", "1.1.1.1", "10.0.0.1", "127.0.0.1",
                            "127.0.0.53", kPodV4, "2001:db8::1", "::1", kPodV6}) {
      for (uint16_t port : {53, 443, 15008, 15020, 31000, 32000}) {
        for (uint32_t id : {0u, 1u, 3u, 1000u, 1337u}) {
          for (bool udp : {false, true}) {
            Conn c = to(dst, port).uid(id).gid(id == 1000 ? 1000 : 5000);
            if (udp) c.udp();
            grid.push_back(c.c);
          }
        }
      }
    }
    const Source& nft = sources.back();
    const Evaluator nft_eval(nft.rules);
    for (const Source& s : sources) {
      const Evaluator eval(s.rules);
      for (const Connection& c : grid) {
        if (c.dst.addr.isV4() ? !s.rules.covers_ipv4 : !s.rules.covers_ipv6) continue;
        const Decision a = eval.evaluate(c).decision;
        const Decision b = nft_eval.evaluate(c).decision;
        EXPECT_EQ(a.str(), b.str())
            << name << " " << s.label << " vs nft: " << c.dst.str() << " uid " << c.uid
            << (c.protocol == Protocol::Udp ? " udp" : "");
        ++compared;
      }
    }
  }
  EXPECT_GT(compared, 10000);
}

}  // namespace
}  // namespace cw::rules
