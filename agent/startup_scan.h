// The startup scan: classify the TCP connections already open in a watched
// network namespace when the agent starts (or starts watching it), so that a
// restart leaves no blind spot.
//
// Three small I/O functions read the kernel's view, each bounded:
//   scanTcpSockets   the namespace's TCP sockets (NETLINK_SOCK_DIAG, inet_diag)
//   dumpConntrack    the namespace's conntrack table (libnetfilter_conntrack)
//   socketOwners     which process holds each socket (/proc/*/fd)
// and classifyOpenConnections, pure logic with no I/O, turns them into the
// same Connection records the correlator produces from events.
//
// How the kernel shows a captured connection: the app's socket keeps its
// original destination (NAT is done by conntrack, not on the socket), the
// sidecar holds an accepted socket on the redirect port whose peer is the
// app's (address, port), and conntrack holds an entry whose original tuple is
// the app's (local, remote) and whose reply comes from the redirect port.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "event.h"
#include "verdict.h"

namespace cw {

// TCP states as inet_diag reports them (include/net/tcp_states.h).
inline constexpr uint8_t kTcpEstablished = 1;
inline constexpr uint8_t kTcpSynSent = 2;
inline constexpr uint8_t kTcpListen = 10;

// One TCP socket of a namespace. Addresses are normalised as everywhere in
// the agent: IPv4 (and an AF_INET6 socket's v4-mapped peers) as ::ffff:a.b.c.d.
struct ScannedSocket {
  Endpoint local, remote;
  uint8_t state = 0;       // kTcp*
  bool v6only = false;     // AF_INET6 listener with IPV6_V6ONLY (kernel reports it for LISTEN only)
  uint32_t uid = 0;        // idiag_uid: the socket's owner uid (the creator's, at socket())
  uint64_t inode = 0;      // idiag_inode; 0 if no file holds it (e.g. not yet accept()ed)
  uint64_t cgroup_id = 0;  // INET_DIAG_CGROUP_ID: cgroup v2 of the creator, 0 if not reported
};

// A conntrack entry of a TCP connection, both tuples as conntrack keeps them.
// A REDIRECT to the sidecar: orig_dst is where the app connected, reply_src
// is the sidecar's end (port = redirect port).
struct ConntrackEntry {
  Endpoint orig_src, orig_dst;
  Endpoint reply_src, reply_dst;
};

struct OwnerProcess {
  uint32_t pid = 0;  // as seen in the scanned proc_root
  uint32_t gid = 0;  // real gid ("Gid:" of /proc/PID/status)
  std::string comm;  // /proc/PID/comm, at most CW_COMM_LEN - 1 characters
};
// socket inode -> the process holding it (the lowest pid if several do).
using Owners = std::map<uint64_t, OwnerProcess>;

// Limits of the I/O functions (a node can hold millions of sockets).
inline constexpr size_t kMaxScannedSockets = 1'000'000;
inline constexpr size_t kMaxConntrackEntries = 1'000'000;
inline constexpr size_t kMaxOwnerFds = 200'000;

// TCP sockets of both families in ESTABLISHED, SYN_SENT or LISTEN state in
// the network namespace at netns_path (/proc/PID/ns/net, /run/netns/NAME;
// empty: the calling thread's own). The dump runs on a short-lived thread
// that setns()es into the namespace; the caller's namespace is untouched.
// Throws std::runtime_error naming the step (open, setns, netlink, a
// malformed reply) on failure. At most kMaxScannedSockets sockets are kept.
// Needs CAP_SYS_ADMIN (setns) and, for other users' sockets, nothing more:
// sock_diag dumps every socket of the namespace.
std::vector<ScannedSocket> scanTcpSockets(const std::string& netns_path);

// Which conntrack entries to keep from a dump.
using ConntrackFilter = std::function<bool(const ConntrackEntry&)>;

// TCP entries of the namespace's conntrack table (both families), read the
// same way; only those `keep` accepts, when it is set (the table can be far
// larger than what is asked of it: a pod's connections that ended linger
// there for minutes). At most kMaxConntrackEntries are kept. Throws
// std::runtime_error on failure (CAP_NET_ADMIN is needed). An empty result
// is normal when nothing is tracked.
std::vector<ConntrackEntry> dumpConntrack(const std::string& netns_path,
                                          const ConntrackFilter& keep = {});

// Single TCP entries of one namespace's conntrack table, looked up by their
// reply tuple (the correlator's remap lookup: Correlator::setRemapLookup).
// The netlink socket is opened inside the namespace once and stays there (a
// socket keeps the namespace it was made in), so a lookup is one request and
// its answer, with no thread or setns. It also keeps the namespace alive:
// drop the reader when the namespace stops being watched.
class ConntrackReader {
 public:
  // Throws std::runtime_error if the namespace cannot be entered or the
  // socket cannot be opened (CAP_NET_ADMIN is needed).
  explicit ConntrackReader(const std::string& netns_path);
  ~ConntrackReader();
  ConntrackReader(const ConntrackReader&) = delete;
  ConntrackReader& operator=(const ConntrackReader&) = delete;

