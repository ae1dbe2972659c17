// Unit tests of the startup scan's pure parts: classification of synthetic
// socket and conntrack tables, the sock_diag reply parser, /proc parsing.
#include "startup_scan.h"

// netinet/in.h before the kernel headers (linux/libc-compat.h).
#include <netinet/in.h>

#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace cw {
namespace {

constexpr uint16_t kRedirect = 15001;
constexpr uint64_t kAppCg = 100, kProxyCg = 200;
constexpr uint32_t kNetns = 4026532000u;

Endpoint ep(const std::string& addr, uint16_t port) {
  return Endpoint{Address::parse(addr).value(), port};
}

ScannedSocket sock(uint8_t state, Endpoint local, Endpoint remote, uint64_t inode,
                   uint64_t cgroup = kAppCg, uint32_t uid = 1000) {
  ScannedSocket s;
  s.state = state;
  s.local = local;
  s.remote = remote;
  s.inode = inode;
  s.cgroup_id = cgroup;
  s.uid = uid;
  return s;
}

ScannedSocket listener(const std::string& addr, uint16_t port, uint64_t inode,
                       bool v6only = false) {
  ScannedSocket s = sock(kTcpListen, ep(addr, port),
                         ep(addr.find(':') != std::string::npos ? "::" : "0.0.0.0", 0), inode);
  s.v6only = v6only;
  return s;
}

ClassifyConfig config() {
  ClassifyConfig c;
  c.redirect_port = kRedirect;
  c.proxy_cgroups = {kProxyCg};
  c.netns = kNetns;
  return c;
}

// The app at 198.18.0.2:40000 -> 198.18.0.1:32000, redirected: the sidecar's
// accepted end 127.0.0.1:15001 has the app as peer (a dual-stack [::]
// listener, so v4-mapped), and the sidecar's own connection upstream.
std::vector<ScannedSocket> capturedTable() {
  return {
      listener("::", kRedirect, 1, false),
      sock(kTcpEstablished, ep("198.18.0.2", 40000), ep("198.18.0.1", 32000), 10),
      sock(kTcpEstablished, ep("::ffff:127.0.0.1", kRedirect), ep("::ffff:198.18.0.2", 40000), 11,
           kProxyCg, 1337),
      sock(kTcpEstablished, ep("198.18.0.2", 40001), ep("198.18.0.1", 32000), 12, kProxyCg, 1337),
  };
}

ConntrackEntry redirectEntry(const Endpoint& app, const Endpoint& dst, const Endpoint& sidecar) {
  return ConntrackEntry{app, dst, sidecar, app};
}

ConntrackEntry plainEntry(const Endpoint& src, const Endpoint& dst) {
  return ConntrackEntry{src, dst, dst, src};
}

std::string commOf(const Connection& c) { return std::string(c.comm.data()); }

// The dump keeps what classification can use for the sockets found: an
// entry whose original tuple is an app socket's (local, remote), or whose
// reply tuple is a responding socket's; not the table's other entries (the
// connections that ended and linger there).
TEST(StartupScanClassify, ConntrackFilterKeepsOnlyTheSocketsEntries) {
  const ConntrackFilter keep = conntrackFilterFor(capturedTable());
  EXPECT_TRUE(keep(redirectEntry(ep("198.18.0.2", 40000), ep("198.18.0.1", 32000),
                                 ep("127.0.0.1", kRedirect))));
  EXPECT_TRUE(keep(plainEntry(ep("198.18.0.2", 40001), ep("198.18.0.1", 32000))));
  // Reply tuple (the responder's local, remote) is a socket's.
  EXPECT_TRUE(keep(ConntrackEntry{ep("198.18.0.9", 5000), ep("198.18.0.2", 40000),
                                  ep("198.18.0.2", 40000), ep("198.18.0.1", 32000)}));
  // Another connection of the same app address, ended.
  EXPECT_FALSE(keep(redirectEntry(ep("198.18.0.2", 40002), ep("198.18.0.1", 32000),
                                  ep("127.0.0.1", kRedirect))));
  // The listener's (local, wildcard) is no connection.
  EXPECT_FALSE(keep(plainEntry(ep("::", kRedirect), ep("::", 0))));
  EXPECT_FALSE(conntrackFilterFor({})(plainEntry(ep("198.18.0.2", 40000), ep("198.18.0.1", 32000))));

  // And an ended connection's entry, which the filter drops, does not change
  // the verdict of a socket it is not.
  std::vector<ConntrackEntry> table;
  for (uint16_t port = 41000; port < 41100; ++port) {
    table.push_back(redirectEntry(ep("198.18.0.2", port), ep("198.18.0.1", 32000),
                                  ep("127.0.0.1", kRedirect)));
  }
  const auto with = classifyOpenConnections(capturedTable(), table, {}, config());
  const auto without = classifyOpenConnections(capturedTable(), {}, {}, config());
  ASSERT_EQ(with.size(), without.size());
  for (size_t i = 0; i < with.size(); ++i) EXPECT_EQ(with[i].verdict, without[i].verdict);
}

TEST(StartupScanClassify, EmptyInput) {
  EXPECT_TRUE(classifyOpenConnections({}, {}, {}, config()).empty());
}

TEST(StartupScanClassify, CapturedViaSidecarSocket) {
  Owners owners{{10, OwnerProcess{321, 1001, "envoy"}}, {12, OwnerProcess{99, 1337, "envoy"}}};
  auto out = classifyOpenConnections(capturedTable(), {}, owners, config());
  ASSERT_EQ(out.size(), 2u);  // the sidecar's accepted end and the listener are not reported

  const Connection& app = out[0];
  EXPECT_EQ(app.verdict, Verdict::Captured);
  EXPECT_EQ(app.outcome, Outcome::Open);
  EXPECT_EQ(app.src, ep("198.18.0.2", 40000));
  EXPECT_EQ(app.dst, ep("198.18.0.1", 32000));
  EXPECT_EQ(app.netns, kNetns);
  EXPECT_EQ(app.uid, 1000u);
  EXPECT_EQ(app.gid, 1001u);
  EXPECT_EQ(app.pid, 321u);
  EXPECT_EQ(commOf(app), "envoy");
  EXPECT_EQ(app.cgroup_id, kAppCg);
  EXPECT_EQ(app.sock_id, 10u);
  EXPECT_EQ(app.established_ns, 0u);
  EXPECT_EQ(app.decided_ns, 0u);
  EXPECT_EQ(app.flags, CW_F_OWNER_KNOWN | kScanFlagFoundAtStart);
  EXPECT_TRUE(app.ownerKnown());

  const Connection& proxy = out[1];
  EXPECT_EQ(proxy.verdict, Verdict::Proxy);
  EXPECT_EQ(proxy.src, ep("198.18.0.2", 40001));
  EXPECT_EQ(proxy.uid, 1337u);
  EXPECT_EQ(proxy.pid, 99u);
}

TEST(StartupScanClassify, CapturedViaConntrackOnly) {
  // No sidecar socket visible (e.g. still in its accept queue of another
  // scan): the REDIRECT shows as a reply from the redirect port.
  std::vector<ScannedSocket> sockets = {
      sock(kTcpEstablished, ep("198.18.0.2", 40000), ep("198.18.0.1", 32000), 10)};
  std::vector<ConntrackEntry> ct = {
      redirectEntry(ep("198.18.0.2", 40000), ep("198.18.0.1", 32000), ep("127.0.0.1", kRedirect))};
  auto out = classifyOpenConnections(sockets, ct, {}, config());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].verdict, Verdict::Captured);
  EXPECT_FALSE(out[0].ownerKnown());
  EXPECT_EQ(out[0].pid, 0u);
  EXPECT_EQ(out[0].flags, kScanFlagFoundAtStart);
}

