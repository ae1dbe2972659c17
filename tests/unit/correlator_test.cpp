#include "correlator.h"

#include <sys/socket.h>

#include <cstring>
#include <map>
#include <vector>

#include <gtest/gtest.h>

namespace cw {
namespace {

constexpr uint32_t kNetns = 4026532001U;
constexpr uint32_t kOtherNetns = 4026532002U;
constexpr uint64_t kGrace = 200'000'000;
constexpr uint64_t kAppCgroup = 5001;
constexpr uint64_t kProxyCgroup = 9001;
constexpr uint64_t kT0 = 1'000'000'000'000;  // an arbitrary CLOCK_MONOTONIC instant
constexpr uint16_t kRedirectPort = 15001;

Address ip(const char* text) {
  auto a = Address::parse(text);
  EXPECT_TRUE(a.has_value()) << text;
  return a.value_or(Address{});
}

Endpoint ep(const char* text, uint16_t port) { return Endpoint{ip(text), port}; }

ConnEvent appEvent(EventKind kind, uint64_t sock, uint64_t ts, Endpoint src, Endpoint dst) {
  ConnEvent ev;
  ev.kind = kind;
  ev.flags = CW_F_OWNER_KNOWN;
  ev.ts_ns = ts;
  ev.sock_id = sock;
  ev.cgroup_id = kAppCgroup;
  ev.netns = kNetns;
  ev.pid = 4321;
  ev.uid = 1000;
  ev.gid = 1001;
  ev.src = src;
  ev.dst = dst;
  std::memcpy(ev.comm.data(), "curl", 5);
  return ev;
}

// The app's socket 198.18.0.2:<sport> reached ESTABLISHED towards dst.
ConnEvent connected(uint64_t sock, uint64_t ts, uint16_t sport,
                    Endpoint dst = ep("198.19.0.1", 8080)) {
  return appEvent(EventKind::ActiveEstablished, sock, ts, ep("198.18.0.2", sport), dst);
}

ConnEvent connectFailed(uint64_t sock, uint64_t ts, uint16_t sport, uint8_t flags = 0,
                        Endpoint dst = ep("198.19.0.1", 8080)) {
  ConnEvent ev = appEvent(EventKind::ActiveFailed, sock, ts, ep("198.18.0.2", sport), dst);
  ev.flags |= flags;
  return ev;
}

ConnEvent closed(uint64_t sock, uint64_t ts, uint8_t flags = 0, uint64_t bytes = 0) {
  ConnEvent ev =
      appEvent(EventKind::ActiveClosed, sock, ts, ep("198.18.0.2", 0), ep("198.19.0.1", 8080));
  ev.flags |= flags;
  ev.bytes_received = bytes;
  return ev;
}

// The sidecar's socket on the redirect port reached ESTABLISHED with peer app.
ConnEvent accepted(uint64_t ts, Endpoint app, uint32_t netns = kNetns) {
  ConnEvent ev;
  ev.kind = EventKind::PassiveEstablished;
  ev.ts_ns = ts;
  ev.sock_id = 0xdead0000 + ts;  // the sidecar's socket, not the app's
  ev.netns = netns;
  ev.src = Endpoint{app.addr.isV4() ? ip("127.0.0.1") : ip("::1"), kRedirectPort};
  ev.dst = app;
  return ev;
}

ConnEvent accepted(uint64_t ts, uint16_t app_port) {
  return accepted(ts, ep("198.18.0.2", app_port));
}

class CorrelatorTest : public ::testing::Test {
 protected:
  explicit CorrelatorTest(Correlator::Config config = {.grace_ns = kGrace}) : correlator_(config) {
    correlator_.addProxyCgroup(kProxyCgroup);
  }

  std::vector<Decision> feed(const ConnEvent& ev) {
    std::vector<Decision> out;
    correlator_.onEvent(ev, out);
    return out;
  }

  std::vector<Decision> expire(uint64_t now_ns) {
    std::vector<Decision> out;
    correlator_.expire(now_ns, out);
    return out;
  }

  // Feeds a raw ring-buffer record through decodeEvent.
  std::vector<Decision> feedRaw(const cw_event& raw) {
    std::vector<uint8_t> buf(sizeof raw);
    std::memcpy(buf.data(), &raw, sizeof raw);
    auto ev = decodeEvent(buf);
    EXPECT_TRUE(ev.has_value());
    return ev ? feed(*ev) : std::vector<Decision>{};
  }

  void expectEmpty() const {
    EXPECT_EQ(correlator_.pendingConnections(), 0U);
    EXPECT_EQ(correlator_.pendingAccepts(), 0U);
    EXPECT_EQ(correlator_.followed(), 0U);
  }