  // The entry whose reply tuple is reply_src -> reply_dst (both IPv4, in
  // v4-mapped form, or both IPv6); nullopt if there is none. Throws
  // std::runtime_error on any other failure.
  std::optional<ConntrackEntry> byReply(const Endpoint& reply_src, const Endpoint& reply_dst);

 private:
  int fd_ = -1;       // NETLINK_NETFILTER, in the namespace
  uint32_t seq_ = 0;  // of the last request
};

// Accepts the conntrack entries classifyOpenConnections can use for these
// sockets: those whose original or reply tuple is one socket's (local,
// remote). What the agent keeps of the table is then bounded by the sockets.
ConntrackFilter conntrackFilterFor(const std::vector<ScannedSocket>& sockets);

// Which process holds each of `inodes`: scans <proc_root>/<pid>/fd for links
// "socket:[N]", at most max_fds descriptors in all, skipping what cannot be
// read (processes that exit, permissions). Stops early once every inode is
// found. Inodes no process holds are absent from the result. Reading other
// users' /proc/PID/fd takes CAP_SYS_PTRACE; without it their sockets simply
// have no owner.
Owners socketOwners(const std::string& proc_root, const std::set<uint64_t>& inodes,
                    size_t max_fds = kMaxOwnerFds);

struct ClassifyConfig {
  uint16_t redirect_port = 15001;
  std::set<uint64_t> proxy_cgroups;  // cgroup v2 ids of the sidecar(s)
  uint32_t netns = 0;                // inode of the scanned namespace, copied into each Connection
};

// Connection.flags bits set only by the startup scan (the BPF side uses the
// low bits, CW_F_*; CW_F_OWNER_KNOWN is set when the owner's pid was found).
inline constexpr uint8_t kScanFlagFoundAtStart = 0x40;  // every connection from a scan
inline constexpr uint8_t kScanFlagConnecting = 0x80;    // the socket was in SYN_SENT
static_assert(((CW_F_OWNER_KNOWN | CW_F_RESET_RECEIVED | CW_F_PEER_FIN | CW_F_PROXY_OWNER |
                CW_F_ACCEPT_SEEN) &
               (kScanFlagFoundAtStart | kScanFlagConnecting)) == 0);

// Classifies the outbound connections among `sockets` (one scan of one
// namespace). Pure: no I/O, no clock.
//
// Not reported: LISTEN sockets; sockets accepted by a listener (ESTABLISHED
// with the local endpoint of a listener: same port and same address, or a
// wildcard listener of the family, an AF_INET6 [::] one also taking v4-mapped
// peers unless v6only) or, per conntrack, the responding end of a connection;
// sockets on the redirect port (the sidecar's accepted ends: the join side).
//
// Each other ESTABLISHED or SYN_SENT socket becomes one Connection, in the
// first matching case:
//   proxy     its cgroup id is one of config.proxy_cgroups
//   captured  conntrack has its connection (orig = its local -> remote) with
//             a reply from the redirect port; or, when conntrack has no entry
//             for it, a sidecar socket on the redirect port has it as peer
//   local     the destination is loopback or its own local address
//   bypassed  otherwise
// A conntrack entry for the connection that shows no redirect outranks a
// sidecar socket whose peer merely has the same (address, port) (two sockets
// may share a local port towards different destinations).
//
// Fields: outcome Open, netns from config, uid = the socket's uid, cgroup_id,
// src = local, dst = remote (the pre-NAT destination), sock_id = inode,
// established_ns = decided_ns = 0; pid, gid, comm from `owners` when the inode
// is there (then flags has CW_F_OWNER_KNOWN); flags always has
// kScanFlagFoundAtStart, and kScanFlagConnecting for SYN_SENT. Sockets whose
// remote is unspecified or port 0, and repeated inodes, are ignored. Sorted by
// src, then dst, then sock_id.
std::vector<Connection> classifyOpenConnections(const std::vector<ScannedSocket>& sockets,
                                                const std::vector<ConntrackEntry>& conntrack,
                                                const Owners& owners, const ClassifyConfig& config);

namespace scan_detail {

// Parses one datagram of a NETLINK_SOCK_DIAG dump reply (inet_diag_msg
// messages), appending to `out` (at most `max_sockets` in all; the rest are
// dropped). Returns true when the dump's NLMSG_DONE was seen. Messages of
// another sequence number are skipped. Throws std::runtime_error on an
// NLMSG_ERROR or any length that does not fit (message, attribute). Exposed
// for tests.
bool parseInetDiagDatagram(std::span<const uint8_t> datagram, uint32_t seq,
                           std::vector<ScannedSocket>& out, size_t max_sockets);

// "socket:[12345]" -> 12345; 0 for anything else.
uint64_t parseSocketLink(std::string_view link);

// The real gid from the text of /proc/PID/status; nullopt if absent or malformed.
std::optional<uint32_t> parseStatusGid(std::string_view status);

}  // namespace scan_detail

}  // namespace cw
