// The BPF probe against the real kernel: the netns filter, the records'
// fields, and exact accounting of ring-buffer losses.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <vector>

#include "bpf_test_util.h"
#include "event.h"
#include "lab/system.h"
#include "probe.h"
#include "targets.h"
#include "verdict.h"

namespace cw {
namespace {

using testutil::ScopedNetns;

struct Recorder {
  std::vector<ConnEvent> events;
  std::vector<size_t> sizes;  // of each event's record
  int malformed = 0;
  void clear() {
    events.clear();
    sizes.clear();
  }
  Probe::Handler handler() {
    return [this](std::span<const uint8_t> raw) {
      auto ev = decodeEvent(raw);
      if (ev) {
        events.push_back(*ev);
        sizes.push_back(raw.size());
      } else {
        ++malformed;
      }
    };
  }
};

void drain(Probe& probe) {
  for (int i = 0; i < 5; ++i) probe.poll(20);
  probe.flush();  // the records of the last 2 ms too
}

int countKind(const std::vector<ConnEvent>& evs, EventKind kind) {
  return static_cast<int>(std::count_if(evs.begin(), evs.end(),
                                        [&](const ConnEvent& e) { return e.kind == kind; }));
}

// Each kind is sent as the prefix of cw_event it needs (capture.h).
void expectRecordSizes(const Recorder& rec) {
  ASSERT_EQ(rec.sizes.size(), rec.events.size());
  for (size_t i = 0; i < rec.events.size(); ++i) {
    const EventKind kind = rec.events[i].kind;
    EXPECT_EQ(rec.sizes[i], recordSize(kind))
        << "record " << i << " of kind " << static_cast<int>(kind);
  }
}

// A probe watching ns (as target 1), its records going to rec.
std::unique_ptr<Probe> openWatching(const ScopedNetns& ns, Recorder& rec,
                                    const ProbeOptions& opts = ProbeOptions{}) {
  auto probe = Probe::open(opts, rec.handler());
  probe->watchNetns(netnsInode(ns.path()), 1);
  return probe;
}

// In a forked child: joins the netns and listens on 127.0.0.1:port (0: any
// port); `a` gets the listener's address. Exits the child on failure.
int childListenInNetns(const std::string& netns_path, uint16_t port, sockaddr_in& a) {
  int nsfd = ::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (nsfd < 0 || setns(nsfd, CLONE_NEWNET) != 0) _exit(10);
  int l = ::socket(AF_INET, SOCK_STREAM, 0);
  a = sockaddr_in{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  socklen_t len = sizeof a;
  if (::bind(l, reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(l, 64) != 0 ||
      ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    _exit(11);
  }
  return l;
}

class ProbeTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(testutil::isRoot()) << "privileged test: run as root"; }
};

TEST_F(ProbeTest, UnwatchedNetnsProducesNoEvent) {
  ScopedNetns watched("cw-test-probe-w");
  ScopedNetns other("cw-test-probe-u");
  Recorder rec;
  ProbeOptions opts;
  opts.redirect_port = 15991;
  auto probe = Probe::open(opts, rec.handler());
  probe->watchNetns(netnsInode(watched.path()), 7);

  ASSERT_EQ(testutil::loopbackConnections(other.path(), 20, false, 15991), 20);
  ASSERT_EQ(testutil::loopbackConnections(other.path(), 20, true, 15991), 20);
  drain(*probe);
  EXPECT_TRUE(rec.events.empty());
  EXPECT_EQ(probe->counters().submitted, 0u) << "the kernel reserved records for an unwatched netns";

  ASSERT_EQ(testutil::loopbackConnections(watched.path(), 5, false), 5);
  drain(*probe);
  EXPECT_EQ(countKind(rec.events, EventKind::ActiveEstablished), 5);
  EXPECT_EQ(countKind(rec.events, EventKind::ActiveClosed), 5);
  EXPECT_EQ(rec.malformed, 0);
  expectRecordSizes(rec);
}

TEST_F(ProbeTest, RecordsCarryOwnerAddressesAndTheRedirectPortAccept) {
  ScopedNetns ns("cw-test-probe-f");
  const uint32_t inode = netnsInode(ns.path());
  for (bool v6 : {false, true}) {
    SCOPED_TRACE(v6 ? "IPv6" : "IPv4");
    Recorder rec;
    ProbeOptions opts;
    opts.redirect_port = 15992;
    auto probe = Probe::open(opts, rec.handler());
    probe->watchNetns(inode, 1);
    ASSERT_EQ(testutil::loopbackConnections(ns.path(), 3, v6, 15992), 3);
    drain(*probe);

    ASSERT_EQ(countKind(rec.events, EventKind::ActiveEstablished), 3);
    ASSERT_EQ(countKind(rec.events, EventKind::PassiveEstablished), 3);
    expectRecordSizes(rec);
    const Address loop = *Address::parse(v6 ? "::1" : "127.0.0.1");
    for (const auto& e : rec.events) {
      // A close record (sent if an accept was not matched to its app
      // socket) names only its socket.
      EXPECT_EQ(e.netns, e.kind == EventKind::ActiveClosed ? 0u : inode);
      if (e.kind == EventKind::ActiveEstablished) {
        EXPECT_TRUE(e.ownerKnown());
        EXPECT_EQ(e.uid, 0u);
        EXPECT_NE(e.pid, 0u);
        EXPECT_NE(e.pid, static_cast<uint32_t>(getpid())) << "owner is the connecting child";
        EXPECT_NE(e.cgroup_id, 0u);
        EXPECT_EQ(e.src.addr, loop);
        EXPECT_EQ(e.dst.addr, loop);
        EXPECT_EQ(e.dst.port, 15992);
        EXPECT_NE(e.src.port, 0);
      }
      if (e.kind == EventKind::PassiveEstablished) {
        EXPECT_EQ(e.src.port, 15992);
        EXPECT_EQ(e.dst.addr, loop);
        // The accept's peer is one of the app sockets' local ends.
        bool matched = std::any_of(rec.events.begin(), rec.events.end(), [&](const ConnEvent& a) {
          return a.kind == EventKind::ActiveEstablished && a.src == e.dst;
        });
        EXPECT_TRUE(matched) << e.dst.str();
      }
    }
  }
}

TEST_F(ProbeTest, RingBufferLossesAreCountedExactly) {
  ScopedNetns ns("cw-test-probe-l");
  Recorder rec;
  ProbeOptions opts;
  opts.redirect_port = 15993;
  opts.ring_buffer_bytes = 4096;  // about 36 records: most of the storm is lost
  auto probe = openWatching(ns, rec, opts);

  // Each: active established, passive established, and active closed unless
  // its accept's record was sent (one after the other: the kernel matches
  // every accept to its app socket).
  const int n = 200;
  ASSERT_EQ(testutil::loopbackConnections(ns.path(), n, false, 15993), n);
  drain(*probe);
  auto c = probe->counters();
  EXPECT_GT(c.ringbuf_lost, 0u);
  const size_t accepts_sent = static_cast<size_t>(countKind(rec.events, EventKind::PassiveEstablished));
  EXPECT_EQ(rec.events.size() + c.ringbuf_lost, static_cast<size_t>(3 * n) - accepts_sent);
  EXPECT_EQ(c.submitted, rec.events.size());
  // By kind: every connection's own record and every accept is either read
  // or counted as lost.
  EXPECT_EQ(countKind(rec.events, EventKind::ActiveEstablished) + static_cast<int>(c.lost_active), n);
  EXPECT_EQ(countKind(rec.events, EventKind::PassiveEstablished) + static_cast<int>(c.lost_passive),
            n);
}

// One read takes at most the read budget (an equal share of each ring) and
// says it left records behind; the reads after it take the rest. Every
// record is handed out once, in time order across the rings: the records of
// a ring read only in part are not overtaken by the newer ones of another.
TEST_F(ProbeTest, AReadTakesAtMostItsBudgetAndTheNextOnesTheRest) {
  ScopedNetns ns("cw-test-probe-b");
  std::vector<uint64_t> stamps;
  ProbeOptions opts;
  opts.redirect_port = 15994;
  opts.read_budget = 64;
  auto probe = Probe::open(opts, [&stamps](std::span<const uint8_t> raw) {
    uint64_t ts = 0;
    std::memcpy(&ts, raw.data(), sizeof ts);
    stamps.push_back(ts);
  });
  probe->watchNetns(netnsInode(ns.path()), 1);

  // The older half of the records on the first CPU's ring, the newer half on
  // the last CPU's (the connections' children inherit the affinity).
  cpu_set_t all;
  ASSERT_EQ(sched_getaffinity(0, sizeof all, &all), 0);
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &all)) cpus.push_back(c);
  }
  const int n = 150;
  for (int c : {cpus.front(), cpus.back()}) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(c, &one);
    ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
    EXPECT_EQ(testutil::loopbackConnections(ns.path(), n, false, 15994), n);
  }
  ASSERT_EQ(sched_setaffinity(0, sizeof all, &all), 0);
  ::usleep(Probe::kSettleNs / 1000 + 1000);  // every record settled

  const int first = probe->drain();
  EXPECT_GT(first, 0);
  EXPECT_LE(first, 64);
  EXPECT_TRUE(probe->behind());
  int total = first;
  int reads = 1;
  while (probe->behind() && reads < 1000) {
    const int k = probe->drain();
    EXPECT_LE(k, 64);
    total += k;
    ++reads;
  }
  EXPECT_FALSE(probe->behind());
  probe->flush();
  // Each connection: its established record and its accept (the accept
  // spares the close record).
  EXPECT_GE(total, 2 * 2 * n);
  EXPECT_GE(reads, total / 64);
  EXPECT_EQ(static_cast<uint64_t>(total), probe->counters().submitted);
  EXPECT_EQ(stamps.size(), static_cast<size_t>(total));
  EXPECT_TRUE(std::is_sorted(stamps.begin(), stamps.end()));
}

