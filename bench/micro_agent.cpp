// Micro-benchmarks of what the agent does per verdict after the correlator:
// reporting (tallies, metrics, gap table, log fields) and, for a bypassed
// connection, the rules explainer (agent/rules: evaluate the pod's Istio
// rules for the connection and name the reason). One core, items/s.
#include <benchmark/benchmark.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "correlator.h"
#include "logging.h"
#include "metrics.h"
#include "pod_rules.h"
#include "reporter.h"
#include "rules/evaluator.h"
#include "rules/explain.h"
#include "rules/iptables_parser.h"

namespace cw {
namespace {

constexpr uint32_t kNetns = 4026532001u;

Address v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  const uint8_t bytes[4] = {a, b, c, d};
  return Address::fromV4(bytes);
}

Decision decision(Verdict verdict, uint32_t uid, uint16_t port) {
  Decision d;
  d.type = Decision::Type::Verdict;
  d.conn.verdict = verdict;
  d.conn.outcome = Outcome::PeerClosed;
  d.conn.flags = CW_F_OWNER_KNOWN;
  d.conn.netns = kNetns;
  d.conn.pid = 4321;
  d.conn.uid = uid;
  d.conn.gid = uid;
  d.conn.cgroup_id = 5001;
  d.conn.sock_id = 0xffff888100000000ull + port;
  d.conn.established_ns = 1'000'000'000'000ull;
  d.conn.decided_ns = d.conn.established_ns + 200'000'000;
  d.conn.src = Endpoint{v4(198, 18, 0, 2), port};
  d.conn.dst = Endpoint{v4(198, 18, 0, 1), 32000};
  std::memcpy(d.conn.comm.data(), "envoy", 6);
  return d;
}

struct ReporterFixture {
  Metrics metrics;
  Reporter reporter{&metrics};
  ReporterFixture() {
    // Warnings (the first gap) are not written: the benchmark's output is
    // its JSON on stdout. Fields are built as they are at info level.
    static bool once = [] {
      logging::init(logging::Format::Json, spdlog::level::err);
      return true;
    }();
    (void)once;
    reporter.addTarget(kNetns, PodLabels{"gateways", "envoy-gateway-7d9f8b6c5-x2x4q", "envoy-gateway"});
  }
};

// What Agent::flushDecisions does for a captured (or proxy, local) verdict.
void BM_ReportCapturedVerdict(benchmark::State& state) {
  ReporterFixture f;
  uint16_t port = 10000;
  for (auto _ : state) {
    Decision d = decision(Verdict::Captured, 1000, port++);
    f.metrics.observeVerdictLatency(0.0002);
    f.reporter.report(d);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_ReportCapturedVerdict);

// ... for a bypassed verdict (one gap, repeated: logged at debug, folded).
void BM_ReportBypassedVerdict(benchmark::State& state) {
  ReporterFixture f;
  Why why{"owner-uid", "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
          "the container runs as UID 1337, the proxy's UID"};
  uint16_t port = 10000;
  for (auto _ : state) {
    Decision d = decision(Verdict::Bypassed, 1337, port++);
    f.metrics.observeVerdictLatency(0.2002);
    f.reporter.report(d, why);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_ReportBypassedVerdict);

std::string readFixture(const char* name) {
  std::ifstream in(std::string(CW_FIXTURES) + "/istio/" + name);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The rules explainer's core for one bypassed connection: Istio's default
// rules (tests/fixtures/istio/basic.iptables), evaluated for the app's SYN.
void explainBench(benchmark::State& state, uint32_t uid) {
  auto parsed = rules::parseIptables(readFixture("basic.iptables"), rules::Family::Ipv4);
  if (!parsed.ok()) {
    state.SkipWithError("cannot parse basic.iptables");
    return;
  }
  const rules::Evaluator evaluator(*parsed.rules);
  const rules::Policy policy = rules::summarise(*parsed.rules);
  rules::Connection conn;
  conn.uid = uid;
  conn.gid = uid;
  conn.src = Endpoint{v4(198, 18, 0, 2), 40000};
  conn.dst = Endpoint{v4(198, 18, 0, 1), 32000};
  for (auto _ : state) {
    auto e = rules::explain(evaluator, policy, conn, 15001);
    benchmark::DoNotOptimize(e);
    conn.src.port = static_cast<uint16_t>(conn.src.port + 1);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}

void BM_RulesExplainOwnerUid(benchmark::State& state) { explainBench(state, 1337); }
BENCHMARK(BM_RulesExplainOwnerUid);

void BM_RulesExplainCaptured(benchmark::State& state) { explainBench(state, 1000); }
BENCHMARK(BM_RulesExplainCaptured);

// What the agent asks per bypassed verdict (CaptureExplainer::explain): a
// storm of the proxy's UID to one upstream, Istio's default rules read once
// (given as text: no netns), so every answer after the first is memoised.
// Argument 1: the rules' minimum re-read interval has passed (as in a storm
// longer than it), so each answer first asks whether the last read explains
// the connection; 0: it has not.
void BM_ExplainRepeatedBypass(benchmark::State& state) {
  const uint64_t min_interval_ns = state.range(0) != 0 ? 1 : UINT64_MAX / 2;
  const std::string rules = readFixture("basic.iptables");
  CaptureExplainer ex(
      [&rules](const std::string&) {
        RulesText t;
        t.iptables_nft_v4 = rules;
        return t;
      },
      [](const std::string&, const Address&) {
        return Route{"eth0", std::nullopt};
      },
      15001, min_interval_ns);
  ex.addTarget(kNetns, "/run/netns/bench", 1);
  Decision d = decision(Verdict::Bypassed, 1337, 40000);
  if (ex.explain(d.conn, 2).reason != "owner-uid") {
    state.SkipWithError("the rules did not explain the bypass by the proxy's UID");
    return;
  }
  size_t reasons = 0;
  for (auto _ : state) {
    reasons += ex.explain(d.conn, 2).reason.size();
    d.conn.src.port = static_cast<uint16_t>(d.conn.src.port + 1);
  }
  benchmark::DoNotOptimize(reasons);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_ExplainRepeatedBypass)->Arg(0)->Arg(1);

}  // namespace
}  // namespace cw