TEST(StartupScanClassify, CapturedIPv6ViaConntrackAndSocket) {
  std::vector<ScannedSocket> sockets = {
      sock(kTcpEstablished, ep("2001:2::2", 40000), ep("2001:2::1", 32000), 10),
      sock(kTcpEstablished, ep("::1", kRedirect), ep("2001:2::2", 40000), 11, kProxyCg, 1337),
  };
  std::vector<ConntrackEntry> ct = {
      redirectEntry(ep("2001:2::2", 40000), ep("2001:2::1", 32000), ep("::1", kRedirect))};
  for (const auto& table : {ct, std::vector<ConntrackEntry>{}}) {
    auto out = classifyOpenConnections(sockets, table, {}, config());
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].verdict, Verdict::Captured);
    EXPECT_EQ(out[0].dst, ep("2001:2::1", 32000));
  }
}

TEST(StartupScanClassify, Bypassed) {
  std::vector<ScannedSocket> sockets = {
      listener("::", kRedirect, 1),
      sock(kTcpEstablished, ep("198.18.0.2", 40000), ep("198.18.0.1", 32000), 10, kAppCg, 1337)};
  std::vector<ConntrackEntry> ct = {plainEntry(ep("198.18.0.2", 40000), ep("198.18.0.1", 32000))};
  for (const auto& table : {ct, std::vector<ConntrackEntry>{}}) {
    auto out = classifyOpenConnections(sockets, table, {}, config());
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].verdict, Verdict::Bypassed);
    EXPECT_EQ(out[0].uid, 1337u);
  }
}

