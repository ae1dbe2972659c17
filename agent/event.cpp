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

std::optional<ConnEvent> decodeEvent(std::span<const uint8_t> raw) {
  if (raw.size() < sizeof(cw_event)) return std::nullopt;
  cw_event e;
  std::memcpy(&e, raw.data(), sizeof e);  // the ring buffer gives no alignment guarantee to rely on

  if (e.kind < CW_EV_ACTIVE_ESTABLISHED || e.kind > CW_EV_ACTIVE_CLOSED) return std::nullopt;
  if (e.family != AF_INET && e.family != AF_INET6) return std::nullopt;

  ConnEvent ev;
  ev.kind = static_cast<EventKind>(e.kind);
  ev.flags = e.flags;
  ev.ts_ns = e.ts_ns;
  ev.sock_id = e.sock_id;
  ev.cgroup_id = e.cgroup_id;
  ev.bytes_received = e.bytes_received;
  ev.netns = e.netns;
  ev.pid = e.pid;
  ev.uid = e.uid;
  ev.gid = e.gid;
  if (e.family == AF_INET) {
    ev.src.addr = Address::fromV4(e.saddr);
    ev.dst.addr = Address::fromV4(e.daddr);
  } else {
    ev.src.addr = Address::fromV6(e.saddr);
    ev.dst.addr = Address::fromV6(e.daddr);
  }
  ev.src.port = e.sport;
  ev.dst.port = e.dport;
  std::memcpy(ev.comm.data(), e.comm, CW_COMM_LEN);
  return ev;
}

}  // namespace cw