// In a child in the netns: a listener on `port` (IPv6 [::], dual stack, when
// listen_v6; else 127.0.0.1), one IPv4 or IPv6 loopback connection to it,
// accepted, closed by the listener's side first, then by the app.
void oneConnection(const std::string& netns_path, uint16_t port, bool listen_v6, bool connect_v6) {
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int nsfd = ::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (nsfd < 0 || setns(nsfd, CLONE_NEWNET) != 0) _exit(10);
    sockaddr_in6 l6{};
    l6.sin6_family = AF_INET6;
    l6.sin6_addr = in6addr_any;
    l6.sin6_port = htons(port);
    sockaddr_in l4{};
    l4.sin_family = AF_INET;
    l4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    l4.sin_port = htons(port);
    const int l = ::socket(listen_v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    const int zero = 0;
    const int one = 1;
    if (listen_v6) ::setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    ::setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // the last case's TIME_WAIT
    const bool bound = listen_v6 ? ::bind(l, reinterpret_cast<sockaddr*>(&l6), sizeof l6) == 0
                                 : ::bind(l, reinterpret_cast<sockaddr*>(&l4), sizeof l4) == 0;
    if (!bound || ::listen(l, 8) != 0) _exit(11);
    sockaddr_in6 d6{};
    d6.sin6_family = AF_INET6;
    d6.sin6_addr = in6addr_loopback;
    d6.sin6_port = htons(port);
    const int c = ::socket(connect_v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    const bool connected = connect_v6
                               ? ::connect(c, reinterpret_cast<sockaddr*>(&d6), sizeof d6) == 0
                               : ::connect(c, reinterpret_cast<sockaddr*>(&l4), sizeof l4) == 0;
    if (!connected) _exit(12);
    const int a = ::accept(l, nullptr, nullptr);
    if (a < 0) _exit(13);
    ::close(a);
    char buf[8];
    while (::read(c, buf, sizeof buf) > 0) {
    }
    ::close(c);
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

// An app socket whose connection the sidecar accepted on the redirect port
// sends no close record (the agent decides it captured at the accept), IPv4,
// IPv6, and IPv4 to a dual-stack listener (its accept names the app's end as
// ::ffff:127.0.0.1); a connection to another port still sends its close.
TEST_F(ProbeTest, AnAcceptOnTheRedirectPortSparesItsAppSocketsCloseRecord) {
  ScopedNetns ns("cw-test-probe-j");
  Recorder rec;
  ProbeOptions opts;
  opts.redirect_port = 15994;
  auto probe = openWatching(ns, rec, opts);

  struct Case {
    const char* name;
    bool listen_v6;
    bool connect_v6;
  };
  for (const Case& k : {Case{"IPv4", false, false}, Case{"IPv6", true, true},
                        Case{"IPv4 to a dual-stack listener", true, false}}) {
    SCOPED_TRACE(k.name);
    rec.clear();
    ASSERT_NO_FATAL_FAILURE(oneConnection(ns.path(), 15994, k.listen_v6, k.connect_v6));
    ASSERT_NO_FATAL_FAILURE(oneConnection(ns.path(), 15995, k.listen_v6, k.connect_v6));
    drain(*probe);
    ASSERT_EQ(countKind(rec.events, EventKind::ActiveEstablished), 2);
    ASSERT_EQ(countKind(rec.events, EventKind::PassiveEstablished), 1);
    const auto closes = countKind(rec.events, EventKind::ActiveClosed);
    EXPECT_EQ(closes, 1) << "only the connection to the other port sends its close";
    // A close names only its socket: the one established to the other port.
    uint64_t other_sock = 0;
    for (const auto& e : rec.events) {
      if (e.kind == EventKind::ActiveEstablished && e.dst.port == 15995) other_sock = e.sock_id;
    }
    for (const auto& e : rec.events) {
      if (e.kind == EventKind::ActiveClosed) {
        EXPECT_NE(other_sock, 0u);
        EXPECT_EQ(e.sock_id, other_sock);
      }
    }
  }
}

// The cgroup v2 id of this process (its children connect from the same one).
uint64_t ownCgroupId() {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) == 0) return lab::cgroupId(lab::findCgroup2Root() + line.substr(3));
  }
  ADD_FAILURE() << "no cgroup v2 line in /proc/self/cgroup";
  return 0;
}