TEST(StartupScanClassify, ConntrackWithoutRedirectOutranksASidecarPeerOnASharedPort) {
  // Two app sockets share local port 40000 towards different destinations:
  // one captured (the sidecar has 198.18.0.2:40000 as peer), one bypassed.
  std::vector<ScannedSocket> sockets = {
      sock(kTcpEstablished, ep("198.18.0.2", 40000), ep("198.18.0.1", 32000), 10),
      sock(kTcpEstablished, ep("198.18.0.2", 40000), ep("198.18.0.9", 80), 13, kAppCg, 1337),
      sock(kTcpEstablished, ep("127.0.0.1", kRedirect), ep("198.18.0.2", 40000), 11, kProxyCg),
  };
  std::vector<ConntrackEntry> ct = {
      redirectEntry(ep("198.18.0.2", 40000), ep("198.18.0.1", 32000), ep("127.0.0.1", kRedirect)),
      plainEntry(ep("198.18.0.2", 40000), ep("198.18.0.9", 80))};
  auto out = classifyOpenConnections(sockets, ct, {}, config());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].dst, ep("198.18.0.1", 32000));
  EXPECT_EQ(out[0].verdict, Verdict::Captured);
  EXPECT_EQ(out[1].dst, ep("198.18.0.9", 80));
  EXPECT_EQ(out[1].verdict, Verdict::Bypassed);
}

TEST(StartupScanClassify, StaleConntrackOfAnotherDestinationIsNotEvidence) {
  // An old redirected entry from the same app port to another destination
  // (e.g. TIME_WAIT) must not make this bypassed connection captured.
  std::vector<ScannedSocket> sockets = {
      sock(kTcpEstablished, ep("198.18.0.2", 40000), ep("198.18.0.9", 80), 10)};
  std::vector<ConntrackEntry> ct = {
      redirectEntry(ep("198.18.0.2", 40000), ep("198.18.0.1", 32000), ep("127.0.0.1", kRedirect))};
  auto out = classifyOpenConnections(sockets, ct, {}, config());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].verdict, Verdict::Bypassed);
}

TEST(StartupScanClassify, Proxy) {
  std::vector<ScannedSocket> sockets = {
      sock(kTcpEstablished, ep("198.18.0.2", 40001), ep("198.18.0.1", 32000), 12, kProxyCg, 1337)};
  auto out = classifyOpenConnections(sockets, {}, {}, config());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].verdict, Verdict::Proxy);
  EXPECT_EQ(out[0].cgroup_id, kProxyCg);

  // The same socket without the sidecar's cgroup configured is a bypass.
  ClassifyConfig none = config();
  none.proxy_cgroups.clear();
  EXPECT_EQ(classifyOpenConnections(sockets, {}, {}, none)[0].verdict, Verdict::Bypassed);
}

TEST(StartupScanClassify, ProxyOutranksCaptured) {
  // A socket of the sidecar's cgroup is the proxy's even if a sidecar end has it as peer.
  std::vector<ScannedSocket> sockets = capturedTable();
  sockets[1].cgroup_id = kProxyCg;
  auto out = classifyOpenConnections(sockets, {}, {}, config());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].verdict, Verdict::Proxy);
}

TEST(StartupScanClassify, LocalLoopbackAndOwnAddress) {
  std::vector<ScannedSocket> sockets = {
      listener("127.0.0.1", 15000, 1),
      listener("::1", 15000, 2, true),
      listener("198.18.0.2", 8080, 3),
      // App -> admin on loopback, both families; and the admin's accepted ends.
      sock(kTcpEstablished, ep("127.0.0.1", 50000), ep("127.0.0.1", 15000), 10),
      sock(kTcpEstablished, ep("127.0.0.1", 15000), ep("127.0.0.1", 50000), 11, kProxyCg),
      sock(kTcpEstablished, ep("::1", 50001), ep("::1", 15000), 12),
      sock(kTcpEstablished, ep("::1", 15000), ep("::1", 50001), 13, kProxyCg),
      // App -> its own pod address, and the accepted end.
      sock(kTcpEstablished, ep("198.18.0.2", 50002), ep("198.18.0.2", 8080), 14),
      sock(kTcpEstablished, ep("198.18.0.2", 8080), ep("198.18.0.2", 50002), 15),
      // 127.0.0.2 is loopback too.
      sock(kTcpEstablished, ep("127.0.0.1", 50003), ep("127.0.0.2", 9999), 16),
  };
  auto out = classifyOpenConnections(sockets, {}, {}, config());
  ASSERT_EQ(out.size(), 4u);
  for (const auto& c : out) EXPECT_EQ(c.verdict, Verdict::Local) << c.src.str();
  // By address bytes: ::1 before the v4-mapped ::ffff:a.b.c.d.
  EXPECT_EQ(out[0].src, ep("::1", 50001));
  EXPECT_EQ(out[1].src, ep("127.0.0.1", 50000));
  EXPECT_EQ(out[2].src, ep("127.0.0.1", 50003));
  EXPECT_EQ(out[3].src, ep("198.18.0.2", 50002));
}

