#include "event.h"

#include <sys/socket.h>

#include <array>
#include <cstring>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "verdict.h"

namespace cw {
namespace {

Address addr(const char* text) {
  auto a = Address::parse(text);
  EXPECT_TRUE(a.has_value()) << text;
  return a.value_or(Address{});
}

TEST(AddressTest, ParsesIpv4AsV4Mapped) {
  const Address a = addr("198.18.0.1");
  const std::array<uint8_t, 16> expected = {0, 0, 0,    0,    0,   0,  0, 0,
                                            0, 0, 0xff, 0xff, 198, 18, 0, 1};
  EXPECT_EQ(a.bytes, expected);
  EXPECT_TRUE(a.isV4());
  EXPECT_EQ(a.str(), "198.18.0.1");
}

TEST(AddressTest, V4MappedTextEqualsIpv4) {
  EXPECT_EQ(addr("::ffff:198.18.0.1"), addr("198.18.0.1"));
  EXPECT_EQ(addr("::ffff:c612:1"), addr("198.18.0.1"));
  EXPECT_EQ(addr("::ffff:198.18.0.1").str(), "198.18.0.1");
}

TEST(AddressTest, FromV6OfV4MappedEqualsFromV4) {
  const uint8_t v4[4] = {198, 18, 0, 1};
  const uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 1};
  EXPECT_EQ(Address::fromV6(mapped), Address::fromV4(v4));
  EXPECT_TRUE(Address::fromV6(mapped).isV4());
}

TEST(AddressTest, ParsesIpv6) {
  const Address a = addr("2001:2::1");
  const std::array<uint8_t, 16> expected = {0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  EXPECT_EQ(a.bytes, expected);
  EXPECT_FALSE(a.isV4());
  EXPECT_EQ(a.str(), "2001:2::1");
}

TEST(AddressTest, RejectsInvalidText) {
  for (const char* text :
       {"", "198.18.0", "198.18.0.256", "198.18.0.1 ", " 198.18.0.1", "abc", "2001:2::g",
        "2001::2::1", "[2001:2::1]", "198.18.0.1:80", "::ffff:1.2.3"}) {
    EXPECT_FALSE(Address::parse(text).has_value()) << '"' << text << '"';
  }
  EXPECT_FALSE(Address::parse(std::string("198.18.0.1\0junk", 15)).has_value());
}

TEST(AddressTest, StrIsRfc5952) {
  EXPECT_EQ(addr("2001:0DB8:0000:0000:0001:0000:0000:0001").str(), "2001:db8::1:0:0:1");
  EXPECT_EQ(addr("2001:db8:0:0:0:0:2:1").str(), "2001:db8::2:1");
  EXPECT_EQ(addr("2001:db8:0:1:1:1:1:1").str(), "2001:db8:0:1:1:1:1:1");  // no "::" for one group
  EXPECT_EQ(addr("2001:0:0:1:0:0:0:1").str(), "2001:0:0:1::1");           // the longest run
  EXPECT_EQ(addr("2001:db8:0:0:1:0:0:1").str(), "2001:db8::1:0:0:1");     // the first of equal runs
  EXPECT_EQ(addr("::").str(), "::");
  EXPECT_EQ(addr("::1").str(), "::1");
  EXPECT_EQ(addr("::1.2.3.4").str(), "::102:304");  // IPv4-compatible: not a well-known prefix
  EXPECT_EQ(addr("::5").str(), "::5");
  EXPECT_EQ(addr("fe80::1:2").str(), "fe80::1:2");
}

TEST(AddressTest, Loopback) {
  EXPECT_TRUE(addr("127.0.0.1").isLoopback());
  EXPECT_TRUE(addr("127.255.3.4").isLoopback());
  EXPECT_TRUE(addr("::ffff:127.0.0.6").isLoopback());
  EXPECT_TRUE(addr("::1").isLoopback());
  EXPECT_FALSE(addr("128.0.0.1").isLoopback());
  EXPECT_FALSE(addr("198.18.0.1").isLoopback());
  EXPECT_FALSE(addr("::").isLoopback());
  EXPECT_FALSE(addr("::2").isLoopback());
  EXPECT_FALSE(addr("::127.0.0.1").isLoopback());  // IPv4-compatible, not mapped
  EXPECT_FALSE(addr("2001:2::1").isLoopback());
}

TEST(AddressTest, Unspecified) {
  EXPECT_TRUE(Address{}.isUnspecified());
  EXPECT_TRUE(addr("::").isUnspecified());
  EXPECT_TRUE(addr("0.0.0.0").isUnspecified());
  EXPECT_FALSE(addr("0.0.0.1").isUnspecified());
  EXPECT_FALSE(addr("::1").isUnspecified());
  EXPECT_FALSE(addr("198.18.0.1").isUnspecified());
}

TEST(EndpointTest, Str) {
  EXPECT_EQ((Endpoint{addr("198.18.0.1"), 80}).str(), "198.18.0.1:80");
  EXPECT_EQ((Endpoint{addr("::ffff:198.18.0.1"), 65535}).str(), "198.18.0.1:65535");
  EXPECT_EQ((Endpoint{addr("2001:2::1"), 80}).str(), "[2001:2::1]:80");
  EXPECT_EQ((Endpoint{addr("::1"), 15001}).str(), "[::1]:15001");
  EXPECT_EQ((Endpoint{addr("::"), 0}).str(), "[::]:0");
}

cw_event rawEvent(uint8_t kind, uint16_t family) {
  cw_event e;
  std::memset(&e, 0, sizeof e);
  e.ts_ns = 1'000'000'123;
  e.sock_id = 0xffff888012345678ULL;
  e.cgroup_id = 4242;
  e.bytes_received = 77;
  e.netns = 4026532000U;
  e.pid = 1234;
  e.uid = 1000;
  e.gid = 1001;
  e.sport = 40000;
  e.dport = 8080;
  e.family = family;
  e.kind = kind;
  e.flags = CW_F_OWNER_KNOWN | CW_F_PEER_FIN;
  std::memcpy(e.comm, "curl", 5);
  return e;
}

std::vector<uint8_t> bytesOf(const cw_event& e, size_t offset = 0) {
  std::vector<uint8_t> out(offset + sizeof e);
  std::memcpy(out.data() + offset, &e, sizeof e);
  return out;
}

// Sets a record's IPv4 ends (network byte order, as the kernel writes them).
void setV4Ends(cw_event& e, std::array<uint8_t, 4> src, std::array<uint8_t, 4> dst) {
  std::memcpy(e.saddr, src.data(), 4);
  std::memcpy(e.daddr, dst.data(), 4);
}

TEST(DecodeEventTest, DecodesIpv4) {
  cw_event e = rawEvent(CW_EV_ACTIVE_FAILED, AF_INET);
  setV4Ends(e, {198, 18, 0, 2}, {198, 19, 0, 1});
  std::memset(e.saddr + 4, 0xaa, 12);  // bytes past an IPv4 address are ignored
  const auto buf = bytesOf(e);
  const auto ev = decodeEvent(buf);
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->kind, EventKind::ActiveFailed);
  EXPECT_EQ(ev->flags, CW_F_OWNER_KNOWN | CW_F_PEER_FIN);
  EXPECT_TRUE(ev->ownerKnown());
  EXPECT_EQ(ev->ts_ns, 1'000'000'123U);
  EXPECT_EQ(ev->sock_id, 0xffff888012345678ULL);
  EXPECT_EQ(ev->cgroup_id, 4242U);
  EXPECT_EQ(ev->bytes_received, 77U);
  EXPECT_EQ(ev->netns, 4026532000U);
  EXPECT_EQ(ev->pid, 1234U);
  EXPECT_EQ(ev->uid, 1000U);
  EXPECT_EQ(ev->gid, 1001U);
  EXPECT_EQ(ev->src, (Endpoint{addr("198.18.0.2"), 40000}));
  EXPECT_EQ(ev->dst, (Endpoint{addr("198.19.0.1"), 8080}));
  EXPECT_EQ(ev->commStr(), "curl");
}

TEST(DecodeEventTest, DecodesIpv6AndV4MappedIpv6) {
  cw_event e = rawEvent(CW_EV_PASSIVE_ESTABLISHED, AF_INET6);
  const Address local = addr("::ffff:127.0.0.1");
  const Address peer = addr("::ffff:198.18.0.2");
  std::memcpy(e.saddr, local.bytes.data(), 16);
  std::memcpy(e.daddr, peer.bytes.data(), 16);
  auto ev = decodeEvent(bytesOf(e));
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->kind, EventKind::PassiveEstablished);
  EXPECT_EQ(ev->src.str(), "127.0.0.1:40000");
  EXPECT_EQ(ev->dst.str(), "198.18.0.2:8080");
  EXPECT_TRUE(ev->dst.addr.isV4());

  const Address v6 = addr("2001:2::1");
  std::memcpy(e.daddr, v6.bytes.data(), 16);
  ev = decodeEvent(bytesOf(e));
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->dst.str(), "[2001:2::1]:8080");
}