// A socket whose owner is in a proxy cgroup sends no close record (the agent
// decides it proxy at its established one); once the cgroup is no longer a
// proxy's, its sockets' close records come again.
TEST_F(ProbeTest, TheProxysSocketsSendNoCloseRecord) {
  ScopedNetns ns("cw-test-probe-p");
  Recorder rec;
  auto probe = openWatching(ns, rec);
  const uint64_t cgroup = ownCgroupId();
  ASSERT_NE(cgroup, 0u);

  ASSERT_TRUE(probe->addProxyCgroup(cgroup));
  ASSERT_EQ(testutil::loopbackConnections(ns.path(), 4, false), 4);
  ASSERT_EQ(testutil::loopbackConnections(ns.path(), 4, true), 4);
  drain(*probe);
  EXPECT_EQ(countKind(rec.events, EventKind::ActiveEstablished), 8);
  EXPECT_EQ(countKind(rec.events, EventKind::ActiveClosed), 0);
  for (const auto& e : rec.events) EXPECT_NE(e.flags & CW_F_PROXY_OWNER, 0) << e.src.str();

  rec.clear();
  probe->removeProxyCgroup(cgroup);
  ASSERT_EQ(testutil::loopbackConnections(ns.path(), 4, false), 4);
  drain(*probe);
  EXPECT_EQ(countKind(rec.events, EventKind::ActiveEstablished), 4);
  EXPECT_EQ(countKind(rec.events, EventKind::ActiveClosed), 4);
  for (const auto& e : rec.events) EXPECT_EQ(e.flags & CW_F_PROXY_OWNER, 0) << e.src.str();
}