TEST(StartupScanClassify, InboundAcceptedSocketsAreSkipped) {
  std::vector<ScannedSocket> sockets = {
      listener("0.0.0.0", 8080, 1),
      listener("198.18.0.2", 9090, 2),
      listener("::", 15006, 3, false),  // Istio's inbound capture port, dual-stack
      listener("::", 7070, 4, false),
      sock(kTcpEstablished, ep("198.18.0.2", 8080), ep("198.18.0.1", 50000), 10),
      sock(kTcpEstablished, ep("198.18.0.2", 9090), ep("198.18.0.1", 50001), 11),
      sock(kTcpEstablished, ep("198.18.0.2", 15006), ep("198.18.0.1", 50002), 12, kProxyCg),
      sock(kTcpEstablished, ep("2001:2::2", 7070), ep("2001:2::1", 50003), 13),
      sock(kTcpEstablished, ep("198.18.0.2", 7070), ep("198.18.0.1", 50004), 14),
      // Accepted but not yet accept()ed: no inode.
      sock(kTcpEstablished, ep("198.18.0.2", 8080), ep("198.18.0.1", 50005), 0),
  };
  EXPECT_TRUE(classifyOpenConnections(sockets, {}, {}, config()).empty());
}

TEST(StartupScanClassify, ListenerAddressAndFamilyMustMatch) {
  std::vector<ScannedSocket> sockets = {
      listener("198.18.0.2", 8080, 1),  // a specific address
      listener("0.0.0.0", 8081, 2),     // IPv4 only
      listener("::", 8082, 3, true),    // IPv6 only
      // Outbound sockets that happen to use those ports from elsewhere.
      sock(kTcpEstablished, ep("127.0.0.1", 8080), ep("198.18.0.1", 1), 10),
      sock(kTcpEstablished, ep("2001:2::2", 8081), ep("2001:2::1", 2), 11),
      sock(kTcpEstablished, ep("198.18.0.2", 8082), ep("198.18.0.1", 3), 12),
  };
  auto out = classifyOpenConnections(sockets, {}, {}, config());
  ASSERT_EQ(out.size(), 3u);
  for (const auto& c : out) EXPECT_EQ(c.verdict, Verdict::Bypassed) << c.src.str();
}

TEST(StartupScanClassify, DualStackV4MappedListenerAndPeer) {
  // An AF_INET6 socket talking IPv4 reports v4-mapped addresses, which the
  // scan keeps as they are: they equal the AF_INET form.
  std::vector<ScannedSocket> sockets = {
      listener("::", kRedirect, 1, false),
      listener("::", 8080, 2, false),
      // Inbound over IPv4 to the dual-stack listener: skipped.
      sock(kTcpEstablished, ep("::ffff:198.18.0.2", 8080), ep("::ffff:198.18.0.1", 50000), 10),
      // An AF_INET6 app socket connecting to an IPv4 destination, captured
      // by a sidecar end written in AF_INET form.
      sock(kTcpEstablished, ep("::ffff:198.18.0.2", 40000), ep("::ffff:198.18.0.1", 32000), 11),
      sock(kTcpEstablished, ep("127.0.0.1", kRedirect), ep("198.18.0.2", 40000), 12, kProxyCg),
  };
  auto out = classifyOpenConnections(sockets, {}, {}, config());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].verdict, Verdict::Captured);
  EXPECT_EQ(out[0].src, ep("198.18.0.2", 40000));
  EXPECT_EQ(out[0].dst.str(), "198.18.0.1:32000");
}

TEST(StartupScanClassify, SynSentIsReportedAsConnecting) {
  std::vector<ScannedSocket> sockets = {
      sock(kTcpSynSent, ep("198.18.0.2", 40000), ep("198.18.0.1", 32000), 10),
      sock(kTcpSynSent, ep("198.18.0.2", 40001), ep("198.18.0.9", 80), 11, kAppCg, 1337),
      // A listener on the SYN_SENT socket's port does not make it inbound.
      listener("0.0.0.0", 40001, 3),
  };
  std::vector<ConntrackEntry> ct = {
      redirectEntry(ep("198.18.0.2", 40000), ep("198.18.0.1", 32000), ep("127.0.0.1", kRedirect)),
      plainEntry(ep("198.18.0.2", 40001), ep("198.18.0.9", 80))};
  auto out = classifyOpenConnections(sockets, ct, {}, config());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].verdict, Verdict::Captured);
  EXPECT_EQ(out[1].verdict, Verdict::Bypassed);
  for (const auto& c : out) {
    EXPECT_EQ(c.outcome, Outcome::Open);
    EXPECT_EQ(c.flags, kScanFlagFoundAtStart | kScanFlagConnecting);
  }
}

TEST(StartupScanClassify, ConntrackRespondingEndIsInbound) {
  // Accepted socket whose listener has since closed: conntrack still says
  // the peer opened it.
  std::vector<ScannedSocket> sockets = {
      sock(kTcpEstablished, ep("198.18.0.2", 8080), ep("198.18.0.1", 50000), 10),
      sock(kTcpEstablished, ep("198.18.0.2", 40000), ep("198.18.0.1", 80), 11),
  };
  std::vector<ConntrackEntry> ct = {plainEntry(ep("198.18.0.1", 50000), ep("198.18.0.2", 8080)),
                                    plainEntry(ep("198.18.0.2", 40000), ep("198.18.0.1", 80))};
  auto out = classifyOpenConnections(sockets, ct, {}, config());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].src, ep("198.18.0.2", 40000));
}