TEST(DecodeEventTest, AcceptsEveryKnownKind) {
  for (uint8_t kind = CW_EV_ACTIVE_ESTABLISHED; kind <= CW_EV_ACTIVE_CLOSED; ++kind) {
    const auto ev = decodeEvent(bytesOf(rawEvent(kind, AF_INET)));
    ASSERT_TRUE(ev.has_value()) << int{kind};
    EXPECT_EQ(static_cast<uint8_t>(ev->kind), kind);
  }
}

TEST(DecodeEventTest, RejectsShortBuffers) {
  const auto buf = bytesOf(rawEvent(CW_EV_ACTIVE_ESTABLISHED, AF_INET));
  EXPECT_FALSE(decodeEvent(std::span<const uint8_t>()).has_value());
  EXPECT_FALSE(decodeEvent(std::span(buf.data(), sizeof(cw_event) - 1)).has_value());
  EXPECT_TRUE(decodeEvent(std::span(buf.data(), sizeof(cw_event))).has_value());
}

TEST(DecodeEventTest, AcceptsLongerAndUnalignedBuffers) {
  auto buf = bytesOf(rawEvent(CW_EV_ACTIVE_ESTABLISHED, AF_INET), 1);
  buf.resize(buf.size() + 8, 0xee);
  const auto ev = decodeEvent(std::span(buf).subspan(1));
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->sock_id, 0xffff888012345678ULL);
}