  Correlator correlator_;
};

// One decision of type Verdict with these fields.
void expectVerdict(const std::vector<Decision>& out, Verdict verdict, Outcome outcome,
                   uint64_t sock, uint64_t decided_ns) {
  ASSERT_EQ(out.size(), 1U);
  EXPECT_EQ(out[0].type, Decision::Type::Verdict);
  EXPECT_EQ(out[0].conn.verdict, verdict) << toString(out[0].conn.verdict);
  EXPECT_EQ(out[0].conn.outcome, outcome) << toString(out[0].conn.outcome);
  EXPECT_EQ(out[0].conn.sock_id, sock);
  EXPECT_EQ(out[0].conn.decided_ns, decided_ns);
}

// Accepts lost in the kernel (ring buffer full): a connection that finds no
// accept is Unknown if the loss was noticed after it was established, and
// still Bypassed if every loss predates it. Never captured, never followed.
TEST_F(CorrelatorTest, ConnectionsWaitingWhenAcceptsWereLostAreUnknown) {
  EXPECT_TRUE(feed(connected(1, 1000, 40001)).empty());
  correlator_.noteLostAccepts(1500);  // noticed after connection 1 was established
  EXPECT_TRUE(feed(connected(2, 2000, 40002)).empty());
  EXPECT_TRUE(feed(connected(3, 3000, 40003)).empty());
  EXPECT_TRUE(feed(accepted(3100, 40003)).size() == 1) << "a seen accept still joins";

  auto out = expire(1000 + kGrace);
  expectVerdict(out, Verdict::Unknown, Outcome::Open, 1, 1000 + kGrace);
  out = expire(2000 + kGrace);
  expectVerdict(out, Verdict::Bypassed, Outcome::Open, 2, 2000 + kGrace);
  EXPECT_EQ(correlator_.followed(), 1U) << "only the bypassed one is followed";

  correlator_.noteLostAccepts(2000);  // a loss at the very time of establishment counts
  EXPECT_TRUE(feed(connected(4, 2000, 40004)).empty());
  expectVerdict(expire(2000 + kGrace + 1), Verdict::Unknown, Outcome::Open, 4, 2000 + kGrace + 1);
}

// The agent reads "now" before draining the ring buffer, so events can be
// newer than now, and the first expiry can come before one grace window has
// passed since boot: neither expires anything early nor underflows.
TEST_F(CorrelatorTest, EventsNewerThanNowAndEarlyClocksExpireNothingEarly) {
  EXPECT_TRUE(expire(kGrace / 2).empty());
  EXPECT_TRUE(feed(connected(1, 5 * kGrace, 40001)).empty());
  EXPECT_TRUE(expire(kGrace / 2).empty()) << "now before the event";
  EXPECT_TRUE(expire(5 * kGrace).empty()) << "now == the event's time";
  EXPECT_TRUE(expire(6 * kGrace - 1).empty()) << "one ns before its grace ends";
  expectVerdict(expire(6 * kGrace), Verdict::Bypassed, Outcome::Open, 1, 6 * kGrace);
  // An accept stamped before its connection (clocks of two CPUs) still joins.
  EXPECT_TRUE(feed(accepted(7 * kGrace - 5, 40002)).empty());
  auto out = feed(connected(2, 7 * kGrace, 40002));
  ASSERT_EQ(out.size(), 1U);
  EXPECT_EQ(out[0].conn.verdict, Verdict::Captured);
}

TEST_F(CorrelatorTest, ActiveThenAcceptIsCaptured) {
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_EQ(correlator_.pendingConnections(), 1U);

  const auto out = feed(accepted(kT0 + 30'000, 40000));
  expectVerdict(out, Verdict::Captured, Outcome::Open, 1, kT0 + 30'000);
  const Connection& c = out[0].conn;
  EXPECT_EQ(c.flags, CW_F_OWNER_KNOWN);
  EXPECT_TRUE(c.ownerKnown());
  EXPECT_EQ(c.netns, kNetns);
  EXPECT_EQ(c.pid, 4321U);
  EXPECT_EQ(c.uid, 1000U);
  EXPECT_EQ(c.gid, 1001U);
  EXPECT_EQ(c.cgroup_id, kAppCgroup);
  EXPECT_EQ(c.established_ns, kT0);
  EXPECT_EQ(c.src, ep("198.18.0.2", 40000));
  EXPECT_EQ(c.dst, ep("198.19.0.1", 8080));  // pre-NAT, not the redirect port
  EXPECT_STREQ(c.comm.data(), "curl");
  expectEmpty();

  // Captured connections are not followed: their close reports nothing, and
  // nothing is left to expire.
  EXPECT_TRUE(feed(closed(1, kT0 + 1'000'000, CW_F_RESET_RECEIVED)).empty());
  EXPECT_TRUE(expire(kT0 + 10 * kGrace).empty());
  EXPECT_EQ(correlator_.stats().orphan_accepts, 0U);
  EXPECT_EQ(correlator_.stats().duplicates, 0U);
  EXPECT_EQ(correlator_.stats().events, 3U);
}

TEST_F(CorrelatorTest, AcceptBeforeActiveIsCaptured) {
  EXPECT_TRUE(feed(accepted(kT0, 40000)).empty());
  EXPECT_EQ(correlator_.pendingAccepts(), 1U);

  const auto out = feed(connected(1, kT0 + 5'000, 40000));
  expectVerdict(out, Verdict::Captured, Outcome::Open, 1, kT0 + 5'000);
  EXPECT_EQ(out[0].conn.established_ns, kT0 + 5'000);
  expectEmpty();
  EXPECT_TRUE(expire(kT0 + 10 * kGrace).empty());
  EXPECT_EQ(correlator_.stats().orphan_accepts, 0U);
}

TEST_F(CorrelatorTest, AcceptWithEarlierTimestampStillJoins) {
  // Events of different CPUs: the accept arrives later but carries an
  // earlier timestamp.
  EXPECT_TRUE(feed(connected(1, kT0 + 5'000, 40000)).empty());
  expectVerdict(feed(accepted(kT0, 40000)), Verdict::Captured, Outcome::Open, 1, kT0);
}

TEST_F(CorrelatorTest, NoAcceptIsBypassedExactlyAtGraceEnd) {
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_TRUE(expire(kT0).empty());
  EXPECT_TRUE(expire(kT0 + kGrace - 1).empty());
  EXPECT_EQ(correlator_.pendingConnections(), 1U);

  const auto out = expire(kT0 + kGrace);
  expectVerdict(out, Verdict::Bypassed, Outcome::Open, 1, kT0 + kGrace);
  EXPECT_EQ(out[0].conn.established_ns, kT0);
  EXPECT_EQ(out[0].conn.dst, ep("198.19.0.1", 8080));
  EXPECT_EQ(correlator_.pendingConnections(), 0U);
  EXPECT_EQ(correlator_.followed(), 1U);
  EXPECT_TRUE(expire(kT0 + 2 * kGrace).empty());  // reported once
}

TEST_F(CorrelatorTest, AcceptAfterBypassedVerdictDoesNotChangeIt) {
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  ASSERT_EQ(expire(kT0 + kGrace).size(), 1U);
  EXPECT_TRUE(feed(accepted(kT0 + kGrace + 1, 40000)).empty());
  EXPECT_EQ(correlator_.pendingAccepts(), 1U);
  EXPECT_TRUE(expire(kT0 + 2 * kGrace + 1).empty());
  EXPECT_EQ(correlator_.stats().orphan_accepts, 1U);
}

TEST_F(CorrelatorTest, Ipv6Join) {
  const Endpoint app = ep("2001:2::2", 40000);
  EXPECT_TRUE(
      feed(appEvent(EventKind::ActiveEstablished, 1, kT0, app, ep("2001:3::1", 443))).empty());
  const auto out = feed(accepted(kT0 + 1'000, app));
  expectVerdict(out, Verdict::Captured, Outcome::Open, 1, kT0 + 1'000);
  EXPECT_EQ(out[0].conn.src.str(), "[2001:2::2]:40000");
  EXPECT_EQ(out[0].conn.dst.str(), "[2001:3::1]:443");
}

TEST_F(CorrelatorTest, Ipv6DoesNotJoinIpv4OfSamePort) {
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_TRUE(feed(accepted(kT0 + 1'000, ep("2001:2::2", 40000))).empty());
  EXPECT_EQ(correlator_.pendingConnections(), 1U);
  EXPECT_EQ(correlator_.pendingAccepts(), 1U);
}

cw_event rawEvent(uint8_t kind, uint16_t family, uint64_t sock, uint64_t ts) {
  cw_event e;
  std::memset(&e, 0, sizeof e);
  e.kind = kind;
  e.family = family;
  e.sock_id = sock;
  e.ts_ns = ts;
  e.netns = kNetns;
  return e;
}

void setV4(uint8_t (&field)[CW_ADDR_LEN], const char* text) {
  const Address a = ip(text);
  ASSERT_TRUE(a.isV4());
  std::memcpy(field, a.bytes.data() + 12, 4);
}

void setV6(uint8_t (&field)[CW_ADDR_LEN], const char* text) {
  std::memcpy(field, ip(text).bytes.data(), 16);
}

TEST_F(CorrelatorTest, RawIpv4Join) {
  cw_event app = rawEvent(CW_EV_ACTIVE_ESTABLISHED, AF_INET, 1, kT0);
  app.flags = CW_F_OWNER_KNOWN;
  app.cgroup_id = kAppCgroup;
  setV4(app.saddr, "198.18.0.2");
  setV4(app.daddr, "198.19.0.1");
  app.sport = 40000;
  app.dport = 80;
  EXPECT_TRUE(feedRaw(app).empty());

  cw_event sidecar = rawEvent(CW_EV_PASSIVE_ESTABLISHED, AF_INET, 2, kT0 + 1'000);
  setV4(sidecar.saddr, "127.0.0.1");
  setV4(sidecar.daddr, "198.18.0.2");
  sidecar.sport = kRedirectPort;
  sidecar.dport = 40000;
  const auto out = feedRaw(sidecar);
  expectVerdict(out, Verdict::Captured, Outcome::Open, 1, kT0 + 1'000);
  EXPECT_EQ(out[0].conn.dst.str(), "198.19.0.1:80");
}

TEST_F(CorrelatorTest, RawV4MappedPeerOfDualStackListenerJoinsIpv4App) {
  cw_event app = rawEvent(CW_EV_ACTIVE_ESTABLISHED, AF_INET, 1, kT0);
  app.cgroup_id = kAppCgroup;
  setV4(app.saddr, "198.18.0.2");
  setV4(app.daddr, "198.19.0.1");
  app.sport = 40000;
  app.dport = 80;
  EXPECT_TRUE(feedRaw(app).empty());

  // The sidecar listens on [::]:15001: the accepted socket is AF_INET6 and
  // reports its IPv4 peer as ::ffff:198.18.0.2.
  cw_event sidecar = rawEvent(CW_EV_PASSIVE_ESTABLISHED, AF_INET6, 2, kT0 + 1'000);
  setV6(sidecar.saddr, "::ffff:127.0.0.1");
  setV6(sidecar.daddr, "::ffff:198.18.0.2");
  sidecar.sport = kRedirectPort;
  sidecar.dport = 40000;
  const auto out = feedRaw(sidecar);
  expectVerdict(out, Verdict::Captured, Outcome::Open, 1, kT0 + 1'000);
  EXPECT_EQ(out[0].conn.src.str(), "198.18.0.2:40000");
}

TEST_F(CorrelatorTest, RawDualStackAppSocketJoinsIpv4Accept) {
  // An AF_INET6 app socket connecting to an IPv4 address reports v4-mapped
  // addresses; the sidecar's IPv4 listener reports the plain IPv4 peer.
  cw_event app = rawEvent(CW_EV_ACTIVE_ESTABLISHED, AF_INET6, 1, kT0);
  app.cgroup_id = kAppCgroup;
  setV6(app.saddr, "::ffff:198.18.0.2");
  setV6(app.daddr, "::ffff:198.19.0.1");
  app.sport = 40000;
  app.dport = 80;

  cw_event sidecar = rawEvent(CW_EV_PASSIVE_ESTABLISHED, AF_INET, 2, kT0 + 1'000);
  setV4(sidecar.saddr, "127.0.0.1");
  setV4(sidecar.daddr, "198.18.0.2");
  sidecar.sport = kRedirectPort;
  sidecar.dport = 40000;

  // Accept first this time: the join does not depend on the order.
  EXPECT_TRUE(feedRaw(sidecar).empty());
  const auto out = feedRaw(app);
  expectVerdict(out, Verdict::Captured, Outcome::Open, 1, kT0);
  EXPECT_EQ(out[0].conn.dst.str(), "198.19.0.1:80");
}

TEST_F(CorrelatorTest, LoopbackDestinationIsLocal) {
  expectVerdict(feed(connected(1, kT0, 40000, ep("127.0.0.1", 15000))), Verdict::Local,
                Outcome::Open, 1, kT0);
  expectVerdict(feed(connected(2, kT0 + 1, 40001, ep("127.0.0.6", 8080))), Verdict::Local,
                Outcome::Open, 2, kT0 + 1);
  expectVerdict(
      feed(appEvent(EventKind::ActiveEstablished, 3, kT0 + 2, ep("::1", 40002), ep("::1", 8080))),
      Verdict::Local, Outcome::Open, 3, kT0 + 2);
  expectEmpty();
  EXPECT_TRUE(feed(closed(1, kT0 + 3)).empty());  // local connections are not followed
}

TEST_F(CorrelatorTest, OwnAddressDestinationIsLocal) {
  const auto out = feed(connected(1, kT0, 40000, ep("198.18.0.2", 8080)));
  expectVerdict(out, Verdict::Local, Outcome::Open, 1, kT0);
  EXPECT_EQ(out[0].conn.dst, ep("198.18.0.2", 8080));
  expectEmpty();
}

TEST_F(CorrelatorTest, ProxyCgroupIsProxy) {
  ConnEvent ev = connected(1, kT0, 40000);
  ev.cgroup_id = kProxyCgroup;
  ev.uid = 1337;
  const auto out = feed(ev);
  expectVerdict(out, Verdict::Proxy, Outcome::Open, 1, kT0);
  EXPECT_EQ(out[0].conn.cgroup_id, kProxyCgroup);
  EXPECT_EQ(out[0].conn.uid, 1337U);
  expectEmpty();

  // UID 1337 outside the proxy's cgroup is an app, not the proxy.
  ConnEvent app = connected(2, kT0 + 1, 40001);
  app.uid = 1337;
  EXPECT_TRUE(feed(app).empty());
  EXPECT_EQ(correlator_.pendingConnections(), 1U);
}

TEST_F(CorrelatorTest, RemovedProxyCgroupIsNoLongerProxy) {
  correlator_.removeProxyCgroup(kProxyCgroup);
  ConnEvent ev = connected(1, kT0, 40000);
  ev.cgroup_id = kProxyCgroup;
  EXPECT_TRUE(feed(ev).empty());
  expectVerdict(expire(kT0 + kGrace), Verdict::Bypassed, Outcome::Open, 1, kT0 + kGrace);
}

TEST_F(CorrelatorTest, FailedConnectIsBypassedRefusedOrFailed) {
  auto out = feed(connectFailed(1, kT0, 40000, CW_F_RESET_RECEIVED));
  expectVerdict(out, Verdict::Bypassed, Outcome::Refused, 1, kT0);
  EXPECT_EQ(out[0].conn.established_ns, kT0);
  EXPECT_EQ(out[0].conn.dst, ep("198.19.0.1", 8080));

  expectVerdict(feed(connectFailed(2, kT0 + 1, 40001)), Verdict::Bypassed, Outcome::Failed, 2,
                kT0 + 1);
  expectEmpty();
  EXPECT_TRUE(expire(kT0 + 10 * kGrace).empty());
}

TEST_F(CorrelatorTest, FailedConnectOfProxyOrToLocalIsNotBypassed) {
  ConnEvent proxy = connectFailed(1, kT0, 40000, CW_F_RESET_RECEIVED);
  proxy.cgroup_id = kProxyCgroup;
  expectVerdict(feed(proxy), Verdict::Proxy, Outcome::Refused, 1, kT0);
  expectVerdict(feed(connectFailed(2, kT0, 40001, 0, ep("127.0.0.1", 9))), Verdict::Local,
                Outcome::Failed, 2, kT0);
  expectEmpty();
}

TEST_F(CorrelatorTest, DuplicateActiveWhilePendingIsCountedNotReported) {
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_TRUE(feed(connectFailed(1, kT0, 40000)).empty());
  EXPECT_EQ(correlator_.stats().duplicates, 2U);
  EXPECT_EQ(correlator_.pendingConnections(), 1U);

  expectVerdict(expire(kT0 + kGrace), Verdict::Bypassed, Outcome::Open, 1, kT0 + kGrace);
  EXPECT_TRUE(expire(kT0 + 3 * kGrace).empty());
}

// The close of a pending connection was lost (ring buffer full) and the
// kernel reused its socket at once: the new record is a new connection, not a
// duplicate, and both get their verdict. Found by the tiny-ring-buffer test,
// where such records went uncounted.
TEST_F(CorrelatorTest, ReusedSocketOfAPendingConnectionWhoseCloseWasLostIsANewConnection) {
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_TRUE(feed(connected(1, kT0 + 10, 40001)).empty());
  expectVerdict(feed(accepted(kT0 + 20, 40001)), Verdict::Captured, Outcome::Open, 1, kT0 + 20);
  auto failed = feed(connectFailed(1, kT0 + 30, 40002));
  ASSERT_EQ(failed.size(), 1U);
  EXPECT_EQ(failed[0].conn.outcome, Outcome::Failed);
  EXPECT_EQ(correlator_.stats().duplicates, 0U);
  expectVerdict(expire(kT0 + kGrace), Verdict::Bypassed, Outcome::Open, 1, kT0 + kGrace);
  EXPECT_EQ(correlator_.pendingConnections(), 0U);
}

TEST_F(CorrelatorTest, DuplicateActiveWhileFollowedIsCountedNotReported) {
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  ASSERT_EQ(expire(kT0 + kGrace).size(), 1U);
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_TRUE(feed(connectFailed(1, kT0, 40000)).empty());
  EXPECT_EQ(correlator_.stats().duplicates, 2U);
  EXPECT_EQ(correlator_.pendingConnections(), 0U);
  EXPECT_TRUE(expire(kT0 + 3 * kGrace).empty());
  EXPECT_EQ(correlator_.followed(), 1U);
}

TEST_F(CorrelatorTest, ReusedSocketOfAFollowedBypassWhoseCloseWasLostIsANewConnection) {
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  ASSERT_EQ(expire(kT0 + kGrace).size(), 1U);
  ASSERT_EQ(correlator_.followed(), 1U);
  // The close of socket 1 was lost; the kernel reuses the socket later.
  EXPECT_TRUE(feed(connected(1, kT0 + 5 * kGrace, 40001)).empty());
  EXPECT_EQ(correlator_.stats().outcomes_lost, 1U);
  EXPECT_EQ(correlator_.stats().duplicates, 0U);
  EXPECT_EQ(correlator_.followed(), 0U);
  expectVerdict(feed(accepted(kT0 + 5 * kGrace + 10, 40001)), Verdict::Captured, Outcome::Open, 1,
                kT0 + 5 * kGrace + 10);
}

TEST_F(CorrelatorTest, DuplicateAcceptReplacesTheFirst) {
  EXPECT_TRUE(feed(accepted(kT0, 40000)).empty());
  EXPECT_TRUE(feed(accepted(kT0 + 100, 40000)).empty());
  EXPECT_EQ(correlator_.stats().duplicates, 1U);
  EXPECT_EQ(correlator_.pendingAccepts(), 1U);
  // The second accept's time counts: not expired at the first one's end.
  EXPECT_TRUE(expire(kT0 + kGrace).empty());
  EXPECT_EQ(correlator_.pendingAccepts(), 1U);
  EXPECT_TRUE(expire(kT0 + 100 + kGrace).empty());
  EXPECT_EQ(correlator_.pendingAccepts(), 0U);
  EXPECT_EQ(correlator_.stats().orphan_accepts, 1U);
}

TEST_F(CorrelatorTest, LostAcceptIsBypassed) {
  // A captured connection whose accept event was lost looks bypassed: the
  // correlator never invents a capture.
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_TRUE(feed(accepted(kT0 + 1'000, 40001)).empty());  // another app port's accept
  const auto out = expire(kT0 + kGrace);
  expectVerdict(out, Verdict::Bypassed, Outcome::Open, 1, kT0 + kGrace);
  EXPECT_EQ(correlator_.pendingAccepts(), 1U);
  EXPECT_EQ(correlator_.stats().orphan_accepts, 0U);
}

TEST_F(CorrelatorTest, OrphanAcceptCountedAfterGrace) {
  EXPECT_TRUE(feed(accepted(kT0, 40000)).empty());
  EXPECT_TRUE(expire(kT0 + kGrace - 1).empty());
  EXPECT_EQ(correlator_.pendingAccepts(), 1U);
  EXPECT_EQ(correlator_.stats().orphan_accepts, 0U);
  EXPECT_TRUE(expire(kT0 + kGrace).empty());  // nothing emitted for an orphan
  EXPECT_EQ(correlator_.pendingAccepts(), 0U);
  EXPECT_EQ(correlator_.stats().orphan_accepts, 1U);

  // Gone: a later connection of the same port is not captured by it.
  EXPECT_TRUE(feed(connected(1, kT0 + kGrace + 1, 40000)).empty());
  EXPECT_EQ(correlator_.pendingConnections(), 1U);
}

// Conntrack's answers for the remap lookup, by the accept's peer port; every
// question asked is recorded.
struct FakeConntrack {
  struct Question {
    uint32_t netns;
    Endpoint local, peer;
  };
  std::map<uint16_t, RemapAnswer> answers;
  std::vector<Question> asked;

  Correlator::RemapLookup lookup() {
    return [this](uint32_t netns, const Endpoint& local, const Endpoint& peer) {
      asked.push_back({netns, local, peer});
      auto it = answers.find(peer.port);
      return it == answers.end() ? RemapAnswer{} : it->second;
    };
  }
};

RemapAnswer found(uint16_t app_port, Endpoint dst) {
  return RemapAnswer{RemapAnswer::Status::kFound, ep("198.18.0.2", app_port), dst};
}

// Two connections from 198.18.0.2:40000 to two redirected destinations: the
// second one's redirected tuple is taken, so conntrack gave it source port
// 41580 and the sidecar accepts it from there.
class RemapTest : public CorrelatorTest {
 protected:
  static constexpr uint16_t kRemapped = 41580;
  const Endpoint kSecondDst = ep("198.19.0.2", 443);

  // Both connections and their accepts; the first joins at once.
  void clash() {
    EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
    expectVerdict(feed(accepted(kT0 + 5, 40000)), Verdict::Captured, Outcome::Open, 1, kT0 + 5);
    EXPECT_TRUE(feed(connected(2, kT0 + 100, 40000, kSecondDst)).empty());
    EXPECT_TRUE(feed(accepted(kT0 + 105, kRemapped)).empty());
  }

  FakeConntrack conntrack_;
};

TEST_F(RemapTest, RemappedAcceptJoinsTheConnectionOfItsConntrackEntry) {
  conntrack_.answers[kRemapped] = found(40000, kSecondDst);
  correlator_.setRemapLookup(conntrack_.lookup());
  clash();

  // Decided at the first expire(), long before the grace window ends.
  expectVerdict(expire(kT0 + 1'000), Verdict::Captured, Outcome::Open, 2, kT0 + 105);
  ASSERT_EQ(conntrack_.asked.size(), 1U);
  EXPECT_EQ(conntrack_.asked[0].netns, kNetns);
  EXPECT_EQ(conntrack_.asked[0].local, ep("127.0.0.1", kRedirectPort));
  EXPECT_EQ(conntrack_.asked[0].peer, ep("198.18.0.2", kRemapped));
  expectEmpty();
  EXPECT_TRUE(expire(kT0 + 3 * kGrace).empty());
  EXPECT_EQ(correlator_.stats().remap_joined, 1U);
  EXPECT_EQ(correlator_.stats().orphan_accepts, 0U);
  EXPECT_EQ(conntrack_.asked.size(), 1U);
}

// The remapped connection closed before the expire() that looks its accept
// up: it is joined there, not decided bypassed for its close.
TEST_F(RemapTest, ClosedRemappedConnectionJoinsBeforeItsCloseDecidesIt) {
  conntrack_.answers[kRemapped] = found(40000, kSecondDst);
  correlator_.setRemapLookup(conntrack_.lookup());
  clash();
  EXPECT_TRUE(feed(closed(2, kT0 + 200, CW_F_PEER_FIN)).empty());
  expectVerdict(expire(kT0 + 1'000), Verdict::Captured, Outcome::PeerClosed, 2, kT0 + 105);
  expectEmpty();
  EXPECT_TRUE(expire(kT0 + 3 * kGrace).empty());
}

TEST_F(RemapTest, WithoutALookupTheRemappedConnectionIsBypassed) {
  clash();
  expectVerdict(expire(kT0 + 100 + kGrace), Verdict::Bypassed, Outcome::Open, 2,
                kT0 + 100 + kGrace);
  EXPECT_TRUE(expire(kT0 + 105 + kGrace).empty());
  EXPECT_EQ(correlator_.stats().orphan_accepts, 1U);
  EXPECT_EQ(correlator_.stats().remap_joined, 0U);
}

// An answer that does not name a waiting connection joins nothing: the
// connection is bypassed at the end of its grace window, the accept an
// orphan, and each accept is asked about once.
TEST_F(RemapTest, AnswersThatNameNoWaitingConnectionJoinNothing) {
  const std::vector<std::pair<const char*, RemapAnswer>> cases = {
      {"no entry", RemapAnswer{}},
      {"error", RemapAnswer{RemapAnswer::Status::kError, {}, {}}},
      {"not remapped", found(kRemapped, kSecondDst)},
      {"another destination", found(40000, ep("198.19.0.3", 443))},
      {"another app port", found(40002, kSecondDst)},
  };
  uint64_t t = kT0;
  for (const auto& [what, answer] : cases) {
    SCOPED_TRACE(what);
    Correlator correlator({.grace_ns = kGrace});
    FakeConntrack conntrack;
    conntrack.answers[kRemapped] = answer;
    correlator.setRemapLookup(conntrack.lookup());
    std::vector<Decision> out;
    correlator.onEvent(connected(2, t, 40000, kSecondDst), out);
    correlator.onEvent(accepted(t + 5, kRemapped), out);
    correlator.expire(t + 1'000, out);
    correlator.expire(t + 2'000, out);
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(conntrack.asked.size(), 1U);
    correlator.expire(t + 5 + kGrace, out);
    ASSERT_EQ(out.size(), 1U);
    EXPECT_EQ(out[0].conn.verdict, Verdict::Bypassed);
    const auto& st = correlator.stats();
    EXPECT_EQ(st.orphan_accepts, 1U);
    EXPECT_EQ(st.remap_joined, 0U);
    EXPECT_EQ(st.remap_errors + st.remap_unmatched, 1U);
    EXPECT_EQ(st.remap_errors, answer.status == RemapAnswer::Status::kError ? 1U : 0U);
    t += 10 * kGrace;
  }
}

TEST_F(RemapTest, LookupsPerExpireAreBoundedAndTheRestWait) {
  Correlator correlator({.grace_ns = kGrace, .max_remap_lookups = 2});
  FakeConntrack conntrack;
  correlator.setRemapLookup(conntrack.lookup());
  std::vector<Decision> out;
  for (uint16_t i = 0; i < 5; ++i) correlator.onEvent(accepted(kT0 + i, 50000 + i), out);
  // One claimed at once by its connection: never asked about.
  correlator.onEvent(connected(7, kT0 + 10, 50004), out);
  ASSERT_EQ(out.size(), 1U);
  correlator.expire(kT0 + 100, out);
  EXPECT_EQ(conntrack.asked.size(), 2U);
  correlator.expire(kT0 + 200, out);
  EXPECT_EQ(conntrack.asked.size(), 4U);
  correlator.expire(kT0 + 300, out);
  EXPECT_EQ(conntrack.asked.size(), 4U);
  std::vector<uint16_t> ports;
  for (const auto& q : conntrack.asked) ports.push_back(q.peer.port);
  EXPECT_EQ(ports, (std::vector<uint16_t>{50000, 50001, 50002, 50003}));
}

// The app's port was reused: a later connection of the same end took the
// join index over. The remapped accept still finds the connection of its
// original tuple.
TEST_F(RemapTest, FindsTheConnectionOfItsTupleWhenAnotherHasTheSamePort) {
  conntrack_.answers[kRemapped] = found(40000, kSecondDst);
  correlator_.setRemapLookup(conntrack_.lookup());
  EXPECT_TRUE(feed(connected(2, kT0, 40000, kSecondDst)).empty());
  EXPECT_TRUE(feed(connected(3, kT0 + 50, 40000, ep("198.19.0.9", 80))).empty());
  EXPECT_TRUE(feed(accepted(kT0 + 105, kRemapped)).empty());
  expectVerdict(expire(kT0 + 1'000), Verdict::Captured, Outcome::Open, 2, kT0 + 105);
  EXPECT_EQ(correlator_.pendingConnections(), 1U);
  expectVerdict(expire(kT0 + 50 + kGrace), Verdict::Bypassed, Outcome::Open, 3, kT0 + 50 + kGrace);
}

TEST_F(CorrelatorTest, AcceptOlderThanGraceDoesNotCapture) {
  // expire() was not called in between: the stale accept still must not be
  // taken for a new connection that reuses the app port.
  EXPECT_TRUE(feed(accepted(kT0, 40000)).empty());
  EXPECT_TRUE(feed(connected(1, kT0 + kGrace, 40000)).empty());
  EXPECT_EQ(correlator_.stats().orphan_accepts, 1U);
  EXPECT_EQ(correlator_.pendingAccepts(), 0U);
  EXPECT_EQ(correlator_.pendingConnections(), 1U);
  expectVerdict(expire(kT0 + 2 * kGrace), Verdict::Bypassed, Outcome::Open, 1, kT0 + 2 * kGrace);

  EXPECT_TRUE(feed(accepted(kT0 + 3 * kGrace, 40001)).empty());
  expectVerdict(feed(connected(2, kT0 + 4 * kGrace - 1, 40001)), Verdict::Captured, Outcome::Open,
                2, kT0 + 4 * kGrace - 1);
}

struct CloseCase {
  uint8_t flags;
  uint64_t bytes;
  Outcome outcome;
};

class ClosedWhilePendingTest : public CorrelatorTest,
                               public ::testing::WithParamInterface<CloseCase> {};

// The app's socket closed before its accept came: the accept cannot come
// any more (the sidecar's socket is established before it sends what the
// app's close needs), so the connection is decided at the first expire()
// that has the close, not at the end of its grace window.
TEST_P(ClosedWhilePendingTest, BypassedWithRecordedOutcomeWhenItCloses) {
  const CloseCase& c = GetParam();
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_TRUE(feed(closed(1, kT0 + 2'000'000, c.flags, c.bytes)).empty());
  EXPECT_EQ(correlator_.pendingConnections(), 1U);
  EXPECT_TRUE(expire(kT0 + 2'000'000 - 1).empty()) << "now before the close";

  const auto out = expire(kT0 + 2'000'000);
  expectVerdict(out, Verdict::Bypassed, c.outcome, 1, kT0 + 2'000'000);
  EXPECT_EQ(out[0].conn.flags, CW_F_OWNER_KNOWN);  // the connect record's flags
  expectEmpty();                                   // already ended: not followed
  EXPECT_TRUE(expire(kT0 + kGrace).empty()) << "reported once";
}

TEST_P(ClosedWhilePendingTest, CapturedWithRecordedOutcome) {
  const CloseCase& c = GetParam();
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_TRUE(feed(closed(1, kT0 + 1'000, c.flags, c.bytes)).empty());
  expectVerdict(feed(accepted(kT0 + 2'000, 40000)), Verdict::Captured, c.outcome, 1, kT0 + 2'000);
  expectEmpty();
}

INSTANTIATE_TEST_SUITE_P(Outcomes, ClosedWhilePendingTest,
                         ::testing::Values(CloseCase{CW_F_RESET_RECEIVED, 0, Outcome::Reset},
                                           CloseCase{CW_F_PEER_FIN, 0, Outcome::PeerClosed},
                                           CloseCase{CW_F_RESET_RECEIVED | CW_F_PEER_FIN, 0,
                                                     Outcome::Reset},
                                           CloseCase{CW_F_RESET_RECEIVED, 512, Outcome::Data},
                                           CloseCase{0, 0, Outcome::Closed}),
                         [](const ::testing::TestParamInfo<CloseCase>& info) {
                           std::string name(toString(info.param.outcome));
                           std::erase(name, '-');
                           return name + std::to_string(info.index);
                         });

// While an accept is unclaimed (conntrack may have remapped its app's port;
// without a remap lookup it is an orphan until its grace window ends), a
// closed connection waits for its own grace window like an open one.
TEST_F(CorrelatorTest, ClosedWhileAnAcceptIsUnclaimedWaitsForItsGraceWindow) {
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_TRUE(feed(accepted(kT0 + 500, 41580)).empty());
  EXPECT_TRUE(feed(closed(1, kT0 + 1'000, CW_F_RESET_RECEIVED)).empty());
  EXPECT_TRUE(expire(kT0 + 1'000).empty());
  EXPECT_TRUE(expire(kT0 + kGrace - 1).empty());
  expectVerdict(expire(kT0 + kGrace), Verdict::Bypassed, Outcome::Reset, 1, kT0 + kGrace);

  // Once no accept is unclaimed, a close is decided at once again.
  EXPECT_TRUE(expire(kT0 + 500 + kGrace).empty());
  EXPECT_EQ(correlator_.pendingAccepts(), 0U);
  EXPECT_TRUE(feed(connected(2, kT0 + kGrace + 1'000, 40001)).empty());
  EXPECT_TRUE(feed(closed(2, kT0 + kGrace + 2'000, CW_F_RESET_RECEIVED)).empty());
  expectVerdict(expire(kT0 + kGrace + 2'000), Verdict::Bypassed, Outcome::Reset, 2,
                kT0 + kGrace + 2'000);
  expectEmpty();
}

// A connection that closed without its accept after accepts were lost is
// unknown, as at the end of its grace window: the lost accept may be its own.
TEST_F(CorrelatorTest, ClosedAfterAcceptsWereLostIsUnknown) {
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_TRUE(feed(closed(1, kT0 + 1'000, CW_F_PEER_FIN)).empty());
  correlator_.noteLostAccepts(kT0 + 1'500);
  expectVerdict(expire(kT0 + 1'500), Verdict::Unknown, Outcome::PeerClosed, 1, kT0 + 1'500);
  expectEmpty();
}

// A closed connection decided otherwise before the expire() that would have
// decided it (its socket's id and slot reused meanwhile) is not decided again,
// and the connection now in its slot is not decided for it.
TEST_F(CorrelatorTest, ClosedConnectionDecidedMeanwhileIsDecidedOnce) {
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_TRUE(feed(closed(1, kT0 + 1'000)).empty());
  // Records of two CPUs out of order: its accept after its close.
  expectVerdict(feed(accepted(kT0 + 900, 40000)), Verdict::Captured, Outcome::Closed, 1, kT0 + 900);
  EXPECT_TRUE(feed(connected(1, kT0 + 2'000, 40001)).empty());  // takes the freed slot
  EXPECT_EQ(correlator_.pendingConnections(), 1U);
  EXPECT_TRUE(expire(kT0 + 3'000).empty());
  EXPECT_EQ(correlator_.pendingConnections(), 1U);
  expectVerdict(expire(kT0 + 2'000 + kGrace), Verdict::Bypassed, Outcome::Open, 1,
                kT0 + 2'000 + kGrace);
}

TEST_F(CorrelatorTest, BypassedOpenThenCloseReportsOutcome) {
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  expectVerdict(expire(kT0 + kGrace), Verdict::Bypassed, Outcome::Open, 1, kT0 + kGrace);
  EXPECT_EQ(correlator_.followed(), 1U);

  const auto out = feed(closed(1, kT0 + kGrace + 5'000, CW_F_RESET_RECEIVED));
  ASSERT_EQ(out.size(), 1U);
  EXPECT_EQ(out[0].type, Decision::Type::Outcome);
  EXPECT_EQ(out[0].conn.verdict, Verdict::Bypassed);
  EXPECT_EQ(out[0].conn.outcome, Outcome::Reset);
  EXPECT_EQ(out[0].conn.sock_id, 1U);
  EXPECT_EQ(out[0].conn.established_ns, kT0);
  EXPECT_EQ(out[0].conn.decided_ns, kT0 + kGrace);  // when the verdict was reached
  EXPECT_EQ(out[0].conn.dst, ep("198.19.0.1", 8080));
  EXPECT_EQ(correlator_.followed(), 0U);

  EXPECT_TRUE(feed(closed(1, kT0 + kGrace + 6'000, CW_F_RESET_RECEIVED)).empty());
  EXPECT_EQ(correlator_.stats().duplicates, 0U);
}

TEST_F(CorrelatorTest, CloseOfUnknownSocketIsIgnored) {
  EXPECT_TRUE(feed(closed(77, kT0, CW_F_RESET_RECEIVED)).empty());
  expectEmpty();
  EXPECT_EQ(correlator_.stats().events, 1U);
  EXPECT_EQ(correlator_.stats().duplicates, 0U);
}

TEST_F(CorrelatorTest, SocketIdReusedAfterCloseWhilePendingIsANewConnection) {
  // A bypassed connection reset by a strict-mTLS peer closes at once; the
  // kernel may hand the same struct sock to the app's retry, even with the
  // same source port.
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_TRUE(feed(closed(1, kT0 + 1'000, CW_F_RESET_RECEIVED)).empty());
  EXPECT_TRUE(feed(connected(1, kT0 + 2'000, 40000)).empty());
  EXPECT_EQ(correlator_.stats().duplicates, 0U);
  EXPECT_EQ(correlator_.pendingConnections(), 2U);

  // The accept is the newer connection's.
  const auto captured = feed(accepted(kT0 + 3'000, 40000));
  expectVerdict(captured, Verdict::Captured, Outcome::Open, 1, kT0 + 3'000);
  EXPECT_EQ(captured[0].conn.established_ns, kT0 + 2'000);

  const auto bypassed = expire(kT0 + kGrace);
  expectVerdict(bypassed, Verdict::Bypassed, Outcome::Reset, 1, kT0 + kGrace);
  EXPECT_EQ(bypassed[0].conn.established_ns, kT0);
  expectEmpty();
}

TEST_F(CorrelatorTest, DifferentNetnsWithSameEndpointDoNotJoin) {
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());
  EXPECT_TRUE(feed(accepted(kT0 + 1'000, ep("198.18.0.2", 40000), kOtherNetns)).empty());
  EXPECT_EQ(correlator_.pendingConnections(), 1U);
  EXPECT_EQ(correlator_.pendingAccepts(), 1U);

  expectVerdict(expire(kT0 + kGrace), Verdict::Bypassed, Outcome::Open, 1, kT0 + kGrace);
  EXPECT_TRUE(expire(kT0 + 1'000 + kGrace).empty());
  EXPECT_EQ(correlator_.stats().orphan_accepts, 1U);
}

TEST_F(CorrelatorTest, ExpiryReportsInOrderOfEstablishment) {
  EXPECT_TRUE(feed(connected(3, kT0 + 30, 40003)).empty());
  EXPECT_TRUE(feed(connected(1, kT0 + 10, 40001)).empty());
  EXPECT_TRUE(feed(connected(4, kT0 + 40, 40004)).empty());
  EXPECT_TRUE(feed(connected(2, kT0 + 20, 40002)).empty());

  auto out = expire(kT0 + 30 + kGrace);
  ASSERT_EQ(out.size(), 3U);
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_EQ(out[i].conn.sock_id, i + 1);
    EXPECT_EQ(out[i].conn.established_ns, kT0 + 10 * (i + 1));
    EXPECT_EQ(out[i].conn.verdict, Verdict::Bypassed);
    EXPECT_EQ(out[i].conn.decided_ns, kT0 + 30 + kGrace);
  }
  EXPECT_EQ(correlator_.pendingConnections(), 1U);
  EXPECT_EQ(correlator_.followed(), 3U);
}

// The pending list keeps its time order across a join out of its middle, a
// late record that reuses the freed slot, and equal times (arrival order).
TEST_F(CorrelatorTest, PendingOrderSurvivesJoinsLateRecordsAndTies) {
  EXPECT_TRUE(feed(connected(1, kT0 + 10, 40001)).empty());
  EXPECT_TRUE(feed(connected(2, kT0 + 20, 40002)).empty());
  EXPECT_TRUE(feed(connected(3, kT0 + 40, 40003)).empty());
  expectVerdict(feed(accepted(kT0 + 41, 40002)), Verdict::Captured, Outcome::Open, 2, kT0 + 41);
  EXPECT_TRUE(feed(connected(4, kT0 + 30, 40004)).empty());  // late
  EXPECT_TRUE(feed(connected(5, kT0 + 40, 40005)).empty());  // same time as 3
  EXPECT_EQ(correlator_.pendingConnections(), 4U);
  EXPECT_EQ(correlator_.nextDeadline(), kT0 + 10 + kGrace);

  const auto first = expire(kT0 + 30 + kGrace);
  ASSERT_EQ(first.size(), 2U);
  EXPECT_EQ(first[0].conn.sock_id, 1U);
  EXPECT_EQ(first[1].conn.sock_id, 4U);
  EXPECT_EQ(correlator_.nextDeadline(), kT0 + 40 + kGrace);
  const auto rest = expire(kT0 + 40 + kGrace);
  ASSERT_EQ(rest.size(), 2U);
  EXPECT_EQ(rest[0].conn.sock_id, 3U);
  EXPECT_EQ(rest[1].conn.sock_id, 5U);
  EXPECT_EQ(correlator_.pendingConnections(), 0U);
  EXPECT_EQ(correlator_.nextDeadline(), 0U);
}

TEST_F(CorrelatorTest, ForgetNetnsDropsEverythingOfThatNetns) {
  EXPECT_TRUE(feed(connected(1, kT0, 40000)).empty());  // followed after expiry
  ASSERT_EQ(expire(kT0 + kGrace).size(), 1U);
  EXPECT_TRUE(feed(connected(2, kT0 + kGrace, 40002)).empty());  // pending
  EXPECT_TRUE(feed(accepted(kT0 + kGrace, 40003)).empty());      // unmatched accept
  ConnEvent other = connected(3, kT0 + kGrace, 40000);
  other.netns = kOtherNetns;
  EXPECT_TRUE(feed(other).empty());
  EXPECT_EQ(correlator_.pendingConnections(), 2U);
  EXPECT_EQ(correlator_.pendingAccepts(), 1U);
  EXPECT_EQ(correlator_.followed(), 1U);

  correlator_.forgetNetns(kNetns);
  EXPECT_EQ(correlator_.pendingConnections(), 1U);
  EXPECT_EQ(correlator_.pendingAccepts(), 0U);
  EXPECT_EQ(correlator_.followed(), 0U);

  EXPECT_TRUE(feed(closed(1, kT0 + kGrace + 1, CW_F_RESET_RECEIVED)).empty());
  EXPECT_TRUE(feed(accepted(kT0 + kGrace + 2, 40002)).empty());  // no longer joins sock 2
  const auto out = expire(kT0 + 2 * kGrace);
  expectVerdict(out, Verdict::Bypassed, Outcome::Open, 3, kT0 + 2 * kGrace);
  EXPECT_EQ(out[0].conn.netns, kOtherNetns);
  EXPECT_EQ(correlator_.stats().orphan_accepts, 0U);
}

class BoundedCorrelatorTest : public CorrelatorTest {
 protected:
  BoundedCorrelatorTest()
      : CorrelatorTest({.grace_ns = kGrace, .max_pending = 3, .max_followed = 2}) {}
};

TEST_F(BoundedCorrelatorTest, MaxPendingEvictsOldestWithoutVerdict) {
  for (uint64_t i = 1; i <= 5; ++i) {
    EXPECT_TRUE(feed(connected(i, kT0 + i, static_cast<uint16_t>(40000 + i))).empty());
    EXPECT_LE(correlator_.pendingConnections(), 3U);
  }
  EXPECT_EQ(correlator_.pendingConnections(), 3U);
  EXPECT_EQ(correlator_.stats().pending_evicted, 2U);

  // Evicted connections (1 and 2) are forgotten: their accept joins nothing
  // and no verdict is guessed for them.
  EXPECT_TRUE(feed(accepted(kT0 + 10, 40001)).empty());
  expectVerdict(feed(accepted(kT0 + 11, 40003)), Verdict::Captured, Outcome::Open, 3, kT0 + 11);
  EXPECT_TRUE(feed(closed(2, kT0 + 12, CW_F_RESET_RECEIVED)).empty());

  const auto out = expire(kT0 + 5 + kGrace);
  ASSERT_EQ(out.size(), 2U);
  EXPECT_EQ(out[0].conn.sock_id, 4U);
  EXPECT_EQ(out[1].conn.sock_id, 5U);
}

// A backlog read at once (the agent was not scheduled for a while): the
// bound is reached before the next expire(), by connections whose grace
// window is over by the time of the record that arrives. Those are decided
// at that record's time (records come in time order), not dropped unseen.
TEST_F(BoundedCorrelatorTest, AtTheBoundConnectionsWhoseWindowEndedAreDecidedNotDropped) {
  for (uint64_t i = 1; i <= 3; ++i) {
    EXPECT_TRUE(feed(connected(i, kT0 + i, static_cast<uint16_t>(40000 + i))).empty());
  }
  // By kT0 + 2 + grace the windows of 1 and 2 are over, not 3's.
  const uint64_t t4 = kT0 + 2 + kGrace;
  const auto out = feed(connected(4, t4, 40004));
  ASSERT_EQ(out.size(), 2U);
  for (size_t k = 0; k < 2; ++k) {
    EXPECT_EQ(out[k].type, Decision::Type::Verdict);
    EXPECT_EQ(out[k].conn.verdict, Verdict::Bypassed) << toString(out[k].conn.verdict);
    EXPECT_EQ(out[k].conn.sock_id, k + 1);
    EXPECT_EQ(out[k].conn.decided_ns, t4);
  }
  EXPECT_EQ(correlator_.stats().pending_evicted, 0U);
  EXPECT_EQ(correlator_.pendingConnections(), 2U);

  // At the bound again with no window over (3's ends at t4 + 1): the oldest
  // is dropped, as before.
  EXPECT_TRUE(feed(connected(5, t4, 40005)).empty());
  EXPECT_TRUE(feed(connected(6, t4, 40006)).empty());
  EXPECT_EQ(correlator_.stats().pending_evicted, 1U);
  EXPECT_EQ(correlator_.pendingConnections(), 3U);
  // 3 was the one dropped: its accept joins nothing.
  EXPECT_TRUE(feed(accepted(t4 + 3, 40003)).empty());
  expectVerdict(feed(accepted(t4 + 4, 40004)), Verdict::Captured, Outcome::Open, 4, t4 + 4);
}

TEST_F(BoundedCorrelatorTest, AtTheBoundAfterLostAcceptsTheDecidedAreUnknown) {
  for (uint64_t i = 1; i <= 3; ++i) {
    EXPECT_TRUE(feed(connected(i, kT0 + i, static_cast<uint16_t>(40000 + i))).empty());
  }
  correlator_.noteLostAccepts(kT0 + 10);  // their accepts may be among the lost
  const auto out = feed(connected(4, kT0 + 3 + kGrace, 40004));
  ASSERT_EQ(out.size(), 3U);
  for (const Decision& d : out) {
    EXPECT_EQ(d.conn.verdict, Verdict::Unknown) << toString(d.conn.verdict);
  }
  EXPECT_EQ(correlator_.stats().pending_evicted, 0U);
}

TEST_F(BoundedCorrelatorTest, MaxPendingBoundsAccepts) {
  for (uint16_t port = 1; port <= 5; ++port) {
    EXPECT_TRUE(feed(accepted(kT0 + port, static_cast<uint16_t>(40000 + port))).empty());
    EXPECT_LE(correlator_.pendingAccepts(), 3U);
  }
  EXPECT_EQ(correlator_.pendingAccepts(), 3U);
  EXPECT_EQ(correlator_.stats().pending_evicted, 2U);
  // The oldest two went.
  EXPECT_TRUE(feed(connected(1, kT0 + 10, 40001)).empty());
  expectVerdict(feed(connected(3, kT0 + 11, 40003)), Verdict::Captured, Outcome::Open, 3, kT0 + 11);
}

TEST_F(BoundedCorrelatorTest, MaxFollowedEvictsOldest) {
  for (uint64_t i = 1; i <= 3; ++i) {
    EXPECT_TRUE(feed(connected(i, kT0 + i, static_cast<uint16_t>(40000 + i))).empty());
  }
  ASSERT_EQ(expire(kT0 + 3 + kGrace).size(), 3U);
  EXPECT_EQ(correlator_.followed(), 2U);
  EXPECT_EQ(correlator_.stats().followed_evicted, 1U);

  EXPECT_TRUE(feed(closed(1, kT0 + 2 * kGrace)).empty());  // the evicted one
  for (uint64_t i = 2; i <= 3; ++i) {
    const auto out = feed(closed(i, kT0 + 2 * kGrace, 0, 10));
    ASSERT_EQ(out.size(), 1U);
    EXPECT_EQ(out[0].type, Decision::Type::Outcome);
    EXPECT_EQ(out[0].conn.outcome, Outcome::Data);
    EXPECT_EQ(out[0].conn.sock_id, i);
  }
  expectEmpty();
}

// With a spill set, the decisions one vector collects (a read of many
// records, an expiry of many connections) are handed over a batch at a time,
// in the order they were decided, and the vector never holds more than one
// batch.
class SpillTest : public CorrelatorTest {
 protected:
  static constexpr size_t kBatch = 3;
  SpillTest() {
    correlator_.setSpill(kBatch, [this](std::vector<Decision>& out) {
      EXPECT_EQ(&out, &out_);
      EXPECT_EQ(out.size(), kBatch);
      spills_.push_back(out.size());
      taken_.insert(taken_.end(), out.begin(), out.end());
      out.clear();
    });
  }
  // What was decided so far: the spilled batches, then what out_ holds.
  std::vector<uint64_t> decidedSocks() const {
    std::vector<uint64_t> socks;
    for (const auto* v : {&taken_, &out_}) {
      for (const Decision& d : *v) socks.push_back(d.conn.sock_id);
    }
    return socks;
  }
  std::vector<Decision> out_;
  std::vector<Decision> taken_;
  std::vector<size_t> spills_;
};

TEST_F(SpillTest, ARunOfRecordsIsSpilledInBatchesInOrder) {
  // Seven connections decided by their own records: five of the proxy, one
  // captured by its accept, one local.
  for (uint64_t i = 1; i <= 5; ++i) {
    ConnEvent ev = connected(i, kT0 + i, static_cast<uint16_t>(40000 + i));
    ev.cgroup_id = kProxyCgroup;
    correlator_.onEvent(ev, out_);
    EXPECT_LE(out_.size(), kBatch);
  }
  correlator_.onEvent(connected(6, kT0 + 6, 40006), out_);
  correlator_.onEvent(accepted(kT0 + 7, 40006), out_);
  correlator_.onEvent(connected(7, kT0 + 8, 40007, ep("127.0.0.1", 9000)), out_);
  ASSERT_EQ(spills_, (std::vector<size_t>{kBatch, kBatch}));
  ASSERT_EQ(out_.size(), 1U);
  EXPECT_EQ(decidedSocks(), (std::vector<uint64_t>{1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(taken_[5].conn.verdict, Verdict::Captured) << toString(taken_[5].conn.verdict);
  EXPECT_EQ(out_[0].conn.verdict, Verdict::Local) << toString(out_[0].conn.verdict);
}

TEST_F(SpillTest, AnExpiryOfManyIsSpilledWhileItGoesOn) {
  for (uint64_t i = 1; i <= 8; ++i) {
    correlator_.onEvent(connected(i, kT0 + i, static_cast<uint16_t>(40000 + i)), out_);
  }
  EXPECT_TRUE(out_.empty());
  correlator_.expire(kT0 + 8 + kGrace, out_);
  ASSERT_EQ(spills_, (std::vector<size_t>{kBatch, kBatch}));
  EXPECT_EQ(decidedSocks(), (std::vector<uint64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  for (const auto* v : {&taken_, &out_}) {
    for (const Decision& d : *v) EXPECT_EQ(d.conn.verdict, Verdict::Bypassed);
  }
  // Their outcomes come as they close, spilled the same way.
  out_.clear();
  taken_.clear();
  for (uint64_t i = 1; i <= 4; ++i) correlator_.onEvent(closed(i, kT0 + 2 * kGrace, 0, 10), out_);
  ASSERT_EQ(spills_.size(), 3U);
  ASSERT_EQ(out_.size(), 1U);
  EXPECT_EQ(decidedSocks(), (std::vector<uint64_t>{1, 2, 3, 4}));
  EXPECT_EQ(taken_[0].type, Decision::Type::Outcome);
  EXPECT_EQ(out_[0].conn.outcome, Outcome::Data) << toString(out_[0].conn.outcome);
}

TEST(CorrelatorHashTest, KeysThatDifferOnlyInOnePartJoinSeparately) {
  // Same port, addresses and netns in every combination: each accept finds
  // exactly its own connection.
  Correlator correlator({.grace_ns = kGrace});
  std::vector<Decision> out;
  const char* addrs[] = {"198.18.0.2", "198.18.0.3", "2001:2::2", "::ffff:198.18.0.4"};
  uint64_t sock = 1;
  for (uint32_t netns : {kNetns, kOtherNetns}) {
    for (const char* a : addrs) {
      ConnEvent ev =
          appEvent(EventKind::ActiveEstablished, sock++, kT0, ep(a, 40000), ep("198.19.0.1", 80));
      ev.netns = netns;
      correlator.onEvent(ev, out);
    }
  }
  ASSERT_TRUE(out.empty());
  sock = 1;
  for (uint32_t netns : {kNetns, kOtherNetns}) {
    for (const char* a : addrs) {
      correlator.onEvent(accepted(kT0 + 1, ep(a, 40000), netns), out);
      ASSERT_EQ(out.size(), 1U);
      EXPECT_EQ(out[0].conn.sock_id, sock++);
      EXPECT_EQ(out[0].conn.verdict, Verdict::Captured);
      out.clear();
    }
  }
  EXPECT_EQ(correlator.pendingConnections(), 0U);
}

}  // namespace
}  // namespace cw