// The proxy map is bounded (4096 sidecars on a node): a cgroup beyond that
// is refused, not an error that stops the agent (it only costs close records).
TEST_F(ProbeTest, AFullProxyMapRefusesTheNextCgroup) {
  Recorder rec;
  auto probe = Probe::open(ProbeOptions{}, rec.handler());
  for (uint64_t id = 1; id <= 4096; ++id) ASSERT_TRUE(probe->addProxyCgroup(id)) << id;
  EXPECT_TRUE(probe->addProxyCgroup(4096)) << "an update of a present key still succeeds";
  EXPECT_FALSE(probe->addProxyCgroup(4097));
  probe->removeProxyCgroup(1);
  EXPECT_TRUE(probe->addProxyCgroup(4097));
}

// The owner table is bounded: max_tracked_sockets 4 gives it twice the slots,
// one bucket of 8, which both of every socket's buckets then are. With 12 held
// open at once, the 4 that do not fit are counted (insert failed, connection
// lost) and emit nothing; the 8 that fit are reported. No entry is evicted
// silently.
TEST_F(ProbeTest, AFullOwnerMapCountsTheConnectionsItCannotTrack) {
  ScopedNetns ns("cw-test-probe-o");
  Recorder rec;
  ProbeOptions opts;
  opts.max_tracked_sockets = 4;
  auto probe = openWatching(ns, rec, opts);

  constexpr int kHeld = 12;
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    sockaddr_in a{};
    childListenInNetns(ns.path(), 15994, a);
    std::vector<int> held;
    for (int i = 0; i < kHeld; ++i) {
      int c = ::socket(AF_INET, SOCK_STREAM, 0);
      if (::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) _exit(12);
      held.push_back(c);  // all open at once
    }
    for (int c : held) ::close(c);
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  drain(*probe);
  auto c = probe->counters();
  EXPECT_EQ(c.owner_insert_failed, 4u);
  EXPECT_EQ(c.lost_active, 4u);
  EXPECT_EQ(countKind(rec.events, EventKind::ActiveEstablished), 8);
  EXPECT_EQ(c.ringbuf_lost, 0u);
}