TEST(DecodeEventTest, RejectsUnknownKinds) {
  for (uint8_t kind : {0, 5, 255}) {
    EXPECT_FALSE(decodeEvent(bytesOf(rawEvent(kind, AF_INET))).has_value()) << int{kind};
  }
}

TEST(DecodeEventTest, RejectsUnknownFamilies) {
  for (uint16_t family : {AF_UNSPEC, AF_UNIX, AF_PACKET, 0xffff}) {
    EXPECT_FALSE(decodeEvent(bytesOf(rawEvent(CW_EV_ACTIVE_ESTABLISHED, family))).has_value())
        << family;
  }
}

TEST(DecodeEventTest, CommWithoutTerminatorStaysInBounds) {
  cw_event e = rawEvent(CW_EV_ACTIVE_ESTABLISHED, AF_INET);
  std::memset(e.comm, 'x', CW_COMM_LEN);
  const auto ev = decodeEvent(bytesOf(e));
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->commStr(), std::string(CW_COMM_LEN, 'x'));
}

void expectSameEvent(const ConnEvent& a, const ConnEvent& b) {
  const auto fields = [](const ConnEvent& e) {
    return std::tie(e.kind, e.flags, e.ts_ns, e.sock_id, e.cgroup_id, e.bytes_received, e.netns,
                    e.pid, e.uid, e.gid, e.src, e.dst, e.comm);
  };
  EXPECT_TRUE(fields(a) == fields(b)) << a.src.str() << " " << a.dst.str() << " " << a.commStr();
}