TEST(StartupScanClassify, DirectConnectionToTheRedirectPortIsNotARedirect) {
  // The app connects to the sidecar's port itself (no NAT): local, not captured.
  std::vector<ScannedSocket> sockets = {
      listener("::", kRedirect, 1),
      sock(kTcpEstablished, ep("127.0.0.1", 40000), ep("127.0.0.1", kRedirect), 10),
      sock(kTcpEstablished, ep("127.0.0.1", kRedirect), ep("127.0.0.1", 40000), 11, kProxyCg),
  };
  std::vector<ConntrackEntry> ct = {plainEntry(ep("127.0.0.1", 40000), ep("127.0.0.1", kRedirect))};
  for (const auto& table : {ct, std::vector<ConntrackEntry>{}}) {
    auto out = classifyOpenConnections(sockets, table, {}, config());
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].verdict, Verdict::Local);
  }
}

TEST(StartupScanClassify, OddInputs) {
  std::vector<ScannedSocket> sockets = {
      // Unknown states (e.g. FIN_WAIT1 = 4, CLOSE = 7) and zero state: ignored.
      sock(4, ep("198.18.0.2", 40000), ep("198.18.0.1", 80), 20),
      sock(7, ep("198.18.0.2", 40001), ep("198.18.0.1", 80), 21),
      sock(0, ep("198.18.0.2", 40002), ep("198.18.0.1", 80), 22),
      // Established with an unspecified remote or port 0: ignored.
      sock(kTcpEstablished, ep("198.18.0.2", 40003), ep("0.0.0.0", 80), 23),
      sock(kTcpEstablished, ep("198.18.0.2", 40004), ep("::", 80), 24),
      sock(kTcpEstablished, ep("198.18.0.2", 40005), ep("198.18.0.1", 0), 25),
      // The same inode twice: reported once.
      sock(kTcpEstablished, ep("198.18.0.2", 40006), ep("198.18.0.1", 80), 26),
      sock(kTcpEstablished, ep("198.18.0.2", 40006), ep("198.18.0.1", 80), 26),
      // Inode 0 (no file): reported, owner unknown even if the map has 0.
      sock(kTcpEstablished, ep("198.18.0.2", 40007), ep("198.18.0.1", 80), 0),
      // A SYN_SENT "sidecar end" on the redirect port: not a join, not reported.
      sock(kTcpSynSent, ep("198.18.0.2", kRedirect), ep("198.18.0.1", 80), 27),
      // A listener with a nonzero remote (nonsense): still only a listener.
      sock(kTcpListen, ep("198.18.0.2", 9), ep("198.18.0.1", 9), 28),
  };
  // Conntrack with nonsense: an entry whose reply port is the redirect port
  // but which is the original destination itself (not a redirect).
  std::vector<ConntrackEntry> ct = {
      ConntrackEntry{ep("198.18.0.2", 40006), ep("198.18.0.1", kRedirect),
                     ep("198.18.0.1", kRedirect), ep("198.18.0.2", 40006)},
      ConntrackEntry{},
  };
  Owners owners{{0, OwnerProcess{1, 0, "init"}},
                {26, OwnerProcess{7, 7, "a-very-long-process-name"}}};
  auto out = classifyOpenConnections(sockets, ct, owners, config());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].sock_id, 26u);
  EXPECT_EQ(out[0].verdict, Verdict::Bypassed);
  EXPECT_EQ(out[0].pid, 7u);
  EXPECT_EQ(commOf(out[0]), "a-very-long-pro");  // CW_COMM_LEN - 1 characters
  EXPECT_EQ(out[1].sock_id, 0u);
  EXPECT_FALSE(out[1].ownerKnown());
  EXPECT_EQ(out[1].pid, 0u);
}

TEST(StartupScanClassify, DeterministicOrder) {
  std::vector<ScannedSocket> sockets = {
      sock(kTcpEstablished, ep("2001:2::2", 1), ep("2001:2::1", 80), 1),
      sock(kTcpEstablished, ep("198.18.0.2", 3), ep("198.18.0.1", 80), 2),
      sock(kTcpEstablished, ep("198.18.0.2", 2), ep("198.18.0.1", 81), 3),
      sock(kTcpEstablished, ep("198.18.0.2", 2), ep("198.18.0.1", 80), 4),
  };
  auto a = classifyOpenConnections(sockets, {}, {}, config());
  std::vector<ScannedSocket> reversed(sockets.rbegin(), sockets.rend());
  auto b = classifyOpenConnections(reversed, {}, {}, config());
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  const std::vector<uint64_t> expected = {4, 3, 2, 1};  // v4-mapped (::ffff:...) before 2001:...
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(a[i].sock_id, expected[i]);
    EXPECT_EQ(b[i].sock_id, expected[i]);
  }
}

