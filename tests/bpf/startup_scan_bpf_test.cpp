// Privileged test of the startup scan on a lab pod (real netns, Istio's own
// rules, cgroup v2, a TLS-forwarding sidecar, a strict-mTLS upstream):
// connections are opened and held open first, then the namespace's sockets,
// conntrack table and /proc are read and classified, as the agent does when it
// starts while connections are already open. Run as root.
#include "startup_scan.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "bpf_test_util.h"
#include "lab/lab_pod.h"
#include "lab/roles.h"
#include "lab/spawn.h"
#include "lab/system.h"

namespace cw {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr uint16_t kPlainPort = 32001;     // a plain listener in the upstream netns
constexpr uint16_t kLoopbackPort = 15080;  // a plain listener on the pod's loopback
constexpr auto kHold = 90s;                // children give up by themselves after this long

using lab::toSockaddr;

// Child role: listen on `on` and hold every accepted connection open (never
// reading, never closing) until `lifetime` has passed.
void holdingServerRole(const Endpoint& on, std::chrono::seconds lifetime, int report_fd) {
  sockaddr_storage ss{};
  const socklen_t len = toSockaddr(on, ss);
  lab::UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd.get(), 16) != 0) {
    throw std::runtime_error("listen on " + on.str() + ": " + std::strerror(errno));
  }
  lab::writeFrame(report_fd, lab::kFrameReady, "");
  std::vector<lab::UniqueFd> held;
  const auto end = Clock::now() + lifetime;
  while (Clock::now() < end && held.size() < 64) {
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, 500) <= 0) continue;
    lab::UniqueFd conn(::accept4(fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (conn) held.push_back(std::move(conn));
  }
  while (Clock::now() < end) std::this_thread::sleep_for(500ms);
}

// Child role: connect to dst, report the local port ('D', 2 bytes), then hold
// the connection open until `lifetime` has passed. With `trickle`, start an
// HTTP request and add a header line every second without ever ending it: the
// strict-mTLS upstream (reached through the sidecar) reads with a 5 s timeout
// and would otherwise close an idle connection.
void holdingClientRole(const Endpoint& dst, bool trickle, std::chrono::seconds lifetime,
                       int report_fd) {
  sockaddr_storage ss{};
  const socklen_t len = toSockaddr(dst, ss);
  lab::UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  timeval tv{3, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);  // bounds connect()
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    throw std::runtime_error("connect " + dst.str() + ": " + std::strerror(errno));
  }
  sockaddr_storage local{};
  socklen_t llen = sizeof local;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &llen);
  const uint16_t port =
      ntohs(local.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&local)->sin_port
                                       : reinterpret_cast<sockaddr_in6*>(&local)->sin6_port);
  const char payload[2] = {static_cast<char>(port >> 8), static_cast<char>(port & 0xff)};
  lab::writeFrame(report_fd, lab::kFrameData, std::string_view(payload, 2));
  const auto end = Clock::now() + lifetime;
  if (trickle) {
    const std::string start = "GET / HTTP/1.0\r\nHost: " + dst.str() + "\r\n";
    ::send(fd.get(), start.data(), start.size(), MSG_NOSIGNAL);
  }
  for (int i = 0; Clock::now() < end; ++i) {
    std::this_thread::sleep_for(1s);
    if (trickle) {
      const std::string line = "X-Hold: " + std::to_string(i) + "\r\n";
      ::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL);
    }
  }
}

void expectReady(lab::ChildProcess& child, const std::string& what) {
  auto frame = lab::readFrame(child.reportFd(), Clock::now() + 5s);
  ASSERT_EQ(frame.status, lab::Frame::Status::kOk) << what << " did not report";
  ASSERT_EQ(frame.type, lab::kFrameReady) << what << ": " << frame.payload;
}