std::vector<uint8_t> closeRecord(const cw_close_event& c) {
  std::vector<uint8_t> out(sizeof c);
  std::memcpy(out.data(), &c, sizeof c);
  return out;
}

// The kernel sends a close as the 32-byte head alone (capture.h).
TEST(DecodeEventTest, DecodesACloseRecordFromItsHead) {
  cw_close_event c{};
  c.ts_ns = 2'000'000'456;
  c.sock_id = 0xffff888087654321ULL;
  c.bytes_received = 1;
  c.kind = CW_EV_ACTIVE_CLOSED;
  c.flags = CW_F_PEER_FIN | CW_F_RESET_RECEIVED;
  const auto buf = closeRecord(c);
  const auto ev = decodeEvent(buf);
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->kind, EventKind::ActiveClosed);
  EXPECT_EQ(ev->ts_ns, 2'000'000'456U);
  EXPECT_EQ(ev->sock_id, 0xffff888087654321ULL);
  EXPECT_EQ(ev->bytes_received, 1U);
  EXPECT_EQ(ev->flags, CW_F_PEER_FIN | CW_F_RESET_RECEIVED);
  EXPECT_EQ(ev->netns, 0U);
  EXPECT_FALSE(decodeEvent(std::span(buf.data(), sizeof c - 1)).has_value());

  // The head of a full record reads the same; the rest is not a close's.
  cw_event full = rawEvent(CW_EV_ACTIVE_CLOSED, AF_INET);
  std::memcpy(&full, &c, sizeof c);
  const auto from_full = decodeEvent(bytesOf(full));
  ASSERT_TRUE(from_full.has_value());
  EXPECT_EQ(from_full->sock_id, c.sock_id);
  EXPECT_EQ(from_full->pid, 0U);
  EXPECT_EQ(from_full->commStr(), "");
}

// The kernel sends the sidecar's accept as the head and the ends.
TEST(DecodeEventTest, DecodesAnAcceptRecordWithoutOwner) {
  cw_event full = rawEvent(CW_EV_PASSIVE_ESTABLISHED, AF_INET);
  setV4Ends(full, {127, 0, 0, 1}, {198, 18, 0, 2});
  full.sport = 15001;
  cw_accept_event a;
  std::memcpy(&a, &full, sizeof a);
  a._pad = 0;
  std::vector<uint8_t> buf(sizeof a);
  std::memcpy(buf.data(), &a, sizeof a);
  const auto ev = decodeEvent(buf);
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->kind, EventKind::PassiveEstablished);
  EXPECT_EQ(ev->sock_id, full.sock_id);
  EXPECT_EQ(ev->netns, full.netns);
  EXPECT_EQ(ev->src.str(), "127.0.0.1:15001");
  EXPECT_EQ(ev->dst.str(), "198.18.0.2:8080");
  EXPECT_EQ(ev->pid, 0U);
  EXPECT_EQ(ev->cgroup_id, 0U);
  EXPECT_EQ(ev->commStr(), "");
  EXPECT_FALSE(decodeEvent(std::span(buf.data(), sizeof a - 1)).has_value());
  // The whole cw_event of an accept reads the same: its owner is not read.
  const auto from_full = decodeEvent(bytesOf(full));
  ASSERT_TRUE(from_full.has_value());
  EXPECT_EQ(from_full->dst, ev->dst);
  EXPECT_EQ(from_full->pid, 0U);
}

