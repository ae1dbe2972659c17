// Differential test of the rules evaluator, with the kernel as the oracle.
//
// For each of a set of Istio's own rule sets (tests/fixtures/rules, see
// ORIGIN.md), a "pod" network namespace is programmed with it
// (iptables-nft-restore, iptables-legacy-restore or nft -f), real TCP
// connections are made from the pod as varied UIDs/GIDs to varied
// destinations, and where each one really landed is observed: on a redirect
// listener of the pod (15001 outbound, 15006 inbound, 15053 DNS), on the real
// destination (a listener of the peer namespace, or of the pod for loopback
// and pod-local destinations), refused, or timed out. The rules are then read
// back from the live namespace the way the agent reads them (readRulesText +
// parsePodRules) and the evaluator must predict every connection:
//   Redirect to P <=> landed on the pod's listener on P
//   Accept        <=> landed on the real destination (or refused: no listener)
//   Drop          <=> timed out
// and explain() must call a connection captured exactly when it landed on
// 15001. An Unknown answer fails the test: none of these rule sets contains
// a construct the model does not support on the nat OUTPUT path.
//
// Topology (only namespaces this test creates, removed on every exit):
//   cw-test-diff-pod   lo: 127.0.0.0/8, ::1, ::6 (Istio's IPv6 inbound
//                      passthrough source, as the CNI plugin adds it)
//                      eth0: 198.18.0.2/24, 2001:2::2/64
//                      not-istio-nic: 198.18.1.2/24 (the interface name the
//                      exclude-nic rule sets name)
//   cw-test-diff-peer  eth0: 198.18.0.1/24, 2001:2::1/64; eth1: 198.18.1.1/24
// Every destination is in 198.18.0.0/15, 2001:2::/48 or on the pod's
// loopback. Rule sets whose include/exclude CIDRs lie elsewhere
// (10.0.0.0/8, 1.1.0.0/16, 9.9.0.0/16, 2001:db8::/32) are exercised on their
// not-matching side only; each case says so in its note.
#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "bpf_test_util.h"
#include "lab/roles.h"
#include "lab/spawn.h"
#include "lab/system.h"
#include "pod_rules.h"
#include "rules/evaluator.h"
#include "rules/explain.h"

namespace cw {
namespace {

using Clock = std::chrono::steady_clock;
using lab::UniqueFd;

constexpr const char* kPodNs = "cw-test-diff-pod";
constexpr const char* kPeerNs = "cw-test-diff-peer";
constexpr uint16_t kOutboundPort = 15001;  // Istio's outbound redirect target
constexpr uint16_t kInboundPort = 15006;   // ISTIO_IN_REDIRECT
constexpr uint16_t kDnsPort = 15053;       // ISTIO_OUTPUT_DNS
constexpr uint32_t kProxyId = 1337;        // the proxy's UID and GID in Istio's defaults
constexpr auto kConnectTimeout = std::chrono::seconds(2);
constexpr uint32_t kTokenMagic = 0x43574446;  // "CWDF", then the connection id
constexpr size_t kMaxReportedDisagreements = 25;

// ---- what is tried --------------------------------------------------------

struct Identity {
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::vector<gid_t> groups;  // supplementary (owner matches ignore them)

