// What capturewatch concludes about one outbound connection.
#pragma once

#include <cstdint>
#include <string_view>

#include "event.h"

namespace cw {

enum class Verdict : uint8_t {
  Captured,  // redirected to the sidecar's outbound port
  Bypassed,  // reached its destination directly: a capture gap
  Proxy,     // made by the sidecar proxy itself
  Local,     // destination inside the pod (loopback or own address)
  Unknown,   // its accept may have been lost (ring buffer full): cannot be told
};
inline constexpr Verdict kAllVerdicts[] = {Verdict::Captured, Verdict::Bypassed, Verdict::Proxy,
                                           Verdict::Local, Verdict::Unknown};

// How the connection ended, as far as known when reported.
enum class Outcome : uint8_t {
  Open,        // still open when the verdict was reported
  Refused,     // connect() failed with a reset (RST to the SYN)
  Failed,      // connect() failed otherwise (timeout, unreachable)
  Reset,       // reset by the peer before any reply byte
  PeerClosed,  // closed by the peer (FIN) before any reply byte
  Data,        // reply bytes were received, however it ended
  Closed,      // closed locally before any reply byte
};

std::string_view toString(Verdict v);
std::string_view toString(Outcome o);

// The peer rejected the connection before answering: for a bypassed
// connection this is the strict-mTLS symptom (503 connection termination).
inline bool isRejection(Outcome o) {
  return o == Outcome::Reset || o == Outcome::PeerClosed;
}

// Outcome of a connection from the flags and byte count of its close event.
Outcome outcomeFromClose(uint8_t flags, uint64_t bytes_received);

struct Connection {
  Verdict verdict = Verdict::Bypassed;
  Outcome outcome = Outcome::Open;
  uint8_t flags = 0;  // CW_F_* of the connect record
  uint32_t netns = 0;
  uint32_t pid = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t cgroup_id = 0;
  uint64_t sock_id = 0;
  uint64_t established_ns = 0;  // CLOCK_MONOTONIC of the connect result
  uint64_t decided_ns = 0;      // CLOCK_MONOTONIC when the verdict was reached
  Endpoint src;                 // app's end
  Endpoint dst;                 // destination as the app asked (pre-NAT)
  std::array<char, CW_COMM_LEN> comm{};

  bool ownerKnown() const { return (flags & CW_F_OWNER_KNOWN) != 0; }
};

}  // namespace cw
