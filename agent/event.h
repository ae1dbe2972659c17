// C++ view of the BPF boundary (bpf/capture.h): layout checks, address
// normalisation and decoding of ring-buffer records into ConnEvent.
#pragma once

#include <array>
#include <compare>
#include <cstring>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

extern "C" {
#include "capture.h"
}

namespace cw {

static_assert(sizeof(cw_event) == 104, "cw_event layout changed: update agent and BPF together");
static_assert(sizeof(cw_close_event) == 32, "cw_close_event layout changed");
static_assert(sizeof(cw_accept_event) == 72, "cw_accept_event layout changed");
static_assert(offsetof(cw_event, ts_ns) == 0);
static_assert(offsetof(cw_event, netns) == 24);
static_assert(offsetof(cw_event, saddr) == 32);
static_assert(offsetof(cw_event, sport) == 64);
static_assert(offsetof(cw_event, cgroup_id) == 72);
static_assert(offsetof(cw_event, comm) == 88);
// Each shorter record is a prefix of a full one.
#define CW_SAME_OFFSET(shorter, field) \
  static_assert(offsetof(shorter, field) == offsetof(cw_event, field), #shorter "." #field)
CW_SAME_OFFSET(cw_close_event, ts_ns);
CW_SAME_OFFSET(cw_close_event, sock_id);
CW_SAME_OFFSET(cw_close_event, bytes_received);
CW_SAME_OFFSET(cw_close_event, netns);
CW_SAME_OFFSET(cw_close_event, kind);
CW_SAME_OFFSET(cw_close_event, flags);
CW_SAME_OFFSET(cw_close_event, family);
CW_SAME_OFFSET(cw_accept_event, ts_ns);
CW_SAME_OFFSET(cw_accept_event, sock_id);
CW_SAME_OFFSET(cw_accept_event, netns);
CW_SAME_OFFSET(cw_accept_event, kind);
CW_SAME_OFFSET(cw_accept_event, flags);
CW_SAME_OFFSET(cw_accept_event, family);
CW_SAME_OFFSET(cw_accept_event, saddr);
CW_SAME_OFFSET(cw_accept_event, daddr);
CW_SAME_OFFSET(cw_accept_event, sport);
CW_SAME_OFFSET(cw_accept_event, dport);
#undef CW_SAME_OFFSET

// An IP address in IPv6 form: IPv4 addresses are stored v4-mapped
// (::ffff:a.b.c.d), so an AF_INET socket and a dual-stack AF_INET6 socket
// that talk to the same IPv4 peer produce equal keys.
struct Address {
  std::array<uint8_t, 16> bytes{};

  static Address fromV4(const uint8_t network_order[4]);
  static Address fromV6(const uint8_t network_order[16]);
  // Parses "198.18.0.1", "2001:2::1" or "::ffff:198.18.0.1".
  static std::optional<Address> parse(const std::string& text);

  bool isV4() const {  // v4-mapped
    return word(0) == 0 && bytes[8] == 0 && bytes[9] == 0 && bytes[10] == 0xff && bytes[11] == 0xff;
  }
  bool isLoopback() const;
  bool isUnspecified() const;
  std::string str() const;  // dotted quad for v4, RFC 5952 for v6

  // Compared as two words: the join compares addresses for every record, and
  // std::array's == is a call to memcmp (perf of the agent, README
  // Performance).
  friend bool operator==(const Address& a, const Address& b) {
    return a.word(0) == b.word(0) && a.word(8) == b.word(8);
  }
  friend auto operator<=>(const Address&, const Address&) = default;

 private:
  uint64_t word(size_t at) const {
    uint64_t w;
    std::memcpy(&w, bytes.data() + at, sizeof w);
    return w;
  }
};

struct Endpoint {
  Address addr;
  uint16_t port = 0;  // host byte order

  // "198.18.0.1:80" or "[2001:2::1]:80"
  std::string str() const;
  friend bool operator==(const Endpoint&, const Endpoint&) = default;
  friend auto operator<=>(const Endpoint&, const Endpoint&) = default;
};

enum class EventKind : uint8_t {
  ActiveEstablished = CW_EV_ACTIVE_ESTABLISHED,
  ActiveFailed = CW_EV_ACTIVE_FAILED,
  PassiveEstablished = CW_EV_PASSIVE_ESTABLISHED,
  ActiveClosed = CW_EV_ACTIVE_CLOSED,
};

// One decoded ring-buffer record. For Active* events src is the app's end
// and dst its destination as the app asked for it (pre-NAT). For
// PassiveEstablished src is the sidecar's end (port = redirect port) and
// dst the peer, i.e. the app's end.
struct ConnEvent {
  EventKind kind = EventKind::ActiveEstablished;
  uint8_t flags = 0;  // CW_F_*
  uint64_t ts_ns = 0;  // CLOCK_MONOTONIC
  uint64_t sock_id = 0;
  uint64_t cgroup_id = 0;
  uint64_t bytes_received = 0;
  uint32_t netns = 0;
  uint32_t pid = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  Endpoint src;
  Endpoint dst;
  std::array<char, CW_COMM_LEN> comm{};

  bool ownerKnown() const { return (flags & CW_F_OWNER_KNOWN) != 0; }
  std::string commStr() const;
};

// The bytes the kernel sends for a record of this kind (bpf/capture.h):
// each kind the prefix of cw_event it needs.
constexpr size_t recordSize(EventKind kind) {
  switch (kind) {
    case EventKind::ActiveClosed:
      return sizeof(cw_close_event);
    case EventKind::PassiveEstablished:
      return sizeof(cw_accept_event);
    default:
      return sizeof(cw_event);
  }
}

// Decodes one ring-buffer record; nullopt if it is too short or of an
// unknown kind (never trusts the kernel side blindly). A close record is a
// cw_close_event (its owner fields, ends and comm decode as zero), an accept
// a cw_accept_event (its owner fields and comm decode as zero); a longer
// record is read as the shorter one of its kind.
std::optional<ConnEvent> decodeEvent(std::span<const uint8_t> raw);
// The same into `out` (every field written); false, and `out` unchanged, for
// a record the other form gives nullopt for. The agent's form: no event is
// built and copied per record.
bool decodeEvent(std::span<const uint8_t> raw, ConnEvent& out);

}  // namespace cw