// The local port a holding client reported, or 0.
uint16_t reportedPort(lab::ChildProcess& child, const std::string& what) {
  auto frame = lab::readFrame(child.reportFd(), Clock::now() + 5s);
  EXPECT_EQ(frame.status, lab::Frame::Status::kOk) << what << " did not report";
  EXPECT_EQ(frame.type, lab::kFrameData) << what << ": " << frame.payload;
  if (frame.status != lab::Frame::Status::kOk || frame.type != lab::kFrameData ||
      frame.payload.size() != 2) {
    return 0;
  }
  return static_cast<uint16_t>((static_cast<uint8_t>(frame.payload[0]) << 8) |
                               static_cast<uint8_t>(frame.payload[1]));
}

uint64_t inodeOf(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return st.st_ino;
}

lab::SpawnOptions inNetns(const std::string& name, const std::string& netns_path) {
  lab::SpawnOptions o;
  o.name = name;
  o.netns_path = netns_path;
  return o;
}

struct Scan {
  std::vector<ScannedSocket> sockets;
  std::vector<ConntrackEntry> conntrack;
  Owners owners;
  std::vector<Connection> connections;
};

Scan scanAndClassify(const std::string& netns_path, const ClassifyConfig& config) {
  Scan s;
  s.sockets = scanTcpSockets(netns_path);
  s.conntrack = dumpConntrack(netns_path);
  std::set<uint64_t> inodes;
  for (const auto& sock : s.sockets) {
    if (sock.state != kTcpListen && sock.inode != 0) inodes.insert(sock.inode);
  }
  s.owners = socketOwners("/proc", inodes);
  s.connections = classifyOpenConnections(s.sockets, s.conntrack, s.owners, config);
  return s;
}

const Connection* find(const std::vector<Connection>& conns, const Endpoint& src) {
  for (const auto& c : conns) {
    if (c.src == src) return &c;
  }
  return nullptr;
}

std::string describe(const std::vector<Connection>& conns) {
  std::string out;
  for (const auto& c : conns) {
    out += "  " + std::string(toString(c.verdict)) + " " + c.src.str() + " -> " + c.dst.str() +
           " uid " + std::to_string(c.uid) + " pid " + std::to_string(c.pid) + " cgroup " +
           std::to_string(c.cgroup_id) + "\n";
  }
  return out;
}

std::vector<std::string> leftoverNetns() {
  std::vector<std::string> out;
  const std::string stem = "cw-test-scan-" + std::to_string(::getpid()) + "-";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/run/netns", ec)) {
    const std::string name = e.path().filename();
    if (name.rfind(stem, 0) == 0) out.push_back(name);
  }
  return out;
}

// The lab pod of these tests, with a plain listener in the upstream netns that
// holds connections open (the bypassed ones' destination), and the app's
// spawn options as uid 1000 and as the proxy's uid.
struct ScanLab {
  std::unique_ptr<lab::LabPod> pod;
  lab::ChildProcess plain;  // declared after the pod: destroyed (SIGKILL, reaped) before it
  lab::SpawnOptions app, app_as_proxy_uid;
};

void makeScanLab(ScanLab& lab) {
  lab::PodConfig config;
  config.prefix = "cw-test-scan";
  config.cgroup_prefix = "cw-test-scan";
  config.server_lifetime = 120s;
  lab.pod = lab::LabPod::create(config);
  lab.pod->startUpstream();
  lab.pod->startSidecar();
  lab.plain = lab::spawnInPod(inNetns("cw-plain", lab.pod->upstreamNetnsPath()), [](int fd) {
    holdingServerRole(Endpoint{Address::parse("::").value(), kPlainPort}, kHold, fd);
  });
  ASSERT_NO_FATAL_FAILURE(expectReady(lab.plain, "plain listener"));
  lab.app = lab::SpawnOptions{.name = "envoy",
                              .cgroup_dir = lab.pod->appCgroup(),
                              .netns_path = lab.pod->podNetnsPath(),
                              .uid = 1000,
                              .gid = 1000};
  lab.app_as_proxy_uid = lab.app;
  lab.app_as_proxy_uid.uid = 1337;
  lab.app_as_proxy_uid.gid = 1337;
}

