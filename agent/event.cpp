#include "event.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace cw {

namespace {

constexpr std::array<uint8_t, 12> kV4MappedPrefix = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

}  // namespace

Address Address::fromV4(const uint8_t network_order[4]) {
  Address a;
  std::memcpy(a.bytes.data(), kV4MappedPrefix.data(), kV4MappedPrefix.size());
  std::memcpy(a.bytes.data() + 12, network_order, 4);
  return a;
}

Address Address::fromV6(const uint8_t network_order[16]) {
  Address a;
  std::memcpy(a.bytes.data(), network_order, 16);
  return a;
}

std::optional<Address> Address::parse(const std::string& text) {
  if (text.find('\0') != std::string::npos) return std::nullopt;
  if (text.find(':') != std::string::npos) {
    uint8_t buf[16];
    if (inet_pton(AF_INET6, text.c_str(), buf) != 1) return std::nullopt;
    return fromV6(buf);
  }
  uint8_t buf[4];
  if (inet_pton(AF_INET, text.c_str(), buf) != 1) return std::nullopt;
  return fromV4(buf);
}

bool Address::isLoopback() const {
  if (isV4()) return bytes[12] == 127;
  static constexpr Address kV6Loopback{{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}};
  return *this == kV6Loopback;
}

bool Address::isUnspecified() const {
  if (isV4()) return bytes[12] == 0 && bytes[13] == 0 && bytes[14] == 0 && bytes[15] == 0;
  return *this == Address{};
}

std::string Address::str() const {
  char buf[INET6_ADDRSTRLEN];
  if (isV4()) {
    if (inet_ntop(AF_INET, bytes.data() + 12, buf, sizeof buf) == nullptr) return "?";
    return buf;
  }
  // glibc writes IPv4-compatible addresses (::/96, deprecated) in mixed
  // notation ("::1.2.3.4"); RFC 5952 keeps that form for well-known prefixes
  // only, so those are written in hex here.
  bool compat_prefix =
      std::all_of(bytes.begin(), bytes.begin() + 12, [](uint8_t b) { return b == 0; });
  if (compat_prefix && (bytes[12] != 0 || bytes[13] != 0)) {
    std::snprintf(buf, sizeof buf, "::%x:%x", (bytes[12] << 8) | bytes[13],
                  (bytes[14] << 8) | bytes[15]);
    return buf;
  }
  if (inet_ntop(AF_INET6, bytes.data(), buf, sizeof buf) == nullptr) return "?";
  return buf;
}

std::string Endpoint::str() const {
  std::string out;
  if (addr.isV4()) {
    out = addr.str();
  } else {
    out = "[" + addr.str() + "]";
  }
  out += ':';
  out += std::to_string(port);
  return out;
}

std::string ConnEvent::commStr() const {
  return std::string(comm.data(), strnlen(comm.data(), comm.size()));
}

namespace {

// One field of the record at its offset (the ring buffer gives no alignment
// guarantee to rely on).
template <typename T>
T fieldAt(const uint8_t* raw, size_t offset) {
  T v;
  std::memcpy(&v, raw + offset, sizeof v);
  return v;
}

void addressAt(const uint8_t* raw, size_t offset, bool v4, Address& out) {
  if (v4) {
    std::memcpy(out.bytes.data(), kV4MappedPrefix.data(), kV4MappedPrefix.size());
    std::memcpy(out.bytes.data() + 12, raw + offset, 4);
  } else {
    std::memcpy(out.bytes.data(), raw + offset, 16);
  }
}

}  // namespace

bool decodeEvent(std::span<const uint8_t> raw, ConnEvent& out) {
  // Field by field into the caller's event: copying the whole record to a
  // local first, then building and returning a new event, cost a store
  // forwarding stall or two per record, 13% of the agent's CPU on a
  // bypassed storm (perf; README Performance).
  if (raw.size() < sizeof(cw_close_event)) return false;
  const uint8_t* r = raw.data();
  const auto kind = fieldAt<uint8_t>(r, offsetof(cw_event, kind));
  if (kind < CW_EV_ACTIVE_ESTABLISHED || kind > CW_EV_ACTIVE_CLOSED) return false;
  if (raw.size() < recordSize(static_cast<EventKind>(kind))) return false;
  const bool close = kind == CW_EV_ACTIVE_CLOSED;
  const bool accept = kind == CW_EV_PASSIVE_ESTABLISHED;
  const auto family = fieldAt<uint16_t>(r, offsetof(cw_event, family));
  if (!close && family != AF_INET && family != AF_INET6) return false;

  out.kind = static_cast<EventKind>(kind);
  out.flags = fieldAt<uint8_t>(r, offsetof(cw_event, flags));
  out.ts_ns = fieldAt<uint64_t>(r, offsetof(cw_event, ts_ns));
  out.sock_id = fieldAt<uint64_t>(r, offsetof(cw_event, sock_id));
  out.bytes_received = fieldAt<uint64_t>(r, offsetof(cw_event, bytes_received));
  out.netns = fieldAt<uint32_t>(r, offsetof(cw_event, netns));
  if (close) {
    out.src = out.dst = Endpoint{};
  } else {
    const bool v4 = family == AF_INET;
    addressAt(r, offsetof(cw_event, saddr), v4, out.src.addr);
    addressAt(r, offsetof(cw_event, daddr), v4, out.dst.addr);
    out.src.port = fieldAt<uint16_t>(r, offsetof(cw_event, sport));
    out.dst.port = fieldAt<uint16_t>(r, offsetof(cw_event, dport));
  }
  if (close || accept) {
    out.cgroup_id = 0;
    out.pid = out.uid = out.gid = 0;
    out.comm.fill(0);
    return true;
  }
  out.cgroup_id = fieldAt<uint64_t>(r, offsetof(cw_event, cgroup_id));
  out.pid = fieldAt<uint32_t>(r, offsetof(cw_event, pid));
  out.uid = fieldAt<uint32_t>(r, offsetof(cw_event, uid));
  out.gid = fieldAt<uint32_t>(r, offsetof(cw_event, gid));
  std::memcpy(out.comm.data(), r + offsetof(cw_event, comm), CW_COMM_LEN);
  return true;
}

std::optional<ConnEvent> decodeEvent(std::span<const uint8_t> raw) {
  ConnEvent ev;
  if (!decodeEvent(raw, ev)) return std::nullopt;
  return ev;
}

}  // namespace cw