// ---- sock_diag parser ---------------------------------------------------------

constexpr uint32_t kSeq = 7;

void appendAttr(std::vector<uint8_t>& msg, uint16_t type, const void* data, size_t len) {
  nlattr a{};
  a.nla_len = static_cast<uint16_t>(sizeof a + len);
  a.nla_type = type;
  const size_t start = msg.size();
  msg.resize(start + NLA_ALIGN(a.nla_len));
  std::memcpy(msg.data() + start, &a, sizeof a);
  std::memcpy(msg.data() + start + sizeof a, data, len);
}

// One SOCK_DIAG_BY_FAMILY message (header included) for an IPv4 socket.
std::vector<uint8_t> diagMessage(uint8_t family, uint8_t state, uint32_t inode,
                                 std::vector<uint8_t> attrs = {}, uint32_t seq = kSeq) {
  inet_diag_msg m{};
  m.idiag_family = family;
  m.idiag_state = state;
  m.id.idiag_sport = htons(40000);
  m.id.idiag_dport = htons(32000);
  if (family == AF_INET) {
    inet_pton(AF_INET, "198.18.0.2", &m.id.idiag_src[0]);
    inet_pton(AF_INET, "198.18.0.1", &m.id.idiag_dst[0]);
  } else {
    inet_pton(AF_INET6, "2001:2::2", m.id.idiag_src);
    inet_pton(AF_INET6, "2001:2::1", m.id.idiag_dst);
  }
  m.idiag_uid = 1337;
  m.idiag_inode = inode;
  nlmsghdr h{};
  h.nlmsg_len = static_cast<uint32_t>(NLMSG_HDRLEN + sizeof m + attrs.size());
  h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  h.nlmsg_flags = NLM_F_MULTI;
  h.nlmsg_seq = seq;
  std::vector<uint8_t> out(NLMSG_ALIGN(h.nlmsg_len));
  std::memcpy(out.data(), &h, sizeof h);
  std::memcpy(out.data() + NLMSG_HDRLEN, &m, sizeof m);
  if (!attrs.empty()) std::memcpy(out.data() + NLMSG_HDRLEN + sizeof m, attrs.data(), attrs.size());
  return out;
}

std::vector<uint8_t> controlMessage(uint16_t type, int value, uint32_t seq = kSeq) {
  nlmsghdr h{};
  h.nlmsg_len = NLMSG_LENGTH(sizeof value);
  h.nlmsg_type = type;
  h.nlmsg_seq = seq;
  std::vector<uint8_t> out(NLMSG_ALIGN(h.nlmsg_len));
  std::memcpy(out.data(), &h, sizeof h);
  std::memcpy(out.data() + NLMSG_HDRLEN, &value, sizeof value);
  return out;
}

std::vector<uint8_t> concat(std::initializer_list<std::vector<uint8_t>> parts) {
  std::vector<uint8_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

bool parse(const std::vector<uint8_t>& d, std::vector<ScannedSocket>& out, size_t max = 100) {
  return scan_detail::parseInetDiagDatagram(std::span<const uint8_t>(d.data(), d.size()), kSeq, out,
                                            max);
}

TEST(StartupScanParser, SocketsWithAttributesThenDone) {
  std::vector<uint8_t> attrs;
  const uint8_t shutdown = 0;
  appendAttr(attrs, INET_DIAG_SHUTDOWN, &shutdown, 1);
  const uint64_t cg = 0x1234567890ull;
  appendAttr(attrs, INET_DIAG_CGROUP_ID, &cg, sizeof cg);
  std::vector<uint8_t> v6attrs;
  const uint8_t one = 1;
  appendAttr(v6attrs, INET_DIAG_SKV6ONLY, &one, 1);

  std::vector<ScannedSocket> out;
  EXPECT_FALSE(parse(diagMessage(AF_INET, kTcpEstablished, 42, attrs), out));
  EXPECT_TRUE(
      parse(concat({diagMessage(AF_INET6, kTcpListen, 43, v6attrs), controlMessage(NLMSG_DONE, 0)}),
            out));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].local.str(), "198.18.0.2:40000");
  EXPECT_EQ(out[0].remote.str(), "198.18.0.1:32000");
  EXPECT_EQ(out[0].state, kTcpEstablished);
  EXPECT_EQ(out[0].uid, 1337u);
  EXPECT_EQ(out[0].inode, 42u);
  EXPECT_EQ(out[0].cgroup_id, cg);
  EXPECT_FALSE(out[0].v6only);
  EXPECT_EQ(out[1].local.str(), "[2001:2::2]:40000");
  EXPECT_EQ(out[1].state, kTcpListen);
  EXPECT_TRUE(out[1].v6only);
  EXPECT_EQ(out[1].cgroup_id, 0u);  // not reported: 0
}