  std::string str() const {
    std::string s = "uid=" + std::to_string(uid) + " gid=" + std::to_string(gid);
    for (size_t i = 0; i < groups.size(); ++i) {
      s += (i == 0 ? " groups=" : ",") + std::to_string(groups[i]);
    }
    return s;
  }
};

struct Destination {
  Destination(std::string a, uint16_t p, std::string b = "")
      : addr(std::move(a)), port(p), bind(std::move(b)) {}
  std::string addr;
  uint16_t port = 0;
  std::string bind;  // source address to bind; "" leaves the choice to routing
};

// The app's identities tried against every rule set: an ordinary app, the
// proxy's UID and GID together and each alone, root, and an app whose
// supplementary groups hold the proxy's GID (owner matches look at the
// socket's fsgid only, without --suppl-groups).
const std::vector<Identity> kDefaultIdentities = {
    {1000, 1000, {}}, {1337, 1337, {}}, {1337, 1000, {}},
    {1000, 1337, {}}, {0, 0, {}},       {1000, 1000, {1337}},
};

std::vector<Destination> destinations() {
  std::vector<Destination> out;
  auto add = [&](const char* addr, std::initializer_list<uint16_t> ports, const char* bind = "") {
    for (uint16_t port : ports) out.emplace_back(addr, port, bind);
  };
  // The peer, via eth0 and via not-istio-nic. Port 40000 has no listener.
  add("198.18.0.1", {80, 5555, 15008, 15020, 31000, 32000, 53, 40000});
  add("2001:2::1", {80, 32000, 40000});
  add("198.18.1.1", {80, 53});
  // Loopback and the pod's own addresses, via lo. Port 40001 has no listener.
  add("127.0.0.1", {8080, 15008, 53, 40001});
  add("127.0.0.5", {8080});
  add("127.0.0.53", {53});
  add("127.1.2.3", {8080});
  add("198.18.0.2", {8080, 15008});
  add("198.18.1.2", {8080});
  add("::1", {8080});
  add("2001:2::2", {8080, 15008});
  // Loopback, from the proxy's inbound passthrough sources.
  add("127.0.0.1", {8080}, "127.0.0.6");
  add("198.18.0.2", {8080}, "127.0.0.6");
  add("::1", {8080}, "::6");
  add("2001:2::2", {8080}, "::6");
  return out;
}
const std::vector<Destination> kDestinations = destinations();

// Listeners: the pod's redirect targets and its local services; the peer's
// services. Every listener is dual-stack ([::]:port).
const std::set<uint16_t> kPodPorts = {kOutboundPort, kInboundPort, kDnsPort, 8080, 15008, 53};
const std::set<uint16_t> kPeerPorts = {80, 5555, 15008, 15020, 31000, 32000, 53};

// ---- rule sets --------------------------------------------------------------

enum class Loader { IptablesNft, IptablesLegacy, Nft };

std::string backendOf(Loader loader) {
  switch (loader) {
    case Loader::IptablesNft:
      return "iptables-nft";
    case Loader::IptablesLegacy:
      return "iptables-legacy";
    case Loader::Nft:
      return "nftables";
  }
  return "?";
}

struct RuleSetCase {
  std::string name;  // test name
  Loader loader;
  std::string v4;  // under CW_FIXTURES/rules/: iptables v4 text, or the nft golden
  std::string v6;  // iptables v6 text ("" when the rule set has none)
  std::vector<Identity> extra_identities;
  std::string note;  // what our addresses cannot observe
  // Istio's TPROXY interception mode: its mangle rules divert some loopback
  // connections to the inbound listener, outside nat OUTPUT (see
  // divertedByTproxy).
  bool tproxy_mode = false;
};

void PrintTo(const RuleSetCase& c, std::ostream* os) { *os << c.name; }

const std::vector<RuleSetCase> kCases = {
    {"cni_basic_nft", Loader::IptablesNft, "iptables/cni-basic.v4.rules", "", {}, ""},
    {"cni_basic_legacy", Loader::IptablesLegacy, "iptables/cni-basic.v4.rules", "", {}, ""},
    {"cni_include_exclude_ports_legacy",
     Loader::IptablesLegacy,
     "iptables/cni-include-exclude-ports.v4.rules",
     "",
     {},
     ""},
    {"cni_include_exclude_ip_nft",
     Loader::IptablesNft,
     "iptables/cni-include-exclude-ip.v4.rules",
     "",
     {},
     "exclude 10.0.0.0/8: not-matching side only; include 127.0.0.0/8 seen on both sides"},
    {"cni_custom_uid_nft",
     Loader::IptablesNft,
     "iptables/cni-custom-uid.v4.rules",
     "",
     {{1000670000, 1000670001, {}}, {1000670000, 1000, {}}, {1000, 1000670001, {}}},
     ""},
    {"cni_dns_legacy", Loader::IptablesLegacy, "iptables/cni-dns.v4.rules", "", {}, ""},
    {"outbound_ports_include_legacy",
     Loader::IptablesLegacy,
     "iptables/outbound-ports-include.v4.rules",
     "",
     {},
     ""},
    {"basic_exclude_nic_nft",
     Loader::IptablesNft,
     "iptables/basic-exclude-nic.v4.rules",
     "",
     {},
     ""},
    {"kube_virt_interfaces_legacy",
     Loader::IptablesLegacy,
     "iptables/kube-virt-interfaces.v4.rules",
     "",
     {},
     "eth1/eth2 appear only in PREROUTING (inbound)"},
    {"tproxy_nft",
     Loader::IptablesNft,
     "iptables/tproxy.v4.rules",
     "iptables/tproxy.v6.rules",
     {},
     "exclude 1.1.0.0/16 / include 9.9.0.0/16: not-matching side only",
     true},
    // The save output of the golden: the group names java / ftp resolved to
    // 30001 / 30002 (ORIGIN.md), so it loads on a host without those groups.
    {"outbound_owner_groups_exclude_legacy",
     Loader::IptablesLegacy,
     "iptables/outbound-owner-groups-exclude.v4.legacy.save",
     "",
     {{1000, 888, {}}, {1000, 30002, {}}, {1000, 30001, {}}, {888, 1000, {888}}},
     "no outbound redirect in this configuration: only lo / proxy paths are translated"},
    {"outbound_owner_groups_nft",
     Loader::IptablesNft,
     "iptables/outbound-owner-groups.v4.nft.save",
     "",
     {{1000, 30001, {}}, {1000, 202, {}}, {1000, 30002, {}}},
     "no outbound redirect in this configuration: only lo / proxy paths are translated"},
    {"ipv6_outbound_ports_nft",
     Loader::IptablesNft,
     "iptables/ipv6-outbound-ports.v4.rules",
     "iptables/ipv6-outbound-ports.v6.rules",
     {},
     ""},
    {"ipv6_uid_gid_legacy",
     Loader::IptablesLegacy,
     "iptables/ipv6-uid-gid.v4.rules",
     "iptables/ipv6-uid-gid.v6.rules",
     {{3, 3, {}}, {4, 1000, {}}, {1000, 1, {}}, {1000, 2, {}}},
     "2001:db8::/32 (v6 exclude/include): not-matching side only"},
    {"loopback_outbound_iprange_nft",
     Loader::IptablesNft,
     "iptables/loopback-outbound-iprange.v4.rules",
     "",
     {{3, 3, {}}, {4, 1000, {}}, {1000, 1, {}}, {1000, 2, {}}},
     ""},
    // Istio's native nftables backend, its goldens loaded unchanged with nft -f
    // (the owner-groups ones with numeric GIDs, see ORIGIN.md).
    {"nft_kube_virt_interfaces",
     Loader::Nft,
     "nft-golden/kube-virt-interfaces.golden",
     "",
     {},
     "eth1/eth2 appear only in prerouting (inbound)"},
    {"nft_outbound_ports_include",
     Loader::Nft,
     "nft-golden/outbound-ports-include.golden",
     "",
     {},
     ""},
    {"nft_loopback_outbound_iprange",
     Loader::Nft,
     "nft-golden/loopback-outbound-iprange.golden",
     "",
     {{3, 3, {}}, {4, 1000, {}}, {1000, 1, {}}, {1000, 2, {}}},
     ""},
    {"nft_tproxy",
     Loader::Nft,
     "nft-golden/tproxy.golden",
     "",
     {},
     "exclude 1.1.0.0/16 / include 9.9.0.0/16: not-matching side only",
     true},
    {"nft_ipv6_uid_gid",
     Loader::Nft,
     "nft-golden/ipv6-uid-gid.golden",
     "",
     {{3, 3, {}}, {4, 1000, {}}, {1000, 1, {}}, {1000, 2, {}}},
     "2001:db8::/32: not-matching side only"},
    {"nft_outbound_owner_groups",
     Loader::Nft,
     "nft-golden/outbound-owner-groups.numeric-gids.golden",
     "",
     {{1000, 30001, {}}, {1000, 202, {}}, {1000, 30002, {}}},
     "no outbound redirect in this configuration: only lo / proxy paths are translated"},
    {"nft_ipv6_dns_outbound_owner_groups_exclude",
     Loader::Nft,
     "nft-golden/ipv6-dns-outbound-owner-groups-exclude.numeric-gids.golden",
     "",
     {{1000, 888, {}}, {1000, 30002, {}}, {1000, 30001, {}}},
     "no outbound redirect in this configuration: only lo / proxy paths are translated"},
};

// ---- small helpers ----------------------------------------------------------

std::string fixturePath(const std::string& relative) {
  return std::string(CW_FIXTURES) + "/rules/" + relative;
}

std::string readFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  std::string out;
  char buf[8192];
  ssize_t n;
  while ((n = ::read(fd.get(), buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  return out;
}

Address mustParse(const std::string& text) {
  auto a = Address::parse(text);
  if (!a) throw std::runtime_error("bad address " + text);
  return *a;
}

bool isPodLocal(const Address& a) {
  static const Address own4 = mustParse("198.18.0.2");
  static const Address own4b = mustParse("198.18.1.2");
  static const Address own6 = mustParse("2001:2::2");
  static const Address six = mustParse("::6");
  return a.isLoopback() || a == own4 || a == own4b || a == own6 || a == six;
}

// The interface a packet to dst leaves the pod by.
std::string outInterface(const Address& dst) {
  if (isPodLocal(dst)) return "lo";
  if (dst.isV4() && dst.bytes[12] == 198 && dst.bytes[13] == 18 && dst.bytes[14] == 1) {
    return "not-istio-nic";
  }
  return "eth0";
}

// socket address <-> Endpoint.
socklen_t toSockaddr(const Address& a, uint16_t port, sockaddr_storage& ss) {
  return lab::toSockaddr(Endpoint{a, port}, ss);
}

Endpoint fromSockaddr(const sockaddr_storage& ss) {
  Endpoint e;
  if (ss.ss_family == AF_INET) {
    const auto* s4 = reinterpret_cast<const sockaddr_in*>(&ss);
    e.addr = Address::fromV4(reinterpret_cast<const uint8_t*>(&s4->sin_addr));
    e.port = ntohs(s4->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* s6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    e.addr = Address::fromV6(reinterpret_cast<const uint8_t*>(&s6->sin6_addr));
    e.port = ntohs(s6->sin6_port);
  }
  return e;
}

Endpoint localEnd(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return {};
  return fromSockaddr(ss);
}

Endpoint remoteEnd(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return {};
  return fromSockaddr(ss);
}

void inNs(const std::string& ns, std::vector<std::string> argv, const std::string& what,
          const std::string& stdin_text = "") {
  argv.insert(argv.begin(), {"nsenter", "--net=/run/netns/" + ns});
  lab::runChecked(argv, what, stdin_text, std::chrono::seconds(20));
}

// ---- the two namespaces -----------------------------------------------------

// The pod and its peer, wired by two veth pairs. The ScopedNetns members
// delete both namespaces (and with them the veths) on every exit path.
class Topology {
 public:
  Topology() : pod_(kPodNs), peer_(kPeerNs) {
    // One `ip -batch` per namespace (each ip / nsenter run costs tens of ms).
    const std::string peer = kPeerNs;
    lab::runChecked({"ip", "-n", kPodNs, "-batch", "-"}, "wiring " + std::string(kPodNs),
                    "link add eth0 type veth peer name eth0 netns " + peer + "\n" +
                        "link add not-istio-nic type veth peer name eth1 netns " + peer + "\n" +
                        "addr add 198.18.0.2/24 dev eth0\n"
                        "addr add 2001:2::2/64 dev eth0 nodad\n"
                        "addr add 198.18.1.2/24 dev not-istio-nic\n"
                        "addr add ::6/128 dev lo\n"
                        "link set eth0 up\n"
                        "link set not-istio-nic up\n");
    lab::runChecked({"ip", "-n", kPeerNs, "-batch", "-"}, "wiring " + peer,
                    "addr add 198.18.0.1/24 dev eth0\n"
                    "addr add 2001:2::1/64 dev eth0 nodad\n"
                    "addr add 198.18.1.1/24 dev eth1\n"
                    "link set eth0 up\n"
                    "link set eth1 up\n");
    waitUntilUp();
  }

  std::string podPath() const { return pod_.path(); }
  std::string peerPath() const { return peer_.path(); }

 private:
  // A veth transmits only once the link watcher has seen its carrier and
  // activated its queue (which can take up to a second); packets sent before
  // are dropped, and a lost SYN costs a second. Wait until every end reports
  // operational state UP.
  static void waitUntilUp() {
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    for (int round = 0; round < 500; ++round) {
      const std::string pod =
          lab::runChecked({"ip", "-n", kPodNs, "-o", "link", "show"}, "ip link");
      const std::string peer =
          lab::runChecked({"ip", "-n", kPeerNs, "-o", "link", "show"}, "ip link");
      auto up = [](const std::string& out, const std::string& dev) {
        std::istringstream in(out);
        std::string line;
        while (std::getline(in, line)) {
          if (line.find(": " + dev + "@") != std::string::npos) {
            return line.find(" state UP ") != std::string::npos;
          }
        }
        return false;
      };
      if (up(pod, "eth0") && up(pod, "not-istio-nic") && up(peer, "eth0") && up(peer, "eth1")) {
        return;
      }
      if (Clock::now() >= deadline) {
        throw std::runtime_error("veth links did not come up:\n" + pod + peer);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  testutil::ScopedNetns pod_;
  testutil::ScopedNetns peer_;
};

struct Listener {
  UniqueFd fd;
  std::string label;  // "pod:15001", "peer:80"
};

// Dual-stack listeners on [::]:port inside a netns, created by a thread that
// joins it (a socket stays in the netns it was created in).
std::vector<Listener> listenIn(const std::string& netns_path, const std::string& side,
                               const std::set<uint16_t>& ports) {
  std::vector<Listener> out;
  std::string error;
  std::thread worker([&] {
    UniqueFd ns(::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns || ::setns(ns.get(), CLONE_NEWNET) != 0) {
      error = "cannot enter " + netns_path + ": " + std::strerror(errno);
      return;
    }
    for (uint16_t port : ports) {
      UniqueFd fd(::socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      int zero = 0, one = 1;
      ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
      ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (port == kInboundPort) {
        // Envoy's inbound listener in TPROXY mode is transparent: TPROXY
        // hands packets only to such sockets.
        ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_TRANSPARENT, &one, sizeof one);
        ::setsockopt(fd.get(), IPPROTO_IP, IP_TRANSPARENT, &one, sizeof one);
      }
      sockaddr_in6 sa{};
      sa.sin6_family = AF_INET6;
      sa.sin6_addr = in6addr_any;
      sa.sin6_port = htons(port);
      if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
          ::listen(fd.get(), 1024) != 0) {
        error =
            side + ": cannot listen on [::]:" + std::to_string(port) + ": " + std::strerror(errno);
        return;
      }
      out.push_back({std::move(fd), side + ":" + std::to_string(port)});
    }
  });
  worker.join();
  if (!error.empty()) throw std::runtime_error(error);
  return out;
}

// ---- one connection ---------------------------------------------------------

struct Attempt {
  uint32_t id = 0;
  Identity who;
  Destination dest{"", 0};
  // The client's view.
  std::string status;  // "ok", "refused", "timeout", "error: ..."
  Endpoint src;        // as the kernel chose it (getsockname after connect)
  // The listeners' view (status "ok" only).
  std::string landed;  // listener label; "" if no listener saw the connection
  Endpoint seen_local, seen_peer;

  std::string observed() const {
    if (status != "ok") return status;
    return landed.empty() ? "connected, but no listener saw it" : landed;
  }
  std::string str() const {
    return who.str() + " " + src.str() + " -> " +
           (dest.addr.find(':') != std::string::npos ? "[" + dest.addr + "]" : dest.addr) + ":" +
           std::to_string(dest.port);
  }
};

// In the child: become `who`, open every connection of the batch at once
// (non-blocking), wait at most kConnectTimeout for them, send each
// established one its token, and report every outcome as a 'D' frame
// "id srcaddr srcport status".
void clientRole(int report_fd, const Identity& who, const std::vector<Attempt>& batch) {
  if (::setgroups(who.groups.size(), who.groups.data()) != 0) {
    throw std::runtime_error(std::string("setgroups: ") + std::strerror(errno));
  }
  if (::setgid(who.gid) != 0 || ::setuid(who.uid) != 0) {
    throw std::runtime_error(std::string("setgid/setuid: ") + std::strerror(errno));
  }
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // cleared by the credential change

  struct Pending {
    UniqueFd fd;
    std::string status;  // "" while in progress
    Endpoint src;
  };
  std::vector<Pending> pending(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    const Destination& d = batch[i].dest;
    const Address dst = mustParse(d.addr);
    Pending& p = pending[i];
    // An explicit bind(port 0) gives every connection its own source port,
    // so REDIRECT never has to remap one to keep the tuples unique.
    sockaddr_storage ss{};
    const std::string any = dst.isV4() ? "0.0.0.0" : "::";
    socklen_t len = toSockaddr(mustParse(d.bind.empty() ? any : d.bind), 0, ss);
    const auto bindNew = [&] {
      p.fd.reset(
          ::socket(dst.isV4() ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      return p.fd && ::bind(p.fd.get(), reinterpret_cast<sockaddr*>(&ss), len) == 0;
    };
    bool bound = bindNew();
    // The destination's own port (40001, in the ephemeral range) would
    // connect the socket to itself on a local address with no listener (TCP
    // simultaneous open; CI saw it once): take another while holding it.
    for (int tries = 0; bound && tries < 3 && localEnd(p.fd.get()).port == d.port; ++tries) {
      const UniqueFd held = std::move(p.fd);
      bound = bindNew();
    }
    if (!bound) {
      p.status = std::string("error: bind: ") + std::strerror(errno);
      continue;
    }
    len = toSockaddr(dst, d.port, ss);
    const int rc = ::connect(p.fd.get(), reinterpret_cast<sockaddr*>(&ss), len);
    const int err = errno;
    p.src = localEnd(p.fd.get());  // set once the SYN is on its way
    if (rc == 0) {
      p.status = "ok";
    } else if (err == ECONNREFUSED) {
      p.status = "refused";
    } else if (err != EINPROGRESS) {
      p.status = std::string("error: connect: ") + std::strerror(err);
    }
  }

  const auto deadline = Clock::now() + kConnectTimeout;
  for (int round = 0; round < 1000; ++round) {  // bounded; each round waits
    std::vector<pollfd> fds;
    std::vector<size_t> which;
    for (size_t i = 0; i < pending.size(); ++i) {
      if (pending[i].status.empty()) {
        fds.push_back({pending[i].fd.get(), POLLOUT, 0});
        which.push_back(i);
      }
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (fds.empty() || left <= 0) break;
    if (::poll(fds.data(), fds.size(), static_cast<int>(left)) < 0 && errno != EINTR) break;
    for (size_t k = 0; k < fds.size(); ++k) {
      if (fds[k].revents == 0) continue;
      Pending& p = pending[which[k]];
      int soerr = 0;
      socklen_t l = sizeof soerr;
      ::getsockopt(p.fd.get(), SOL_SOCKET, SO_ERROR, &soerr, &l);
      p.status = soerr == 0              ? "ok"
                 : soerr == ECONNREFUSED ? "refused"
                                         : std::string("error: ") + std::strerror(soerr);
    }
  }
  for (size_t i = 0; i < pending.size(); ++i) {
    Pending& p = pending[i];
    if (p.status.empty()) p.status = "timeout";
    if (p.status == "ok") {
      const uint32_t token[2] = {htonl(kTokenMagic), htonl(batch[i].id)};
      if (::send(p.fd.get(), token, sizeof token, MSG_NOSIGNAL) != sizeof token) {
        p.status = std::string("error: send: ") + std::strerror(errno);
      }
    }
    p.fd.reset();
    const std::string line = std::to_string(batch[i].id) + " " + p.src.addr.str() + " " +
                             std::to_string(p.src.port) + " " + p.status;
    lab::writeFrame(report_fd, lab::kFrameData, line);
  }
}

// Runs one identity's batch in a child in the pod and collects, at the same
// time, every connection the listeners accept (identified by its token).
void runBatch(const std::string& pod_path, const Identity& who, std::vector<Attempt*> batch,
              const std::vector<Listener>& listeners, std::map<uint32_t, Attempt*>& by_id) {
  std::vector<Attempt> plan;
  for (const Attempt* a : batch) plan.push_back(*a);
  lab::SpawnOptions options;
  options.name = "cw-diff-client";
  options.netns_path = pod_path;
  lab::ChildProcess child =
      lab::spawnInPod(options, [&who, &plan](int fd) { clientRole(fd, who, plan); });

  struct Accepted {
    UniqueFd fd;
    std::string label;
    Endpoint local, peer;
    std::string buf;
  };
  std::vector<Accepted> accepted;
  size_t reports = 0;
  bool child_done = false;
  std::string child_error;
  const auto deadline = Clock::now() + kConnectTimeout + std::chrono::seconds(8);

  auto allLanded = [&] {
    return std::all_of(batch.begin(), batch.end(),
                       [](const Attempt* a) { return a->status != "ok" || !a->landed.empty(); });
  };
  for (int round = 0; round < 100000 && Clock::now() < deadline; ++round) {
    if (child_done && allLanded()) break;
    std::vector<pollfd> fds;
    if (!child_done) fds.push_back({child.reportFd(), POLLIN, 0});
    const size_t first_listener = fds.size();
    for (const Listener& l : listeners) fds.push_back({l.fd.get(), POLLIN, 0});
    const size_t first_accepted = fds.size();
    for (const Accepted& a : accepted) fds.push_back({a.fd.get(), POLLIN, 0});
    if (::poll(fds.data(), fds.size(), 50) < 0 && errno != EINTR) break;

    if (!child_done && fds[0].revents != 0) {
      lab::Frame f = lab::readFrame(child.reportFd(), Clock::now() + std::chrono::seconds(1));
      if (f.status != lab::Frame::Status::kOk) {
        child_done = true;
      } else if (f.type == lab::kFrameError) {
        child_error = f.payload;
      } else if (f.type == lab::kFrameData) {
        std::istringstream in(f.payload);
        uint32_t id = 0;
        std::string addr, status;
        uint16_t port = 0;
        in >> id >> addr >> port;
        std::getline(in >> std::ws, status);
        auto it = by_id.find(id);
        if (it != by_id.end()) {
          it->second->status = status;
          it->second->src = {Address::parse(addr).value_or(Address{}), port};
          ++reports;
        }
      }
    }
    for (size_t k = first_listener; k < first_accepted; ++k) {
      if (fds[k].revents == 0) continue;
      const Listener& l = listeners[k - first_listener];
      for (int n = 0; n < 256; ++n) {
        UniqueFd c(::accept4(l.fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (!c) break;
        Endpoint local = localEnd(c.get()), peer = remoteEnd(c.get());
        accepted.push_back({std::move(c), l.label, local, peer, ""});
      }
    }
    std::vector<size_t> finished;
    for (size_t k = first_accepted; k < fds.size(); ++k) {
      if (fds[k].revents == 0) continue;
      Accepted& a = accepted[k - first_accepted];
      char buf[16];
      const ssize_t n = ::recv(a.fd.get(), buf, sizeof buf, 0);
      if (n > 0) a.buf.append(buf, static_cast<size_t>(n));
      if (a.buf.size() >= 8) {
        uint32_t token[2];
        std::memcpy(token, a.buf.data(), sizeof token);
        auto it = by_id.find(ntohl(token[1]));
        if (ntohl(token[0]) == kTokenMagic && it != by_id.end()) {
          it->second->landed = a.label;
          it->second->seen_local = a.local;
          it->second->seen_peer = a.peer;
        } else {
          ADD_FAILURE() << a.label << " accepted a connection from " << a.peer.str()
                        << " with a bad token";
        }
        finished.push_back(k - first_accepted);
      } else if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        ADD_FAILURE() << a.label << " accepted a connection from " << a.peer.str()
                      << " that closed without its token";
        finished.push_back(k - first_accepted);
      }
    }
    for (auto it = finished.rbegin(); it != finished.rend(); ++it) {
      accepted.erase(accepted.begin() + static_cast<std::ptrdiff_t>(*it));
    }
  }
  child.wait(std::chrono::seconds(2));
  EXPECT_TRUE(child_error.empty()) << who.str() << ": client failed: " << child_error;
  EXPECT_EQ(reports, batch.size()) << who.str() << ": not every connection was reported";
}

// ---- what the evaluator predicts -------------------------------------------

struct Prediction {
  std::string landing;  // in the terms of Attempt::observed()
  rules::Verdict verdict = rules::Verdict::Unknown;
  std::string detail;  // decision, deciding rule, note
  bool captured = false;
  bool no_rules = false;  // no rules for this family: nothing translates it
};

std::string listenerOrRefused(const std::string& side, uint16_t port,
                              const std::set<uint16_t>& ports) {
  return ports.count(port) ? side + ":" + std::to_string(port) : "refused";
}

Prediction predict(const PodRules& pod_rules, const Attempt& a) {
  Prediction p;
  const Address dst = mustParse(a.dest.addr);
  rules::Connection rc;
  rc.protocol = rules::Protocol::Tcp;
  rc.uid = a.who.uid;
  rc.gid = a.who.gid;
  rc.src = a.src;
  rc.dst = {dst, a.dest.port};
  rc.out_interface = outInterface(dst);
  const bool local = isPodLocal(dst);
  const std::string real = local ? listenerOrRefused("pod", a.dest.port, kPodPorts)
                                 : listenerOrRefused("peer", a.dest.port, kPeerPorts);

  const rules::RuleSet* rs = pod_rules.forFamily(!dst.isV4());
  if (rs == nullptr) {
    p.no_rules = true;
    p.verdict = rules::Verdict::Accept;
    p.landing = real;
    p.detail = "no rules for this family";
    return p;
  }
  const rules::Evaluator evaluator(*rs);
  const rules::Evaluation ev = evaluator.evaluate(rc);
  p.verdict = ev.decision.verdict;
  p.detail = ev.decision.str();
  if (ev.deciding) p.detail += " by `" + ev.deciding->describe() + "`";
  if (ev.not_understood) p.detail += " at `" + ev.not_understood->describe() + "`";
  if (!ev.note.empty()) p.detail += " (" + ev.note + ")";
  switch (ev.decision.verdict) {
    case rules::Verdict::Redirect:
      p.landing = listenerOrRefused("pod", ev.decision.port, kPodPorts);
      break;
    case rules::Verdict::Accept:
      p.landing = real;
      break;
    case rules::Verdict::Drop:
      p.landing = "timeout";
      break;
    case rules::Verdict::Dnat:
      p.landing = "dnat to " + ev.decision.destination.str();
      break;
    case rules::Verdict::Unknown:
      p.landing = "unknown";
      break;
  }
  p.captured = rules::explain(*rs, rc, kOutboundPort).captured;
  return p;
}

// Outside the model: in Istio's TPROXY mode, mangle OUTPUT marks 1338 the
// TCP packets of the proxy's UID or GID that leave over lo for an address
// other than 127.0.0.1 / ::1, and mangle PREROUTING (ISTIO_INBOUND ->
// ISTIO_TPROXY) hands each such packet that nat did not redirect to 127.0.0.1
// / ::1 and that does not come from 127.0.0.6 / ::6 to the inbound listener
// (TPROXY --on-port 15006). The evaluator walks nat OUTPUT only: it answers
// "accept" (and explain() "local") for those, while the kernel delivers them
// to 15006. The test checks that the kernel does exactly that, and counts
// these connections apart from the agreed ones.
bool divertedByTproxy(const RuleSetCase& c, const Attempt& a, const Prediction& p) {
  if (!c.tproxy_mode || p.verdict != rules::Verdict::Accept) return false;
  const Address dst = mustParse(a.dest.addr);
  return outInterface(dst) == "lo" && dst != mustParse("127.0.0.1") && dst != mustParse("::1") &&
         (a.who.uid == kProxyId || a.who.gid == kProxyId) && a.dest.bind != "127.0.0.6" &&
         a.dest.bind != "::6";
}

// ---- the test ---------------------------------------------------------------

// For the summary: the redirect listeners by name, everything else by kind.
std::string bucket(const std::string& seen) {
  if (seen.starts_with("peer:")) return "peer";
  for (uint16_t port : {kOutboundPort, kInboundPort, kDnsPort}) {
    if (seen == "pod:" + std::to_string(port)) return seen;
  }
  return seen.starts_with("pod:") ? "pod-local" : seen;
}

struct Totals {
  size_t sets = 0, connections = 0, agreed = 0, unknown = 0, outside_model = 0;
};
Totals g_totals;

class RulesDifferential : public ::testing::TestWithParam<RuleSetCase> {
 protected:
  void SetUp() override { ASSERT_TRUE(testutil::isRoot()) << "privileged test: run as root"; }
  static void TearDownTestSuite() {
    std::printf(
        "[diff] total: %zu rule sets, %zu connections, %zu agreed, %zu unknown, %zu "
        "TPROXY-diverted (outside the model)\n",
        g_totals.sets, g_totals.connections, g_totals.agreed, g_totals.unknown,
        g_totals.outside_model);
  }
};

void loadRules(const RuleSetCase& c) {
  switch (c.loader) {
    case Loader::IptablesNft:
    case Loader::IptablesLegacy: {
      const std::string flavour = c.loader == Loader::IptablesNft ? "nft" : "legacy";
      inNs(kPodNs, {"iptables-" + flavour + "-restore"}, "iptables-" + flavour + "-restore " + c.v4,
           readFile(fixturePath(c.v4)));
      if (!c.v6.empty()) {
        inNs(kPodNs, {"ip6tables-" + flavour + "-restore"},
             "ip6tables-" + flavour + "-restore " + c.v6, readFile(fixturePath(c.v6)));
      }
      break;
    }
    case Loader::Nft:
      inNs(kPodNs, {"nft", "-f", fixturePath(c.v4)}, "nft -f " + c.v4);
      break;
  }
}

TEST_P(RulesDifferential, EvaluatorPredictsWhereEveryConnectionLands) {
  const RuleSetCase& c = GetParam();
  const auto started = Clock::now();
  Topology topo;
  loadRules(c);
  const auto loaded = Clock::now();

  // Read the rules back as the agent does, from the live namespace.
  const RulesText text = readRulesText(topo.podPath());
  const PodRules pod_rules = parsePodRules(text);
  ASSERT_TRUE(pod_rules.error.empty()) << pod_rules.error;
  ASSERT_EQ(pod_rules.backend, backendOf(c.loader)) << text.error;
  ASSERT_TRUE(pod_rules.v4.has_value()) << "the IPv4 rules were not read back";
  ASSERT_EQ(pod_rules.v6.has_value(), !c.v6.empty() || c.loader == Loader::Nft)
      << "the IPv6 rules were (not) read back";

  const auto read_back = Clock::now();

  std::vector<Listener> listeners = listenIn(topo.podPath(), "pod", kPodPorts);
  for (Listener& l : listenIn(topo.peerPath(), "peer", kPeerPorts)) {
    listeners.push_back(std::move(l));
  }

  std::vector<Identity> identities = kDefaultIdentities;
  identities.insert(identities.end(), c.extra_identities.begin(), c.extra_identities.end());
  std::vector<Attempt> attempts;
  attempts.reserve(identities.size() * kDestinations.size());
  for (const Identity& who : identities) {
    for (const Destination& d : kDestinations) {
      Attempt a;
      a.id = static_cast<uint32_t>(attempts.size() + 1);
      a.who = who;
      a.dest = d;
      attempts.push_back(a);
    }
  }
  std::map<uint32_t, Attempt*> by_id;
  for (Attempt& a : attempts) by_id[a.id] = &a;
  for (size_t i = 0; i < identities.size(); ++i) {
    std::vector<Attempt*> batch;
    for (size_t k = 0; k < kDestinations.size(); ++k) {
      batch.push_back(&attempts[i * kDestinations.size() + k]);
    }
    runBatch(topo.podPath(), identities[i], batch, listeners, by_id);
  }

  const auto connected = Clock::now();
  // The app's ends that more than one redirected connection used: conntrack
  // gives a later one another source port when its redirected tuple (same
  // source, 15001) is taken (the kernel picks source ports per destination,
  // so one port can go to two destinations of a batch).
  std::map<Endpoint, int> redirected_from;
  for (const Attempt& a : attempts) {
    if (a.status == "ok" && a.landed == "pod:15001") ++redirected_from[a.src];
  }
  size_t agreed = 0, unknown = 0, no_rules = 0, outside_model = 0, reported = 0, remapped = 0;
  std::map<std::string, size_t> outcomes;
  for (const Attempt& a : attempts) {
    const std::string seen = a.observed();
    ++outcomes[bucket(seen)];
    Prediction p = predict(pod_rules, a);
    if (divertedByTproxy(c, a, p)) {
      p.landing = "pod:" + std::to_string(kInboundPort);
      p.detail += "; then TPROXY to the inbound listener (mangle, outside the model)";
      if (seen == p.landing) {
        ++outside_model;
        continue;
      }
    }
    if (p.no_rules) ++no_rules;
    if (p.verdict == rules::Verdict::Unknown) ++unknown;
    const bool captured_ok = p.no_rules || p.captured == (seen == "pod:15001");
    // REDIRECT keeps the source: the listener sees the app's own end, but
    // for a port conntrack had to change (above).
    const auto shared = redirected_from.find(a.src);
    const bool port_remapped = a.status == "ok" && a.seen_peer.addr == a.src.addr &&
                               a.seen_peer.port != a.src.port &&
                               shared != redirected_from.end() && shared->second > 1;
    const bool source_ok = a.status != "ok" || a.seen_peer == a.src || port_remapped;
    if (port_remapped) ++remapped;
    if (p.landing == seen && captured_ok && source_ok) {
      ++agreed;
      continue;
    }
    if (++reported <= kMaxReportedDisagreements) {
      ADD_FAILURE() << c.name << ": " << a.str() << "\n  kernel:    " << seen
                    << (a.status == "ok" ? " (accepted as " + a.seen_local.str() + " from " +
                                               a.seen_peer.str() + ")"
                                         : "")
                    << "\n  evaluator: " << p.landing << ": " << p.detail
                    << (captured_ok ? "" : "\n  explain() disagrees on 'captured'");
    }
  }
  if (reported > kMaxReportedDisagreements) {
    ADD_FAILURE() << c.name << ": " << reported - kMaxReportedDisagreements
                  << " more disagreements not shown";
  }

  std::string breakdown;
  for (const auto& [what, n] : outcomes) {
    breakdown += (breakdown.empty() ? "" : ", ") + what + " " + std::to_string(n);
  }
  auto ms = [](Clock::duration d) {
    return static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
  };
  std::printf(
      "[diff] %s (%s): %zu connections, %zu agreed, %zu unknown, %zu TPROXY-diverted (outside "
      "the model), %zu in a family without rules, %zu source ports remapped by conntrack; "
      "kernel: %s; %lld ms (setup %lld, read-back %lld, connections %lld)%s%s\n",
      c.name.c_str(), pod_rules.backend.c_str(), attempts.size(), agreed, unknown, outside_model,
      no_rules, remapped, breakdown.c_str(), ms(Clock::now() - started), ms(loaded - started),
      ms(read_back - loaded), ms(connected - read_back),
      c.note.empty() ? "" : "; note: ", c.note.c_str());
  ++g_totals.sets;
  g_totals.connections += attempts.size();
  g_totals.agreed += agreed;
  g_totals.unknown += unknown;
  g_totals.outside_model += outside_model;
  EXPECT_EQ(unknown, 0u) << "the evaluator answered unknown for connections of " << c.name;
  EXPECT_EQ(agreed + outside_model, attempts.size());
}

INSTANTIATE_TEST_SUITE_P(IstioRuleSets, RulesDifferential, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<RuleSetCase>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace cw