// In a child: opens n connections to a listener of its own in the netns
// (none accepted), all held at once; writes a byte to ready_fd, waits for one
// on release_fd, then closes them and exits 0 (non-zero on a failure).
[[noreturn]] void childHoldsConnections(const std::string& netns_path, int n, int ready_fd,
                                        int release_fd) {
  rlimit nofile{4096, 4096};
  if (::setrlimit(RLIMIT_NOFILE, &nofile) != 0) _exit(13);
  sockaddr_in a{};
  const int l = childListenInNetns(netns_path, 0, a);
  if (::listen(l, n) != 0) _exit(14);  // room for all of them in the accept queue
  std::vector<int> held;
  for (int i = 0; i < n; ++i) {
    int c = ::socket(AF_INET, SOCK_STREAM, 0);
    if (::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) _exit(12);
    held.push_back(c);
  }
  char x = 1;
  if (::write(ready_fd, &x, 1) != 1 || ::read(release_fd, &x, 1) != 1) _exit(15);
  for (int c : held) ::close(c);
  ::close(l);
  _exit(0);
}

// Up to the bound, every socket is tracked: 1,024 held open at once with
// max_tracked_sockets 1,024 (256 buckets of 8 keys, each socket in one of its
// two: in the hot area, the first 64 buckets, while those have room, then in
// the overflow area) are all reported, none counted as not fitting, and
// closing them frees every key and brings the overflow area's count back to
// 0 (lookups skip that area again).
TEST_F(ProbeTest, OwnerTableTracksAsManySocketsAsItsBoundAndFreesThemAtClose) {
  constexpr int kBound = 1024;
  ScopedNetns ns("cw-test-probe-b");
  Recorder rec;
  ProbeOptions bounded;
  bounded.max_tracked_sockets = kBound;
  auto probe = openWatching(ns, rec, bounded);

  int ready[2];
  int release[2];
  ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(release, O_CLOEXEC), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) childHoldsConnections(ns.path(), kBound, ready[1], release[0]);
  ::close(ready[1]);
  ::close(release[0]);
  char x = 0;
  ASSERT_EQ(::read(ready[0], &x, 1), 1) << "the child could not open its connections";
  drain(*probe);
  EXPECT_EQ(testutil::bpfOwnerEntries(), kBound);  // all open, all tracked
  EXPECT_EQ(probe->trackedSockets(), kBound);      // as the agent's gauge reads it
  // Twice the hot area's 512 keys: new keys went there first, so it is
  // (nearly: a socket whose two hot buckets are full goes on) full, the rest
  // are in the overflow area, and its count says how many.
  constexpr uint32_t kHotBuckets = 64;  // a quarter of the 256
  const long overflow = testutil::bpfOwnerEntries(kHotBuckets);
  EXPECT_GE(kBound - overflow, static_cast<long>(kHotBuckets * CW_OWNER_BUCKET_SLOTS * 7 / 8));
  EXPECT_EQ(testutil::bpfOverflowKeysCounter(), overflow);
  ASSERT_EQ(::write(release[1], &x, 1), 1);
  int status = 0;
  waitpid(child, &status, 0);
  ::close(ready[0]);
  ::close(release[1]);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  // The listener's close resets the connections still in its queue; past
  // the softirq's budget the rest of that work is left to ksoftirqd, which
  // may run later: wait (up to 10 s) for the sockets to reach CLOSE.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  do {
    drain(*probe);
  } while (probe->trackedSockets() != 0 && std::chrono::steady_clock::now() < deadline);
  const auto c = probe->counters();
  EXPECT_EQ(c.owner_insert_failed, 0u);
  EXPECT_EQ(c.lost_active, 0u);
  EXPECT_EQ(countKind(rec.events, EventKind::ActiveEstablished), kBound);
  EXPECT_EQ(c.ringbuf_lost, 0u);
  // Every app socket ends (the server never accepted them) and its key is
  // freed with it.
  EXPECT_EQ(testutil::bpfOwnerEntries(), 0);
  EXPECT_EQ(probe->trackedSockets(), 0);
  EXPECT_EQ(testutil::bpfOverflowKeysCounter(), 0);
}

