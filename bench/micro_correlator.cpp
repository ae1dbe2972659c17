// Micro-benchmarks of the user-space hot path: decoding ring-buffer records
// and the correlator, fed with synthetic streams shaped like the storms of
// cw_bench (events per second on one core: items_per_second). The streams
// are what the probe ships: every record (the join is done in user space).
//
// Streams: each connection is the records the probe ships for it, in the
// order they arrive, with many connections interleaved (a window of 64 in
// flight), socket addresses reused as the kernel's slab reuses them, ports
// cycling through the ephemeral range, 20k connections/s of CLOCK_MONOTONIC
// time, expire() every 256 records as the agent does after each poll.
#include <benchmark/benchmark.h>

#include <cstring>
#include <deque>
#include <random>
#include <vector>

#include "correlator.h"
#include "event.h"
#include "reorder_buffer.h"

namespace cw {
namespace {

constexpr uint32_t kNetns = 4026532001u;
constexpr uint64_t kAppCgroup = 5001;
constexpr uint64_t kProxyCgroup = 9001;
constexpr uint64_t kStepNs = 50'000;  // 20k connections/s
constexpr int kWindow = 64;

enum class Kind { kCaptured, kBypassed, kProxy, kLocal };

struct Stream {
  std::vector<ConnEvent> events;
  uint64_t span_ns = 0;  // time covered: added to every timestamp on each replay
};

Address v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  const uint8_t bytes[4] = {a, b, c, d};
  return Address::fromV4(bytes);
}

ConnEvent appEvent(EventKind kind, uint64_t sock, uint64_t ts, uint16_t port, Kind k) {
  ConnEvent ev;
  ev.kind = kind;
  ev.flags = CW_F_OWNER_KNOWN;
  ev.ts_ns = ts;
  ev.sock_id = sock;
  ev.cgroup_id = k == Kind::kProxy ? kProxyCgroup : kAppCgroup;
  ev.netns = kNetns;
  ev.pid = 4321;
  ev.uid = k == Kind::kCaptured || k == Kind::kLocal ? 1000 : 1337;
  ev.gid = ev.uid;
  ev.src = Endpoint{v4(198, 18, 0, 2), port};
  ev.dst = k == Kind::kLocal ? Endpoint{v4(127, 0, 0, 1), 15000} : Endpoint{v4(198, 18, 0, 1), 32000};
  std::memcpy(ev.comm.data(), "envoy", 6);
  return ev;
}

// `n` connections whose kinds follow `mix` (cycled). For each: the app's
// ESTABLISHED, for captured ones the sidecar's accept 30 us later, and the
// app's CLOSE (the records today's probe ships).
Stream makeStream(size_t n, const std::vector<Kind>& mix, bool closes = true) {
  Stream s;
  std::mt19937 rng(42);
  std::vector<uint64_t> free_socks;
  for (uint64_t i = 0; i < 4096; ++i) free_socks.push_back(0xffff888100000000ull + i * 2304);
  std::shuffle(free_socks.begin(), free_socks.end(), rng);
  struct Open {
    uint64_t sock;
    uint16_t port;
    Kind kind;
  };
  std::deque<Open> open;
  uint16_t port = 10000;
  uint64_t ts = 1'000'000'000'000ull;
  auto closeOldest = [&] {
    const Open o = open.front();
    open.pop_front();
    if (closes) {
      ConnEvent c = appEvent(EventKind::ActiveClosed, o.sock, ts, o.port, o.kind);
      c.flags |= CW_F_PEER_FIN;
      s.events.push_back(c);
    }
    free_socks.push_back(o.sock);
  };
  for (size_t i = 0; i < n; ++i) {
    const Kind k = mix[i % mix.size()];
    const uint64_t sock = free_socks.front();
    free_socks.erase(free_socks.begin());
    port = port >= 65000 ? 10000 : static_cast<uint16_t>(port + 1);
    ts += kStepNs;
    s.events.push_back(appEvent(EventKind::ActiveEstablished, sock, ts, port, k));
    if (k == Kind::kCaptured) {
      ConnEvent a;
      a.kind = EventKind::PassiveEstablished;
      a.ts_ns = ts + 30'000;
      a.sock_id = 0xffff888200000000ull + (i % 4096) * 2304;
      a.netns = kNetns;
      a.src = Endpoint{v4(127, 0, 0, 1), 15001};
      a.dst = Endpoint{v4(198, 18, 0, 2), port};
      s.events.push_back(a);
    }
    open.push_back({sock, port, k});
    if (open.size() > static_cast<size_t>(kWindow)) closeOldest();
  }
  while (!open.empty()) closeOldest();
  s.span_ns = ts + kStepNs - 1'000'000'000'000ull + 400'000'000;  // replays never overlap in time
  return s;
}

void runStream(benchmark::State& state, const Stream& s) {
  Correlator c(Correlator::Config{200'000'000, 65536, 65536});
  c.addProxyCgroup(kProxyCgroup);
  std::vector<Decision> out;
  out.reserve(4096);
  uint64_t offset = 0, verdicts = 0;
  size_t i = 0;
  uint64_t last_ts = 0;
  for (auto _ : state) {
    ConnEvent ev = s.events[i];
    ev.ts_ns += offset;
    last_ts = ev.ts_ns;
    c.onEvent(ev, out);
    if ((++i & 255) == 0 || i == s.events.size()) {
      c.expire(last_ts, out);
      verdicts += out.size();
      out.clear();
    }
    if (i == s.events.size()) {
      i = 0;
      offset += s.span_ns;
    }
  }
  benchmark::DoNotOptimize(verdicts);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  state.counters["pending"] = static_cast<double>(c.pendingConnections());
}

void BM_CorrelatorCaptured(benchmark::State& state) {
  static const Stream s = makeStream(100'000, {Kind::kCaptured});
  runStream(state, s);
}
BENCHMARK(BM_CorrelatorCaptured);

void BM_CorrelatorBypassed(benchmark::State& state) {
  static const Stream s = makeStream(100'000, {Kind::kBypassed});
  runStream(state, s);
}
BENCHMARK(BM_CorrelatorBypassed);

void BM_CorrelatorProxy(benchmark::State& state) {
  static const Stream s = makeStream(100'000, {Kind::kProxy});
  runStream(state, s);
}
BENCHMARK(BM_CorrelatorProxy);

// A gateway: each captured app connection makes a proxy connection; a tenth
// of the app's connections escape; some go to loopback.
void BM_CorrelatorGatewayMix(benchmark::State& state) {
  static const Stream s = makeStream(
      100'000, {Kind::kCaptured, Kind::kProxy, Kind::kCaptured, Kind::kProxy, Kind::kCaptured,
                Kind::kProxy, Kind::kCaptured, Kind::kProxy, Kind::kBypassed, Kind::kLocal});
  runStream(state, s);
}
BENCHMARK(BM_CorrelatorGatewayMix);

// The ring-buffer records the probe ships for a stream, as the kernel side
// writes them (bpf/capture.h): a close as a cw_close_event, an accept as a
// cw_accept_event, the others as a cw_event.
std::vector<std::vector<uint8_t>> rawRecords(const Stream& s) {
  std::vector<std::vector<uint8_t>> out;
  for (const auto& ev : s.events) {
    cw_event e{};
    e.ts_ns = ev.ts_ns;
    e.sock_id = ev.sock_id;
    e.cgroup_id = ev.cgroup_id;
    e.bytes_received = ev.bytes_received;
    e.netns = ev.netns;
    e.pid = ev.pid;
    e.uid = ev.uid;
    e.gid = ev.gid;
    e.family = 2;
    std::memcpy(e.saddr, ev.src.addr.bytes.data() + 12, 4);
    std::memcpy(e.daddr, ev.dst.addr.bytes.data() + 12, 4);
    e.sport = ev.src.port;
    e.dport = ev.dst.port;
    e.kind = static_cast<uint8_t>(ev.kind);
    e.flags = ev.flags;
    std::memcpy(e.comm, ev.comm.data(), CW_COMM_LEN);
    if (ev.kind == EventKind::ActiveClosed) e.family = 0;
    std::vector<uint8_t> raw(recordSize(ev.kind));
    std::memcpy(raw.data(), &e, raw.size());
    out.push_back(std::move(raw));
  }
  return out;
}

void BM_DecodeEvent(benchmark::State& state) {
  static const auto raw = rawRecords(makeStream(4096, {Kind::kCaptured}));
  size_t i = 0;
  ConnEvent ev;  // the agent's form: decoded into one event, record after record
  for (auto _ : state) {
    benchmark::DoNotOptimize(decodeEvent(raw[i], ev));
    benchmark::DoNotOptimize(ev);
    if (++i == raw.size()) i = 0;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_DecodeEvent);

// What the agent does per record: decode, then correlate.
void BM_CorrelatorDecodeGatewayMix(benchmark::State& state) {
  static const Stream s = makeStream(
      100'000, {Kind::kCaptured, Kind::kProxy, Kind::kCaptured, Kind::kProxy, Kind::kCaptured,
                Kind::kProxy, Kind::kCaptured, Kind::kProxy, Kind::kBypassed, Kind::kLocal});
  static const auto raw = rawRecords(s);
  Correlator c(Correlator::Config{200'000'000, 65536, 65536});
  c.addProxyCgroup(kProxyCgroup);
  std::vector<Decision> out;
  out.reserve(4096);
  uint64_t offset = 0, verdicts = 0, last_ts = 0;
  size_t i = 0;
  ConnEvent ev;
  for (auto _ : state) {
    decodeEvent(raw[i], ev);
    ev.ts_ns += offset;
    last_ts = ev.ts_ns;
    c.onEvent(ev, out);
    if ((++i & 255) == 0 || i == raw.size()) {
      c.expire(last_ts, out);
      verdicts += out.size();
      out.clear();
    }
    if (i == raw.size()) {
      i = 0;
      offset += s.span_ns;
    }
  }
  benchmark::DoNotOptimize(verdicts);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_CorrelatorDecodeGatewayMix);

// What the agent does with a read of the per-CPU rings before decoding:
// each read takes every ring in turn (each in time order, the rings'
// records interleaved in time), and hands out what is older than the
// settle margin; the rest waits for the next read. Shaped like a captured
// storm on this machine: 2 rings, 20 ms reads, 30,000 connections/s (600
// records per ring per read), 2 ms held back.
void BM_ReorderTwoRings(benchmark::State& state) {
  constexpr int kRings = 2, kPerRing = 600;
  constexpr uint64_t kReadNs = 20'000'000, kSettleNs = 2'000'000;
  static const auto raw = rawRecords(makeStream(kRings * kPerRing, {Kind::kCaptured}));
  // One read's records, ring after ring; their stamps are set per read.
  std::vector<std::vector<uint8_t>> read(raw.begin(), raw.begin() + kRings * kPerRing);
  ReorderBuffer b;
  uint64_t t0 = 0, handed = 0;
  const auto sink = [&](std::span<const uint8_t> r) { handed += r.size(); };
  for (auto _ : state) {
    for (int ring = 0; ring < kRings; ++ring) {
      for (int k = 0; k < kPerRing; ++k) {
        auto& rec = read[static_cast<size_t>(ring * kPerRing + k)];
        const uint64_t ts =
            t0 + (static_cast<uint64_t>(k) * kRings + ring) * kReadNs / (kPerRing * kRings);
        std::memcpy(rec.data(), &ts, sizeof ts);
        b.add(rec);
      }
    }
    t0 += kReadNs;
    b.release(t0 - kSettleNs, sink);
  }
  benchmark::DoNotOptimize(handed);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * kRings * kPerRing);
}
BENCHMARK(BM_ReorderTwoRings);

}  // namespace
}  // namespace cw

BENCHMARK_MAIN();