TEST(StartupScanBpf, ClassifiesConnectionsAlreadyOpen) {
  ASSERT_TRUE(testutil::isRoot()) << "privileged test: run as root";
  const uint64_t own_netns = inodeOf("/proc/thread-self/ns/net");
  {
    ScanLab scan_lab;
    ASSERT_NO_FATAL_FAILURE(makeScanLab(scan_lab));
    auto& pod = scan_lab.pod;
    const lab::PodConfig& config = pod->config();
    const uint64_t app_cg = lab::cgroupId(pod->appCgroup());
    const uint64_t sidecar_cg = lab::cgroupId(pod->sidecarCgroup());
    const Endpoint loopback_dst{Address::parse("127.0.0.1").value(), kLoopbackPort};
    lab::ChildProcess loopback_server =
        lab::spawnInPod(inNetns("cw-loopback", pod->podNetnsPath()),
                        [&](int fd) { holdingServerRole(loopback_dst, kHold, fd); });
    ASSERT_NO_FATAL_FAILURE(expectReady(loopback_server, "loopback listener"));

    const lab::SpawnOptions& app = scan_lab.app;
    const lab::SpawnOptions& app_as_proxy_uid = scan_lab.app_as_proxy_uid;
    const Endpoint up4 = pod->upstreamV4(), up6 = pod->upstreamV6();
    const Endpoint plain_dst{pod->upstreamV4().addr, kPlainPort};

    lab::ChildProcess captured4 =
        lab::spawnInPod(app, [&](int fd) { holdingClientRole(up4, true, kHold, fd); });
    lab::ChildProcess captured6 =
        lab::spawnInPod(app, [&](int fd) { holdingClientRole(up6, true, kHold, fd); });
    lab::ChildProcess bypassed = lab::spawnInPod(
        app_as_proxy_uid, [&](int fd) { holdingClientRole(plain_dst, false, kHold, fd); });
    lab::ChildProcess local =
        lab::spawnInPod(app, [&](int fd) { holdingClientRole(loopback_dst, false, kHold, fd); });
    const uint16_t captured4_port = reportedPort(captured4, "captured IPv4 client");
    const uint16_t captured6_port = reportedPort(captured6, "captured IPv6 client");
    const uint16_t bypassed_port = reportedPort(bypassed, "bypassed client");
    const uint16_t local_port = reportedPort(local, "loopback client");
    ASSERT_TRUE(captured4_port && captured6_port && bypassed_port && local_port);

    ClassifyConfig cc;
    cc.redirect_port = config.redirect_port;
    cc.proxy_cgroups = {sidecar_cg};
    cc.netns = static_cast<uint32_t>(inodeOf(pod->podNetnsPath()));

    // The sidecar connects upstream after its accept: wait (bounded) until
    // both of its connections are there.
    Scan scan;
    for (int i = 0; i < 50; ++i) {
      scan = scanAndClassify(pod->podNetnsPath(), cc);
      const auto proxies =
          std::count_if(scan.connections.begin(), scan.connections.end(),
                        [](const Connection& c) { return c.verdict == Verdict::Proxy; });
      if (proxies >= 2 && scan.connections.size() >= 6) break;
      std::this_thread::sleep_for(100ms);
    }
    SCOPED_TRACE("connections:\n" + describe(scan.connections));
    EXPECT_EQ(inodeOf("/proc/thread-self/ns/net"), own_netns) << "the scan moved this thread";

    const Endpoint c4{pod->podAddressV4(), captured4_port};
    const Endpoint c6{pod->podAddressV6(), captured6_port};
    const Endpoint b4{pod->podAddressV4(), bypassed_port};
    const Endpoint l4{Address::parse("127.0.0.1").value(), local_port};
    ASSERT_EQ(scan.connections.size(), 6u);

    struct Expected {
      Endpoint src, dst;
      Verdict verdict;
      uint32_t uid, gid;
      pid_t pid;
      uint64_t cgroup;
    };
    const std::vector<Expected> expected = {
        {c4, up4, Verdict::Captured, 1000, 1000, captured4.pid(), app_cg},
        {c6, up6, Verdict::Captured, 1000, 1000, captured6.pid(), app_cg},
        {b4, plain_dst, Verdict::Bypassed, 1337, 1337, bypassed.pid(), app_cg},
        {l4, loopback_dst, Verdict::Local, 1000, 1000, local.pid(), app_cg},
    };
    for (const auto& e : expected) {
      const Connection* c = find(scan.connections, e.src);
      ASSERT_NE(c, nullptr) << e.src.str();
      EXPECT_EQ(c->verdict, e.verdict) << e.src.str();
      EXPECT_EQ(c->dst, e.dst) << e.src.str();
      EXPECT_EQ(c->uid, e.uid) << e.src.str();
      EXPECT_EQ(c->gid, e.gid) << e.src.str();
      EXPECT_EQ(c->pid, static_cast<uint32_t>(e.pid)) << e.src.str();
      EXPECT_EQ(std::string(c->comm.data()), "envoy") << e.src.str();
      EXPECT_EQ(c->cgroup_id, e.cgroup) << e.src.str();
      EXPECT_EQ(c->netns, cc.netns);
      EXPECT_EQ(c->outcome, Outcome::Open);
      EXPECT_NE(c->sock_id, 0u);
      EXPECT_EQ(c->flags, CW_F_OWNER_KNOWN | kScanFlagFoundAtStart) << e.src.str();
    }
    // The sidecar's own connections upstream, one per family.
    std::vector<const Connection*> proxies;
    for (const auto& c : scan.connections) {
      if (c.verdict == Verdict::Proxy) proxies.push_back(&c);
    }
    ASSERT_EQ(proxies.size(), 2u);
    for (const Connection* p : proxies) {
      EXPECT_TRUE(p->dst == up4 || p->dst == up6) << p->dst.str();
      EXPECT_EQ(p->uid, config.proxy_uid);
      EXPECT_EQ(p->gid, config.proxy_gid);
      EXPECT_EQ(p->pid, static_cast<uint32_t>(pod->sidecarPid()));
      EXPECT_EQ(std::string(p->comm.data()), "envoy");
      EXPECT_EQ(p->cgroup_id, sidecar_cg);
    }
    EXPECT_NE(proxies[0]->dst, proxies[1]->dst);

    // What the kernel showed: the sidecar's accepted ends (dual-stack
    // listener: the IPv4 one v4-mapped, normalised) with the apps as peers,
    // in the sidecar's cgroup; the REDIRECTs in conntrack.
    for (const Endpoint& app_end : {c4, c6}) {
      const auto sidecar_end =
          std::find_if(scan.sockets.begin(), scan.sockets.end(), [&](const ScannedSocket& s) {
            return s.state == kTcpEstablished && s.local.port == config.redirect_port &&
                   s.remote == app_end;
          });
      ASSERT_NE(sidecar_end, scan.sockets.end()) << app_end.str();
      EXPECT_TRUE(sidecar_end->local.addr.isLoopback()) << sidecar_end->local.str();
      EXPECT_EQ(sidecar_end->cgroup_id, sidecar_cg);
      EXPECT_EQ(sidecar_end->uid, config.proxy_uid);
      const auto redirect =
          std::find_if(scan.conntrack.begin(), scan.conntrack.end(),
                       [&](const ConntrackEntry& e) { return e.orig_src == app_end; });
      ASSERT_NE(redirect, scan.conntrack.end()) << app_end.str();
      EXPECT_TRUE(redirect->orig_dst == up4 || redirect->orig_dst == up6);
      EXPECT_EQ(redirect->reply_src.port, config.redirect_port);
      EXPECT_TRUE(redirect->reply_src.addr.isLoopback()) << redirect->reply_src.str();
      EXPECT_EQ(redirect->reply_dst, app_end);
    }
    const auto listener =
        std::find_if(scan.sockets.begin(), scan.sockets.end(), [&](const ScannedSocket& s) {
          return s.state == kTcpListen && s.local.port == config.redirect_port;
        });
    ASSERT_NE(listener, scan.sockets.end());
    EXPECT_TRUE(listener->local.addr.isUnspecified());
    EXPECT_FALSE(listener->v6only);
    EXPECT_EQ(listener->cgroup_id, sidecar_cg);

    // Each kind of evidence suffices alone: conntrack without the sidecar's
    // sockets, the sidecar's sockets without conntrack.
    std::vector<ScannedSocket> no_sidecar_ends;
    for (const auto& s : scan.sockets) {
      if (!(s.state == kTcpEstablished && s.local.port == config.redirect_port)) {
        no_sidecar_ends.push_back(s);
      }
    }
    for (const auto& alt :
         {classifyOpenConnections(no_sidecar_ends, scan.conntrack, scan.owners, cc),
          classifyOpenConnections(scan.sockets, {}, scan.owners, cc)}) {
      ASSERT_EQ(alt.size(), 6u);
      for (const Endpoint& app_end : {c4, c6}) {
        const Connection* c = find(alt, app_end);
        ASSERT_NE(c, nullptr);
        EXPECT_EQ(c->verdict, Verdict::Captured) << app_end.str();
      }
      EXPECT_EQ(find(alt, b4)->verdict, Verdict::Bypassed);
    }

    // Without the proxy's cgroup, the sidecar's connections look like gaps:
    // the configuration matters, not the uid.
    ClassifyConfig no_proxy = cc;
    no_proxy.proxy_cgroups.clear();
    const auto unconfigured =
        classifyOpenConnections(scan.sockets, scan.conntrack, scan.owners, no_proxy);
    EXPECT_EQ(std::count_if(unconfigured.begin(), unconfigured.end(),
                            [](const Connection& c) { return c.verdict == Verdict::Bypassed; }),
              3);

    // The upstream's side of the world is another namespace: nothing of the
    // pod's there, and its accepted sockets are inbound.
    auto up = scanAndClassify(pod->upstreamNetnsPath(), cc);
    EXPECT_TRUE(up.connections.empty()) << describe(up.connections);
    EXPECT_FALSE(up.sockets.empty());
  }
  EXPECT_TRUE(leftoverNetns().empty());
}