// A socket bound to the redirect port before connect() (in a pod where the
// sidecar does not listen on it) is not tracked: the close of a socket on
// that port skips the owner table (it is the sidecar's accepted one), so its
// entry would never be freed. It is counted as a lost connection instead.
TEST_F(ProbeTest, ASocketBoundToTheRedirectPortIsCountedLostAndNotTracked) {
  ScopedNetns ns("cw-test-probe-r");
  Recorder rec;
  ProbeOptions opts;
  opts.redirect_port = 15993;
  auto probe = openWatching(ns, rec, opts);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    sockaddr_in server;
    const int l = childListenInNetns(ns.path(), 0, server);
    const int c = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in local{};
    local.sin_family = AF_INET;
    local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    local.sin_port = htons(15993);
    if (::bind(c, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0 ||
        ::connect(c, reinterpret_cast<sockaddr*>(&server), sizeof server) != 0) {
      _exit(12);
    }
    const int s = ::accept(l, nullptr, nullptr);
    ::close(c);
    ::close(s);
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  // An ordinary connection afterwards is tracked as always.
  ASSERT_EQ(testutil::loopbackConnections(ns.path(), 1, false), 1);
  drain(*probe);
  EXPECT_EQ(probe->counters().lost_active, 1u);
  EXPECT_EQ(probe->counters().owner_insert_failed, 0u);
  EXPECT_EQ(countKind(rec.events, EventKind::ActiveEstablished), 1);
  for (const auto& e : rec.events) EXPECT_NE(e.src.port, 15993) << "a record of the bound socket";
  EXPECT_EQ(testutil::bpfOwnerEntries(), 0);
}

// How a connection ended, as its close record tells it (the bypass outcome
// comes from it): the peer closing first, the app closing first, data
// received, and a reset. Each in turn, told apart by the app's port.
TEST_F(ProbeTest, CloseRecordsTellHowTheConnectionEnded) {
  ScopedNetns ns("cw-test-probe-c");
  Recorder rec;
  auto probe = openWatching(ns, rec);

  enum Ending { kPeerFirst, kAppFirst, kData, kReset, kEndings };
  int pipefd[2];
  ASSERT_EQ(pipe2(pipefd, O_CLOEXEC), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    sockaddr_in a{};
    const int l = childListenInNetns(ns.path(), 0, a);
    uint16_t ports[kEndings] = {};
    auto untilEof = [](int fd) {
      char buf[64];
      while (::read(fd, buf, sizeof buf) > 0) {
      }
    };
    for (int e = 0; e < kEndings; ++e) {
      int c = ::socket(AF_INET, SOCK_STREAM, 0);
      if (::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) _exit(12);
      sockaddr_in local{};
      socklen_t ll = sizeof local;
      ::getsockname(c, reinterpret_cast<sockaddr*>(&local), &ll);
      ports[e] = ntohs(local.sin_port);
      int s = ::accept(l, nullptr, nullptr);
      if (s < 0) _exit(13);
      switch (e) {
        case kPeerFirst:
          ::close(s);
          untilEof(c);
          ::close(c);
          break;
        case kAppFirst:
          ::close(c);
          untilEof(s);
          ::close(s);
          break;
        case kData:
          if (::write(s, "hello", 5) != 5) _exit(14);
          ::close(s);
          untilEof(c);
          ::close(c);
          break;
        case kReset: {
          linger lg{1, 0};
          ::setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
          ::close(s);  // RST
          untilEof(c);
          ::close(c);
          break;
        }
      }
    }
    _exit(::write(pipefd[1], ports, sizeof ports) == sizeof ports ? 0 : 15);
  }
  ::close(pipefd[1]);
  uint16_t ports[kEndings] = {};
  const bool got = ::read(pipefd[0], ports, sizeof ports) == static_cast<ssize_t>(sizeof ports);
  ::close(pipefd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(got && WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  drain(*probe);

  // A close record names its socket (sock_id); its local port may already be
  // released then. The established record has both, and the socket's next
  // close is this connection's (the kernel reuses a freed socket's address).
  auto closeOf = [&](uint16_t port) -> const ConnEvent* {
    for (size_t i = 0; i < rec.events.size(); ++i) {
      const ConnEvent& est = rec.events[i];
      if (est.kind != EventKind::ActiveEstablished || est.src.port != port) continue;
      for (size_t j = i + 1; j < rec.events.size(); ++j) {
        const ConnEvent& e = rec.events[j];
        if (e.kind == EventKind::ActiveClosed && e.sock_id == est.sock_id) return &e;
      }
    }
    return nullptr;
  };
  const ConnEvent* peer_first = closeOf(ports[kPeerFirst]);
  const ConnEvent* app_first = closeOf(ports[kAppFirst]);
  const ConnEvent* data = closeOf(ports[kData]);
  const ConnEvent* reset = closeOf(ports[kReset]);
  ASSERT_TRUE(peer_first && app_first && data && reset)
      << "a close record is missing (" << rec.events.size() << " records)";
  EXPECT_EQ(outcomeFromClose(peer_first->flags, peer_first->bytes_received), Outcome::PeerClosed);
  EXPECT_EQ(outcomeFromClose(app_first->flags, app_first->bytes_received), Outcome::Closed);
  EXPECT_EQ(peer_first->bytes_received, 0u) << "the peer's FIN is not a reply byte";
  EXPECT_EQ(data->bytes_received, 6u) << "5 bytes and the FIN";
  EXPECT_EQ(outcomeFromClose(data->flags, data->bytes_received), Outcome::Data);
  EXPECT_NE(reset->flags & CW_F_RESET_RECEIVED, 0);
  EXPECT_EQ(outcomeFromClose(reset->flags, reset->bytes_received), Outcome::Reset);
  // Only the ones the peer closed first carry the flag.
  EXPECT_NE(peer_first->flags & CW_F_PEER_FIN, 0);
  EXPECT_NE(data->flags & CW_F_PEER_FIN, 0);
  EXPECT_EQ(app_first->flags & CW_F_PEER_FIN, 0);
}

TEST_F(ProbeTest, BadRingBufferSizeIsRejectedBeforeLoading) {
  ProbeOptions opts;
  opts.ring_buffer_bytes = 5000;
  EXPECT_THROW(Probe::open(opts, [](std::span<const uint8_t>) {}), ProbeError);
}

}  // namespace
}  // namespace cw
