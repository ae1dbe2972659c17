// The explainer: Istio's capture policy as summarised from the rules, and
// the reason and remedy for a connection that escapes.
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "rules/explain.h"
#include "rules/iptables_parser.h"
#include "rules/nft_parser.h"

#ifndef CW_FIXTURES
#define CW_FIXTURES "tests/fixtures"
#endif

namespace cw::rules {
namespace {

std::string readFixture(const std::string& relative) {
  std::ifstream in(std::string(CW_FIXTURES) + "/rules/" + relative, std::ios::binary);
  EXPECT_TRUE(in.good()) << relative;
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

RuleSet iptables(const std::string& name, Family family = Family::Ipv4) {
  ParseResult r = parseIptables(readFixture("iptables/" + name), family);
  EXPECT_TRUE(r.ok()) << r.error.str();
  return r.ok() ? *r.rules : RuleSet{};
}

RuleSet nftables(const std::string& name) {
  ParseResult r = parseNftJson(readFixture("nft/" + name + ".json"));
  EXPECT_TRUE(r.ok()) << r.error.str();
  return r.ok() ? *r.rules : RuleSet{};
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

TEST(RulesPolicy, BasicSidecar) {
  const Policy p = summarise(iptables("cni-basic.v4.rules"));
  EXPECT_EQ(p.backend, Backend::Iptables);
  EXPECT_TRUE(p.capture);
  EXPECT_TRUE(p.capture_ipv4);
  EXPECT_FALSE(p.capture_ipv6);
  EXPECT_EQ(p.outbound_chain, "ISTIO_OUTPUT");
  EXPECT_EQ(p.redirect_chain, "ISTIO_REDIRECT");
  EXPECT_EQ(p.redirect_port, 15001);
  EXPECT_EQ(p.proxy_uid, 1337u);
  EXPECT_EQ(p.proxy_gid, 1337u);
  EXPECT_EQ(p.exempt_uids, (std::vector<OwnerId>{{1337, 1337, ""}}));
  EXPECT_EQ(p.exempt_gids, (std::vector<OwnerId>{{1337, 1337, ""}}));
  EXPECT_EQ(p.excluded_ports, (std::vector<PortRange>{{15020, 15020}}));
  EXPECT_TRUE(p.excluded_cidrs.empty());  // 127.0.0.1/32 is local, not an exclusion
  EXPECT_TRUE(p.includes_all);
  EXPECT_TRUE(p.not_understood.empty());
  EXPECT_EQ(p.str(),
            "backend: iptables\n"
            "capture: outbound traffic redirected to port 15001 (ISTIO_OUTPUT -> ISTIO_REDIRECT)\n"
            "captured destinations: all\n"
            "proxy: uid 1337, gid 1337\n"
            "exempt uids: 1337\n"
            "exempt gids: 1337\n"
            "excluded ports: 15020\n");
}

TEST(RulesPolicy, IncludesAndExcludes) {
  const Policy ip = summarise(iptables("cni-include-exclude-ip.v4.rules"));
  EXPECT_EQ(ip.excluded_cidrs.size(), 1u);
  EXPECT_EQ(ip.excluded_cidrs[0].str(), "10.0.0.0/8");
  ASSERT_EQ(ip.included_cidrs.size(), 1u);
  EXPECT_EQ(ip.included_cidrs[0].str(), "127.0.0.0/8");
  EXPECT_FALSE(ip.includes_all);

  const Policy ports = summarise(iptables("cni-include-exclude-ports.v4.rules"));
  EXPECT_EQ(ports.excluded_ports, (std::vector<PortRange>{{5555, 5555}, {6666, 6666}}));

  const Policy v6 = summarise(nftables("ipv6-ipnets"));
  EXPECT_EQ(v6.backend, Backend::Nftables);
  EXPECT_EQ(v6.outbound_chain, "istio-output");
  EXPECT_EQ(v6.redirect_chain, "istio-redirect");
  EXPECT_TRUE(v6.capture_ipv6);
  EXPECT_FALSE(v6.capture_ipv4);
  EXPECT_EQ(v6.included_cidrs.at(0).str(), "2001:db8::/32");
  EXPECT_EQ(v6.excluded_cidrs.at(0).str(), "2001:db8::/32");

  const Policy nic = summarise(nftables("tproxy"));
  EXPECT_EQ(nic.excluded_interfaces, std::vector<std::string>{"not-istio-nic"});
  EXPECT_NE(nic.str().find("excluded interfaces: not-istio-nic"), std::string::npos);
}

TEST(RulesPolicy, NoCapture) {
  const Policy empty = summarise(iptables("empty.v4.rules"));
  EXPECT_FALSE(empty.capture);
  EXPECT_EQ(empty.why_no_capture,
            "ISTIO_OUTPUT never sends outbound traffic to the redirect (ISTIO_REDIRECT)");

  const Policy none = summarise(RuleSet{});
  EXPECT_FALSE(none.capture);
  EXPECT_EQ(none.str(),
            "backend: iptables\ncapture: none (no ISTIO_OUTPUT chain reached from nat OUTPUT)\n");

  // ISTIO_OUTPUT exists but nat OUTPUT does not jump to it.
  ParseResult r = parseIptables(
      "*nat\n:ISTIO_OUTPUT - [0:0]\n:ISTIO_REDIRECT - [0:0]\n"
      "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"
      "COMMIT\n",
      Family::Ipv4);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(summarise(*r.rules).capture);
  const Explanation x = explain(*r.rules, conn("203.0.113.5", 443), 15001);
  EXPECT_EQ(x.reason, Reason::NoCaptureRules);
  EXPECT_NE(x.remedy.find("istio-init"), std::string::npos);
  EXPECT_NE(x.remedy.find("interceptionMode"), std::string::npos);
  EXPECT_NE(x.remedy.find("CNI"), std::string::npos);
}

TEST(RulesPolicy, ProxyIdsComeFromTheRules) {
  for (const char* file : {"cni-custom-uid.v4.rules", "cni-custom-uid.v4.nft.save"}) {
    const RuleSet set = iptables(file);
    const Policy p = summarise(set);
    EXPECT_EQ(p.proxy_uid, 1000670000u);
    EXPECT_EQ(p.proxy_gid, 1000670001u);
    const Explanation uid = explain(set, conn("203.0.113.5", 443, 1000670000), 15001);
    EXPECT_EQ(uid.reason, Reason::OwnerUid);
    EXPECT_EQ(uid.remedy,
              "the container runs as UID 1000670000, the proxy's UID, which Istio exempts from "
              "capture: run the app as another UID (securityContext.runAsUser)");
    const Explanation gid = explain(set, conn("203.0.113.5", 443, 1000, 1000670001), 15001);
    EXPECT_EQ(gid.reason, Reason::OwnerGid);
    EXPECT_NE(gid.remedy.find("the proxy's GID"), std::string::npos) << gid.remedy;
    EXPECT_NE(gid.remedy.find("runAsGroup"), std::string::npos);
  }
}

TEST(RulesPolicy, OwnerGroups) {
  const RuleSet include = iptables("outbound-owner-groups.v4.rules");
  const Policy p = summarise(include);
  EXPECT_EQ(p.included_gids, (std::vector<OwnerId>{{0, 0, "java"}, {202, 202, ""}}));
  EXPECT_NE(p.str().find("only gids captured: java, 202"), std::string::npos) << p.str();

  const RuleSet exclude = iptables("outbound-owner-groups-exclude.v4.rules");
  const Policy q = summarise(exclude);
  EXPECT_EQ(q.exempt_gids, (std::vector<OwnerId>{{1337, 1337, ""}, {888, 888, ""}, {0, 0, "ftp"}}));
  EXPECT_EQ(q.proxy_gid, 1337u);
}

// Remedies name the knob to turn.
TEST(RulesPolicy, Remedies) {
  struct Want {
    std::string fixture;
    Connection conn;
    Reason reason;
    std::vector<std::string> mentions;
  };
  Connection nic = conn("9.9.1.1", 443);
  nic.out_interface = "not-istio-nic";
  const std::vector<Want> wants = {
      {"cni-basic.v4.rules",
       conn("203.0.113.5", 443, 1337),
       Reason::OwnerUid,
       {"runs as UID 1337", "the proxy's UID", "securityContext.runAsUser"}},
      {"cni-basic.v4.rules",
       conn("203.0.113.5", 443, 1000, 1337),
       Reason::OwnerGid,
       {"GID 1337", "runAsGroup"}},
      {"cni-include-exclude-ports.v4.rules",
       conn("203.0.113.5", 5555),
       Reason::ExcludedPort,
       {"port 5555", "traffic.sidecar.istio.io/excludeOutboundPorts"}},
      {"cni-include-exclude-ip.v4.rules",
       conn("10.1.2.3", 443),
       Reason::ExcludedCidr,
       {"10.1.2.3 (in 10.0.0.0/8)", "traffic.sidecar.istio.io/excludeOutboundIPRanges"}},
      {"cni-include-exclude-ip.v4.rules",
       conn("203.0.113.5", 443),
       Reason::NotIncluded,
       {"203.0.113.5:443", "IP ranges 127.0.0.0/8", "includeOutboundIPRanges",
        "includeOutboundPorts"}},
      {"outbound-ports-include.v4.rules",
       conn("203.0.113.5", 443),
       Reason::NotIncluded,
       {"ports 32000, 31000", "includeOutboundPorts"}},
      {"tproxy.v4.rules",
       nic,
       Reason::ExcludedInterface,
       {"not-istio-nic", "traffic.sidecar.istio.io/excludeInterfaces", "ExcludeInterfaces"}},
      {"empty.v4.rules",
       conn("203.0.113.5", 443),
       Reason::NoCaptureRules,
       {"istio-init", "interceptionMode", "NONE"}},
      {"outbound-owner-groups-exclude.v4.legacy.save",
       conn("203.0.113.5", 443, 1000, 888),
       Reason::NoCaptureRules,
       {}},
      {"cni-dns.v4.rules", conn("8.8.8.8", 53), Reason::Unknown, {"port 15053", "15001"}},
      {"outbound-owner-groups.v4.rules",
       conn("203.0.113.5", 443),
       Reason::Unknown,
       {"cannot evaluate", "! --gid-owner java"}},
  };
  for (const Want& w : wants) {
    SCOPED_TRACE(w.fixture + " " + w.conn.dst.str());
    const Explanation x = explain(iptables(w.fixture), w.conn, 15001);
    EXPECT_FALSE(x.captured);
    EXPECT_EQ(reasonName(x.reason), reasonName(w.reason)) << x.remedy;
    EXPECT_EQ(x.remedy.find('\n'), std::string::npos) << "one line";
    for (const std::string& m : w.mentions) {
      EXPECT_NE(x.remedy.find(m), std::string::npos) << m << " not in: " << x.remedy;
    }
  }
}

TEST(RulesPolicy, OwnerGroupExclusionsAndInclusions) {
  // With a redirect present, an excluded group is "owner-gid" with its own remedy.
  ParseResult r = parseIptables(
      "*nat\n:ISTIO_OUTPUT - [0:0]\n:ISTIO_REDIRECT - [0:0]\n:ISTIO_IN_REDIRECT - [0:0]\n"
      "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"
      "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"
      "-A OUTPUT -j ISTIO_OUTPUT\n"
      "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT\n"
      "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN\n"
      "-A ISTIO_OUTPUT -m owner --gid-owner 888 -j RETURN\n"
      "-A ISTIO_OUTPUT -m owner ! --gid-owner 202 -m owner ! --gid-owner 203 -j RETURN\n"
      "-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"
      "COMMIT\n",
      Family::Ipv4);
  ASSERT_TRUE(r.ok());
  const Explanation excluded = explain(*r.rules, conn("203.0.113.5", 443, 1000, 888), 15001);
  EXPECT_EQ(excluded.reason, Reason::OwnerGid);
  EXPECT_NE(excluded.remedy.find("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"), std::string::npos);
  const Explanation not_listed = explain(*r.rules, conn("203.0.113.5", 443, 1000, 5), 15001);
  EXPECT_EQ(not_listed.reason, Reason::OwnerGid);
  EXPECT_NE(not_listed.remedy.find("202, 203"), std::string::npos) << not_listed.remedy;
  EXPECT_NE(not_listed.remedy.find("ISTIO_OUTBOUND_OWNER_GROUPS "), std::string::npos);
  EXPECT_TRUE(explain(*r.rules, conn("203.0.113.5", 443, 1000, 203), 15001).captured);
  EXPECT_EQ(summarise(*r.rules).proxy_gid, 1337u);
}

TEST(RulesPolicy, NotUnderstoodRulesAreListed) {
  ParseResult r = parseIptables(
      "*nat\n:ISTIO_OUTPUT - [0:0]\n:ISTIO_REDIRECT - [0:0]\n"
      "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"
      "-A OUTPUT -j ISTIO_OUTPUT\n"
      "-A ISTIO_OUTPUT -m owner --uid-owner 1337 --suppl-groups -j RETURN\n"
      "-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"
      "COMMIT\n",
      Family::Ipv4);
  ASSERT_TRUE(r.ok());
  const Policy p = summarise(*r.rules);
  EXPECT_TRUE(p.capture);
  EXPECT_EQ(p.not_understood,
            std::vector<std::string>{
                "-A ISTIO_OUTPUT -m owner --uid-owner 1337 --suppl-groups -j RETURN"});
  EXPECT_NE(p.str().find("not understood: -A ISTIO_OUTPUT"), std::string::npos);
}

TEST(RulesPolicy, CapturedConnectionsHaveNoReason) {
  const Explanation x = explain(iptables("cni-basic.v4.rules"), conn("203.0.113.5", 443), 15001);
  EXPECT_TRUE(x.captured);
  EXPECT_EQ(x.reason, Reason::None);
  EXPECT_EQ(reasonName(x.reason), "");
  EXPECT_EQ(x.rule, "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001");
  EXPECT_TRUE(x.remedy.empty());
  // Redirected, but to another port than the one the agent watches.
  const Explanation other =
      explain(iptables("cni-basic.v4.rules"), conn("203.0.113.5", 443), 15002);
  EXPECT_FALSE(other.captured);
  EXPECT_EQ(other.reason, Reason::Unknown);
}

TEST(RulesPolicy, ReasonNames) {
  EXPECT_EQ(reasonName(Reason::OwnerUid), "owner-uid");
  EXPECT_EQ(reasonName(Reason::OwnerGid), "owner-gid");
  EXPECT_EQ(reasonName(Reason::ExcludedPort), "excluded-port");
  EXPECT_EQ(reasonName(Reason::ExcludedCidr), "excluded-cidr");
  EXPECT_EQ(reasonName(Reason::NotIncluded), "not-included");
  EXPECT_EQ(reasonName(Reason::ExcludedInterface), "excluded-interface");
  EXPECT_EQ(reasonName(Reason::Local), "local");
  EXPECT_EQ(reasonName(Reason::NoCaptureRules), "no-capture-rules");
  EXPECT_EQ(reasonName(Reason::Unknown), "unknown");
}

}  // namespace
}  // namespace cw::rules