// No blind spot across a restart. The agent watches a lab pod while a storm
// of short captured connections runs; long-lived captured and bypassed
// connections are opened while it runs, then it is killed with SIGKILL,
// more are opened while it is down, and it is started again. The second run
// reports every connection still open, found at start, with its verdict,
// each exactly once, and the connections made after it started from their
// events, not twice.
using json = nlohmann::json;

std::vector<json> verdictLines(testutil::AgentProcess& agent) {
  std::vector<json> out;
  for (const auto& j : agent.lines()) {
    if (j.value("msg", "") == "verdict") out.push_back(j);
  }
  return out;
}

// Verdict lines of the connection src -> dst. The source alone is not
// enough: the sidecar's own upstream connections leave from the pod's address
// too, and the kernel gives two connections to different destinations the
// same local port.
std::vector<json> linesOf(const std::vector<json>& lines, const Endpoint& src, const Endpoint& dst) {
  std::vector<json> out;
  for (const auto& j : lines) {
    if (j.value("src", "") == src.str() && j.value("dst", "") == dst.str()) out.push_back(j);
  }
  return out;
}

TEST(StartupScanBpf, AgentKilledAndRestartedDuringAStormLeavesNoBlindSpot) {
  ASSERT_TRUE(testutil::isRoot()) << "privileged test: run as root";
  {
    ScanLab scan_lab;
    ASSERT_NO_FATAL_FAILURE(makeScanLab(scan_lab));
    auto& pod = scan_lab.pod;

    const lab::SpawnOptions& app = scan_lab.app;
    const lab::SpawnOptions& app_as_proxy_uid = scan_lab.app_as_proxy_uid;
    const Endpoint up4 = pod->upstreamV4();
    const Endpoint plain_dst{pod->upstreamV4().addr, kPlainPort};

    // Held connections: two captured and two bypassed per phase.
    struct Held {
      std::unique_ptr<lab::ChildProcess> child;
      Endpoint src;
      Endpoint dst;
      Verdict verdict;
    };
    std::vector<Held> held;
    auto openHeld = [&](int phase) {
      for (int i = 0; i < 2; ++i) {
        for (Verdict v : {Verdict::Captured, Verdict::Bypassed}) {
          const bool captured = v == Verdict::Captured;
          auto child = std::make_unique<lab::ChildProcess>(lab::spawnInPod(
              captured ? app : app_as_proxy_uid, [&, captured](int fd) {
                holdingClientRole(captured ? up4 : plain_dst, captured, kHold, fd);
              }));
          const uint16_t port =
              reportedPort(*child, "held client of phase " + std::to_string(phase));
          ASSERT_NE(port, 0);
          held.push_back(Held{std::move(child), Endpoint{pod->podAddressV4(), port},
                              captured ? up4 : plain_dst, v});
        }
      }
    };

    const std::vector<std::string> args = {"run",           "--netns",      pod->podNetnsPath(),
                                           "--proxy-cgroup", pod->sidecarCgroup(), "--log-format",
                                           "json",          "--log-level",  "debug"};
    auto scanned = [](const json& j) { return j.value("msg", "") == "startup scan"; };

    // A storm of short captured connections in the background, across the kill.
    std::atomic<bool> storming{true};
    std::atomic<int> storm_ok{0};
    std::thread storm([&] {
      for (int round = 0; storming.load() && round < 200; ++round) {
        storm_ok += pod->runClient(1000, 1000, pod->appCgroup(), up4, 20).ok;
      }
    });
    struct StopStorm {
      std::atomic<bool>& flag;
      std::thread& t;
      ~StopStorm() {
        flag = false;
        if (t.joinable()) t.join();
      }
    } stop_storm{storming, storm};

    // Run 1: phase-1 connections get their verdicts; then SIGKILL.
    testutil::AgentProcess first(args);
    ASSERT_TRUE(first.waitForLine(scanned, 10s)) << first.stderrText();
    ASSERT_NO_FATAL_FAILURE(openHeld(1));
    const size_t phase1 = held.size();
    for (size_t i = 0; i < phase1; ++i) {
      const Endpoint src = held[i].src;
      const Endpoint dst = held[i].dst;
      EXPECT_TRUE(first.waitForLine(
          [&](const json& j) {
            return j.value("msg", "") == "verdict" && j.value("src", "") == src.str() &&
                   j.value("dst", "") == dst.str();
          },
          5s))
          << "run 1 did not report " << src.str();
    }
    first.killHard();
    EXPECT_GT(storm_ok.load(), 0) << "the storm made no connection";

    // While it is down: phase 2.
    ASSERT_NO_FATAL_FAILURE(openHeld(2));
    const size_t phase2 = held.size();

    // Run 2, with the storm still going.
    testutil::AgentProcess second(args);
    ASSERT_TRUE(second.waitForLine(scanned, 10s)) << second.stderrText();
    storming = false;
    storm.join();

    // Phase 3, and a last storm batch, while run 2 is up.
    ASSERT_NO_FATAL_FAILURE(openHeld(3));
    const auto batch = pod->runClient(1000, 1000, pod->appCgroup(), up4, 50);
    EXPECT_EQ(batch.ok, 50);
    std::this_thread::sleep_for(600ms);  // three grace windows
    EXPECT_EQ(second.stop(), 0) << second.stderrText();

    const auto one = verdictLines(first);
    const auto two = verdictLines(second);
    for (size_t i = 0; i < held.size(); ++i) {
      const Held& h = held[i];
      const std::string want(toString(h.verdict));
      SCOPED_TRACE("held connection " + h.src.str() + " of phase " +
                   std::to_string(i < phase1 ? 1 : i < phase2 ? 2 : 3));
      if (i < phase1) {
        const auto a = linesOf(one, h.src, h.dst);
        ASSERT_EQ(a.size(), 1u);
        EXPECT_EQ(a[0].value("verdict", ""), want);
        EXPECT_FALSE(a[0].contains("found_at_start"));
      }
      const auto b = linesOf(two, h.src, h.dst);
      ASSERT_EQ(b.size(), 1u) << "reported once by run 2: " << json(b).dump();
      EXPECT_EQ(b[0].value("verdict", ""), want) << b[0].dump();
      EXPECT_EQ(b[0].value("found_at_start", false), i < phase2) << b[0].dump();
      EXPECT_EQ(b[0].value("uid", 0u), h.verdict == Verdict::Captured ? 1000u : 1337u);
      if (h.verdict == Verdict::Bypassed) {
        EXPECT_EQ(b[0].value("reason", ""), "owner-uid");
      }
    }
    // The last batch: every connection reported once, captured, from its events.
    // (The sidecar's connections go to the same upstream: one of them may
    // have had the same local port before or after; they are not the app's.)
    for (uint16_t port : batch.local_ports) {
      auto b = linesOf(two, Endpoint{pod->podAddressV4(), port}, up4);
      std::erase_if(b, [](const json& j) { return j.value("verdict", "") == "proxy"; });
      ASSERT_EQ(b.size(), 1u) << port;
      EXPECT_EQ(b[0].value("verdict", ""), "captured");
      EXPECT_FALSE(b[0].contains("found_at_start"));
    }
    // Nothing of the storm was guessed as a gap: the only bypassed are held.
    for (const auto& lines : {one, two}) {
      for (const auto& j : lines) {
        if (j.value("verdict", "") != "bypassed") continue;
        EXPECT_EQ(j.value("dst", ""), plain_dst.str()) << j.dump();
      }
    }
    // Run 2 counted what it found at start.
    bool counted = false;
    for (const auto& j : second.lines()) {
      if (!scanned(j)) continue;
      counted = true;
      // Phases 1 and 2 (8 app connections) plus the sidecar's own upstream
      // connections for the captured ones that are still open.
      EXPECT_GE(j.value("found_open", 0u), phase2) << j.dump();
      EXPECT_EQ(j.value("bypassed", 0u), phase2 / 2) << j.dump();
    }
    EXPECT_TRUE(counted);
    EXPECT_EQ(testutil::agentProgramsLoaded(), 0)
        << "a killed agent leaves nothing attached";
  }
  EXPECT_TRUE(leftoverNetns().empty());
}

TEST(StartupScanBpf, BadNamespacePathsThrow) {
  ASSERT_TRUE(testutil::isRoot()) << "privileged test: run as root";
  EXPECT_THROW(scanTcpSockets("/run/netns/cw-test-scan-does-not-exist"), std::runtime_error);
  EXPECT_THROW(dumpConntrack("/run/netns/cw-test-scan-does-not-exist"), std::runtime_error);
  // A namespace file of another kind: setns(CLONE_NEWNET) refuses it.
  EXPECT_THROW(scanTcpSockets("/proc/self/ns/uts"), std::runtime_error);
  EXPECT_THROW(scanTcpSockets("/etc/hostname"), std::runtime_error);
}

TEST(StartupScanBpf, ScansAFreshNamespace) {
  ASSERT_TRUE(testutil::isRoot()) << "privileged test: run as root";
  testutil::ScopedNetns ns("cw-test-scan-" + std::to_string(::getpid()) + "-empty");
  EXPECT_TRUE(scanTcpSockets(ns.path()).empty());
  EXPECT_TRUE(dumpConntrack(ns.path()).empty());
}

}  // namespace
}  // namespace cw