// The agent decodes every record into one event: each decode must write
// every field (nothing of the record before may show through), and a
// rejected record must leave the event as it was.
TEST(DecodeEventTest, DecodingIntoAReusedEventOverwritesEveryField) {
  cw_event v6 = rawEvent(CW_EV_PASSIVE_ESTABLISHED, AF_INET6);
  std::memset(v6.saddr, 0x20, 16);
  std::memset(v6.daddr, 0x30, 16);
  std::memset(v6.comm, 'y', CW_COMM_LEN);
  // Every field differs from v6's as decoded (an accept: no owner).
  cw_event v4 = rawEvent(CW_EV_ACTIVE_FAILED, AF_INET);
  v4.ts_ns = 5;
  v4.sock_id = 6;
  v4.bytes_received = 0;
  v4.netns = 8;
  v4.flags = CW_F_RESET_RECEIVED;
  v4.sport = 12;
  v4.dport = 13;
  setV4Ends(v4, {198, 18, 0, 9}, {0, 0, 0, 0});
  std::memcpy(v4.comm, "ab", 3);

  ConnEvent ev;
  ASSERT_TRUE(decodeEvent(bytesOf(v6), ev));
  expectSameEvent(ev, *decodeEvent(bytesOf(v6)));
  ASSERT_TRUE(decodeEvent(bytesOf(v4), ev));
  expectSameEvent(ev, *decodeEvent(bytesOf(v4)));
  EXPECT_EQ(ev.src.str(), "198.18.0.9:12");
  EXPECT_EQ(ev.dst.str(), "0.0.0.0:13");
  EXPECT_EQ(ev.commStr(), "ab");

  EXPECT_FALSE(decodeEvent(bytesOf(rawEvent(9, AF_INET)), ev));
  EXPECT_FALSE(decodeEvent(bytesOf(rawEvent(CW_EV_ACTIVE_ESTABLISHED, AF_UNIX)), ev));
  const auto buf = bytesOf(v4);  // a failed record is sent whole
  EXPECT_FALSE(decodeEvent(std::span(buf.data(), sizeof(cw_event) - 1), ev));
  expectSameEvent(ev, *decodeEvent(bytesOf(v4)));

  // A close (its head only) leaves nothing of the owner or ends before it.
  cw_close_event c{};
  c.ts_ns = 14;
  c.sock_id = 15;
  c.kind = CW_EV_ACTIVE_CLOSED;
  ASSERT_TRUE(decodeEvent(closeRecord(c), ev));
  ConnEvent want;
  want.kind = EventKind::ActiveClosed;
  want.ts_ns = 14;
  want.sock_id = 15;
  expectSameEvent(ev, want);
}

TEST(VerdictTest, Names) {
  EXPECT_EQ(toString(Verdict::Captured), "captured");
  EXPECT_EQ(toString(Verdict::Bypassed), "bypassed");
  EXPECT_EQ(toString(Verdict::Proxy), "proxy");
  EXPECT_EQ(toString(Verdict::Local), "local");
  EXPECT_EQ(toString(Outcome::Open), "open");
  EXPECT_EQ(toString(Outcome::Refused), "refused");
  EXPECT_EQ(toString(Outcome::Failed), "failed");
  EXPECT_EQ(toString(Outcome::Reset), "reset");
  EXPECT_EQ(toString(Outcome::PeerClosed), "peer-closed");
  EXPECT_EQ(toString(Outcome::Data), "data");
  EXPECT_EQ(toString(Outcome::Closed), "closed");
}

TEST(VerdictTest, OutcomeFromClose) {
  EXPECT_EQ(outcomeFromClose(0, 0), Outcome::Closed);
  EXPECT_EQ(outcomeFromClose(CW_F_OWNER_KNOWN, 0), Outcome::Closed);
  EXPECT_EQ(outcomeFromClose(CW_F_PEER_FIN, 0), Outcome::PeerClosed);
  EXPECT_EQ(outcomeFromClose(CW_F_RESET_RECEIVED, 0), Outcome::Reset);
  EXPECT_EQ(outcomeFromClose(CW_F_RESET_RECEIVED | CW_F_PEER_FIN, 0), Outcome::Reset);
  EXPECT_EQ(outcomeFromClose(CW_F_RESET_RECEIVED | CW_F_PEER_FIN, 1), Outcome::Data);
  EXPECT_EQ(outcomeFromClose(0, 1), Outcome::Data);
  EXPECT_TRUE(isRejection(Outcome::Reset));
  EXPECT_TRUE(isRejection(Outcome::PeerClosed));
  EXPECT_FALSE(isRejection(Outcome::Data));
  EXPECT_FALSE(isRejection(Outcome::Closed));
}

}  // namespace
}  // namespace cw