TEST(StartupScanParser, OtherSequenceAndTypesAreSkipped) {
  std::vector<ScannedSocket> out;
  EXPECT_FALSE(parse(concat({diagMessage(AF_INET, kTcpEstablished, 1, {}, kSeq + 1),
                             controlMessage(NLMSG_DONE, 0, kSeq + 1), controlMessage(NLMSG_NOOP, 0),
                             diagMessage(AF_UNIX, kTcpEstablished, 2)}),
                     out));
  EXPECT_TRUE(out.empty());
}

TEST(StartupScanParser, ErrorsThrow) {
  std::vector<ScannedSocket> out;
  EXPECT_THROW(parse(controlMessage(NLMSG_ERROR, -EPERM), out), std::runtime_error);
  EXPECT_THROW(parse(controlMessage(NLMSG_DONE, -EINTR), out), std::runtime_error);
}

TEST(StartupScanParser, MalformedLengthsThrow) {
  std::vector<ScannedSocket> out;
  auto msg = diagMessage(AF_INET, kTcpEstablished, 1);

  // Truncated netlink header.
  EXPECT_THROW(parse(std::vector<uint8_t>(msg.begin(), msg.begin() + 8), out), std::runtime_error);
  // nlmsg_len larger than the datagram.
  EXPECT_THROW(parse(std::vector<uint8_t>(msg.begin(), msg.end() - 4), out), std::runtime_error);
  // nlmsg_len smaller than a header.
  auto tiny = msg;
  uint32_t len = 8;
  std::memcpy(tiny.data(), &len, sizeof len);
  EXPECT_THROW(parse(tiny, out), std::runtime_error);
  // A message too short for inet_diag_msg.
  auto shortmsg = msg;
  len = NLMSG_HDRLEN + 10;
  std::memcpy(shortmsg.data(), &len, sizeof len);
  shortmsg.resize(NLMSG_ALIGN(len));
  EXPECT_THROW(parse(shortmsg, out), std::runtime_error);

  // Attribute length past the message, below the header, and a short cgroup id.
  std::vector<uint8_t> bad(sizeof(nlattr));
  nlattr a{};
  a.nla_len = 200;
  a.nla_type = INET_DIAG_CGROUP_ID;
  std::memcpy(bad.data(), &a, sizeof a);
  EXPECT_THROW(parse(diagMessage(AF_INET, kTcpEstablished, 1, bad), out), std::runtime_error);
  a.nla_len = 2;
  std::memcpy(bad.data(), &a, sizeof a);
  EXPECT_THROW(parse(diagMessage(AF_INET, kTcpEstablished, 1, bad), out), std::runtime_error);
  std::vector<uint8_t> short_cg;
  const uint32_t four = 4;
  appendAttr(short_cg, INET_DIAG_CGROUP_ID, &four, sizeof four);
  EXPECT_THROW(parse(diagMessage(AF_INET, kTcpEstablished, 1, short_cg), out), std::runtime_error);
  // A truncated attribute header (2 bytes left).
  std::vector<uint8_t> stub = {4, 0};
  EXPECT_THROW(parse(diagMessage(AF_INET, kTcpEstablished, 1, stub), out), std::runtime_error);
  EXPECT_TRUE(out.empty());
}

TEST(StartupScanParser, LimitDropsTheRest) {
  std::vector<ScannedSocket> out;
  EXPECT_FALSE(parse(
      concat({diagMessage(AF_INET, kTcpEstablished, 1), diagMessage(AF_INET, kTcpEstablished, 2),
              diagMessage(AF_INET, kTcpEstablished, 3)}),
      out, 2));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[1].inode, 2u);
}

TEST(StartupScanParser, EmptyDatagram) {
  std::vector<ScannedSocket> out;
  EXPECT_FALSE(parse({}, out));
}

// ---- /proc parsing --------------------------------------------------------------

TEST(StartupScanProc, SocketLinks) {
  EXPECT_EQ(scan_detail::parseSocketLink("socket:[12345]"), 12345u);
  EXPECT_EQ(scan_detail::parseSocketLink("socket:[4026531993]"), 4026531993u);
  EXPECT_EQ(scan_detail::parseSocketLink("socket:[]"), 0u);
  EXPECT_EQ(scan_detail::parseSocketLink("socket:[12a]"), 0u);
  EXPECT_EQ(scan_detail::parseSocketLink("socket:[-1]"), 0u);
  EXPECT_EQ(scan_detail::parseSocketLink("socket:[99999999999999999999999]"), 0u);
  EXPECT_EQ(scan_detail::parseSocketLink("socket:[12"), 0u);
  EXPECT_EQ(scan_detail::parseSocketLink("pipe:[12345]"), 0u);
  EXPECT_EQ(scan_detail::parseSocketLink("/dev/null"), 0u);
  EXPECT_EQ(scan_detail::parseSocketLink(""), 0u);
}

