// The processes of the simulated pod, run inside children made by
// spawnInPod(): the strict-mTLS upstream, the sidecar (outbound capture
// listener + admin) and the app client. Each reports on report_fd with the
// frames of spawn.h. Used by LabPod; exposed for tests and custom labs.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "event.h"

namespace cw::lab {

// ep as a sockaddr_in (IPv4, from its v4-mapped form) or sockaddr_in6 in ss;
// returns the length to pass to bind()/connect().
socklen_t toSockaddr(const Endpoint& ep, sockaddr_storage& ss);

// Strict-mTLS upstream: listens on [::]:port (dual-stack). A connection whose
// first byte (waited for up to 2 s) is a TLS handshake record (0x16) gets a TLS
// handshake (self-signed EC certificate made in memory at start), its HTTP
// request read and "HTTP/1.1 200 OK ... upstream: mtls ok\n" as the answer;
// anything else is reset (SO_LINGER 0), as a STRICT PeerAuthentication does.
// Sends 'R' once listening; serves until `lifetime` has passed.
void upstreamRole(uint16_t port, std::chrono::seconds lifetime, int report_fd);

// Sidecar: listens on [::]:redirect_port (dual-stack), reads each accepted
// connection's original destination (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST),
// connects to it (as its own uid, which Istio's rules exempt), makes a TLS
// client handshake (no verification) and relays both ways until both sides
// closed. Also answers "admin ok" on 127.0.0.1:admin_port and [::1]:admin_port.
// Sends 'R' once listening; serves until `lifetime` has passed.
void sidecarRole(uint16_t redirect_port, uint16_t admin_port, std::chrono::seconds lifetime,
                 int report_fd);

enum class ClientOutcome : uint8_t {
  kOk = 0,       // the answer's status line says 200
  kReset = 1,    // ECONNRESET or EPIPE
  kRefused = 2,  // ECONNREFUSED
  kOther = 3,    // timeout (3 s per connection), other error, non-200 answer
};
const char* outcomeName(ClientOutcome outcome);

struct ClientRecord {
  uint16_t local_port = 0;  // from getsockname() right after connect()
  ClientOutcome outcome = ClientOutcome::kOther;
};

// App client: `count` sequential HTTP/1.0 GETs to dst, each on a new TCP
// connection with a 3 s deadline, reading the answer to EOF. Sends one 'D'
// frame with the records (encodeClientRecords).
void clientRole(const Endpoint& dst, int count, int report_fd);

std::string encodeClientRecords(const std::vector<ClientRecord>& records);
std::vector<ClientRecord> decodeClientRecords(const std::string& payload);

}  // namespace cw::lab