TEST(StartupScanProc, StatusGid) {
  EXPECT_EQ(scan_detail::parseStatusGid("Name:\tenvoy\nUid:\t1337\t1337\t1337\t1337\n"
                                        "Gid:\t1001\t1002\t1003\t1004\nGroups:\t\n"),
            1001u);
  EXPECT_EQ(scan_detail::parseStatusGid("Gid:\t0\t0\t0\t0"), 0u);
  EXPECT_EQ(scan_detail::parseStatusGid("Name:\tx\n"), std::nullopt);
  EXPECT_EQ(scan_detail::parseStatusGid("Gid:\n"), std::nullopt);
  EXPECT_EQ(scan_detail::parseStatusGid("Gid:\tabc\t1\n"), std::nullopt);
  EXPECT_EQ(scan_detail::parseStatusGid("Gid:\t99999999999\n"), std::nullopt);
  EXPECT_EQ(scan_detail::parseStatusGid("XGid:\t5\nGid: 6 6 6 6\n"), 6u);
  EXPECT_EQ(scan_detail::parseStatusGid(""), std::nullopt);
}

// A fake proc tree: PID/fd/N symlinks to "socket:[inode]" (dangling, as
// readlink needs no target), PID/comm, PID/status.
class FakeProc {
 public:
  FakeProc() {
    root_ = std::filesystem::temp_directory_path() /
            ("cw-scan-proc-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(root_);
    std::filesystem::create_directories(root_);
  }
  ~FakeProc() {
    std::error_code ec;
    std::filesystem::remove_all(root_, ec);
  }
  void process(uint32_t pid, const std::string& comm, const std::string& gid_line,
               const std::vector<std::string>& links) {
    const auto dir = root_ / std::to_string(pid);
    std::filesystem::create_directories(dir / "fd");
    std::ofstream(dir / "comm") << comm << "\n";
    std::ofstream(dir / "status") << "Name:\t" << comm << "\nUid:\t0\t0\t0\t0\n"
                                  << gid_line << "\n";
    for (size_t i = 0; i < links.size(); ++i) {
      std::filesystem::create_symlink(links[i], dir / "fd" / std::to_string(i));
    }
  }
  std::string path() const { return root_.string(); }
  const std::filesystem::path& root() const { return root_; }

 private:
  std::filesystem::path root_;
};

TEST(StartupScanProc, SocketOwners) {
  FakeProc proc;
  proc.process(300, "envoy", "Gid:\t1337\t1337\t1337\t1337", {"socket:[555]", "socket:[777]"});
  proc.process(42, "curl", "Gid:\t1000\t1000\t1000\t1000",
               {"/dev/null", "pipe:[9]", "socket:[555]", "socket:[888]"});
  proc.process(7, "nogid", "Groups:", {"socket:[999]"});
  proc.process(8, "unrelated", "Gid:\t5\t5\t5\t5", {"socket:[1]"});
  std::filesystem::create_directories(proc.root() / "self" / "fd");  // not a pid: skipped
  std::filesystem::create_directories(proc.root() / "9");            // no fd directory: skipped

  auto owners = socketOwners(proc.path(), {555, 777, 888, 999, 4242});
  ASSERT_EQ(owners.size(), 4u);
  EXPECT_EQ(owners.at(555).pid, 42u);  // held by two processes: the lowest pid
  EXPECT_EQ(owners.at(555).comm, "curl");
  EXPECT_EQ(owners.at(555).gid, 1000u);
  EXPECT_EQ(owners.at(888).pid, 42u);
  EXPECT_EQ(owners.at(777).pid, 300u);
  EXPECT_EQ(owners.at(777).comm, "envoy");
  EXPECT_EQ(owners.at(777).gid, 1337u);
  EXPECT_EQ(owners.at(999).pid, 7u);
  EXPECT_EQ(owners.at(999).gid, 0u);  // no Gid line
  EXPECT_FALSE(owners.contains(4242));

  EXPECT_TRUE(socketOwners(proc.path(), {}).empty());
  EXPECT_TRUE(socketOwners(proc.path() + "/missing", {555}).empty());
}

TEST(StartupScanProc, SocketOwnersIsBounded) {
  FakeProc proc;
  proc.process(1, "a", "Gid:\t1\t1\t1\t1", {"socket:[10]", "socket:[11]", "socket:[12]"});
  proc.process(2, "b", "Gid:\t2\t2\t2\t2", {"socket:[20]"});
  // Three descriptors in all: process 2 is never read.
  auto owners = socketOwners(proc.path(), {10, 20}, 3);
  EXPECT_TRUE(owners.contains(10));
  EXPECT_FALSE(owners.contains(20));
  EXPECT_TRUE(socketOwners(proc.path(), {20}, 4).contains(20));
}

}  // namespace
}  // namespace cw
