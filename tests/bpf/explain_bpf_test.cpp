// The agent names the reason of each gap from the pod's live rules: Istio's
// own rule sets loaded into a lab pod, real connections, the real binary.
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "bpf_test_util.h"
#include "lab/lab_pod.h"
#include "lab/system.h"

namespace cw {
namespace {

using nlohmann::json;
using testutil::AgentProcess;

std::string fixture(const std::string& name) {
  std::ifstream in(std::string(CW_FIXTURES) + "/istio/" + name);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_FALSE(ss.str().empty()) << name;
  return ss.str();
}

auto bypassedLine = [](const json& j) {
  return j.value("msg", "") == "verdict" && j.value("verdict", "") == "bypassed";
};

struct Scenario {
  std::string rules_v4;
  uint16_t upstream_port = 32000;
  uint32_t uid = 1000;
  std::string reason;
  std::string rule;  // the deciding rule, as the rules say it ("" for none)
};

class ExplainTest : public ::testing::TestWithParam<Scenario> {
 protected:
  void SetUp() override { ASSERT_TRUE(testutil::isRoot()) << "privileged test: run as root"; }
};

std::unique_ptr<lab::LabPod> makePod(const std::string& rules_v4, uint16_t upstream_port) {
  lab::PodConfig config;
  config.prefix = "cw-test-ex";
  config.cgroup_prefix = "capturewatch-test-ex";
  config.rules_v4 = rules_v4;
  if (rules_v4.empty()) config.rules_v6 = "";  // no Istio rules in any family
  config.upstream_port = upstream_port;
  auto pod = lab::LabPod::create(config);
  pod->startUpstream();
  pod->startSidecar();
  return pod;
}

std::unique_ptr<AgentProcess> startAgent(const lab::LabPod& pod, uint16_t port,
                                         std::vector<std::string> extra = {}) {
  std::vector<std::string> args{"run", "--netns", pod.podNetnsPath(), "--proxy-cgroup",
                                pod.sidecarCgroup(), "--log-format", "json", "--log-level",
                                "debug", "--metrics-address", "127.0.0.1:" + std::to_string(port)};
  args.insert(args.end(), extra.begin(), extra.end());
  auto agent = std::make_unique<AgentProcess>(args);
  EXPECT_TRUE(agent->waitForLine([](const json& j) { return j.value("msg", "") == "ready"; },
                                 std::chrono::seconds(20)))
      << agent->stderrText();
  return agent;
}

TEST_P(ExplainTest, GapCarriesTheReasonTheRulesGive) {
  const Scenario& s = GetParam();
  auto pod = makePod(s.rules_v4, s.upstream_port);
  const uint16_t port = testutil::freePort();
  auto agent = startAgent(*pod, port);

  constexpr int kN = 4;
  auto r = pod->runClient(s.uid, s.uid, pod->appCgroup(), pod->upstreamV4(), kN);
  ASSERT_EQ(r.reset, kN) << "plaintext reached the strict upstream: it must reset it";
  ASSERT_EQ(agent->waitForCount(bypassedLine, kN, std::chrono::seconds(10)), size_t{kN});

  for (const auto& j : agent->lines()) {
    if (!bypassedLine(j)) continue;
    EXPECT_EQ(j["reason"], s.reason) << j.dump();
    EXPECT_EQ(j.value("rule", ""), s.rule) << j.dump();
    EXPECT_FALSE(j.value("remedy", "").empty()) << j.dump();
  }
  auto metrics = testutil::parseMetrics(testutil::httpGet(port, "/metrics"));
  EXPECT_EQ(testutil::metricSum(metrics, "capturewatch_connections_total",
                                {"verdict=\"bypassed\"", "reason=\"" + s.reason + "\""}),
            kN);
  EXPECT_EQ(testutil::metricSum(metrics, "capturewatch_bypass_rejected_total"), kN);
  EXPECT_GE(testutil::metricSum(metrics, "capturewatch_rules_reads_total", {"result=\"ok\""}), 1);
  EXPECT_EQ(agent->stop(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    IstioRuleSets, ExplainTest,
    ::testing::Values(
        // The classic: the app runs as the proxy's UID.
        Scenario{fixture("basic.iptables"), 32000, 1337, "owner-uid",
                 "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"},
        // traffic.sidecar.istio.io/excludeOutboundPorts=5555,6666
        Scenario{fixture("include-exclude-ports.iptables"), 5555, 1000, "excluded-port",
                 "-A ISTIO_OUTPUT -p tcp -m tcp --dport 5555 -j RETURN"},
        // excludeOutboundIPRanges covering the upstream
        Scenario{fixture("exclude-test-range.iptables"), 32000, 1000, "excluded-cidr",
                 "-A ISTIO_OUTPUT -d 198.18.0.0/24 -j RETURN"},
        // includeOutboundIPRanges=127.0.0.0/8: the upstream is not included
        Scenario{fixture("include-exclude-ip.iptables"), 32000, 1000, "not-included", ""},
        // No Istio rules at all (injection without init, CNI race)
        Scenario{"", 32000, 1000, "no-capture-rules", ""}));

TEST(ExplainPredates, ConnectionOpenedBeforeTheRulesWereInstalled) {
  ASSERT_TRUE(testutil::isRoot());
  auto pod = makePod("", 32000);  // the pod starts without its rules (CNI race)
  const uint16_t port = testutil::freePort();
  // A long grace window: the verdict comes after the rules are installed.
  auto agent = startAgent(*pod, port, {"--grace-ms", "2500", "--rules-interval", "3600"});
  ASSERT_TRUE(agent->waitForLine(
      [](const json& j) { return j.value("msg", "") == "no capture rules"; },
      std::chrono::seconds(5)));

  // The app's connection is still open when the rules come: a connection
  // that closed before them is decided at its close, when the pod had no
  // rules (no-capture-rules). It sends nothing (the upstream resets
  // plaintext) and is closed 1.5 s later, long after the rules are
  // installed (iptables-restore takes tens of milliseconds) and long before
  // the grace window ends.
  const lab::SpawnOptions options = testutil::appSpawnOptions(*pod);
  const Endpoint upstream = pod->upstreamV4();
  lab::ChildProcess client = lab::spawnInPod(options, [&upstream](int fd) {
    sockaddr_storage ss{};
    const socklen_t len = lab::toSockaddr(upstream, ss);
    const int s = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || ::connect(s, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      throw std::runtime_error(std::string("connect: ") + std::strerror(errno));
    }
    lab::writeFrame(fd, lab::kFrameData, "connected");
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    ::close(s);
  });
  const lab::Frame f = lab::readFrame(client.reportFd(),
                                      std::chrono::steady_clock::now() + std::chrono::seconds(10));
  ASSERT_EQ(f.type, lab::kFrameData) << "client: " << f.payload;
  lab::runChecked({"nsenter", "--net=" + pod->podNetnsPath(), "iptables-restore"},
                  "installing Istio's rules late", fixture("basic.iptables"));
  if (!client.wait(std::chrono::seconds(5))) client.kill();

  ASSERT_EQ(agent->waitForCount(bypassedLine, 1, std::chrono::seconds(10)), 1u);
  for (const auto& j : agent->lines()) {
    if (bypassedLine(j)) {
      EXPECT_EQ(j["reason"], "predates-rules") << j.dump();
      EXPECT_EQ(j["uid"], 1000);
      // Decided at its close (about 1.5 s after it was established), not at
      // the end of its 2.5 s grace window.
      EXPECT_LT(j["decided_after_ms"].get<double>(), 2400) << j.dump();
      EXPECT_GE(j["decided_after_ms"].get<double>(), 1400) << j.dump();
    }
  }
  // A connection made now is captured: the rules really are in force.
  auto after = pod->runClient(1000, 1000, pod->appCgroup(), pod->upstreamV4(), 2);
  EXPECT_EQ(after.ok, 2);
  auto captured = [](const json& j) {
    return j.value("msg", "") == "verdict" && j.value("verdict", "") == "captured";
  };
  EXPECT_EQ(agent->waitForCount(captured, 2, std::chrono::seconds(10)), 2u);
  EXPECT_EQ(agent->stop(), 0);
}

TEST(ExplainCommand, PrintsThePolicyAndTracesConnections) {
  ASSERT_TRUE(testutil::isRoot());
  auto pod = makePod(fixture("basic.iptables"), 32000);
  const std::string bin = testutil::agentBinary();
  const std::string pid = std::to_string(pod->sidecarPid());

  auto policy = lab::runCommand({bin, "explain", "--pid", pid});
  EXPECT_EQ(policy.exit_status, 0) << policy.err;
  EXPECT_NE(policy.out.find("exempt uids: 1337"), std::string::npos) << policy.out;
  EXPECT_NE(policy.out.find("redirected to port 15001"), std::string::npos) << policy.out;

  auto gap = lab::runCommand({bin, "explain", "--netns", pod->podNetnsPath(), "--dst",
                              pod->upstreamV4().str(), "--uid", "1337", "--format", "json"});
  EXPECT_EQ(gap.exit_status, 1) << gap.err;
  auto j = json::parse(gap.out);
  EXPECT_EQ(j["connection"]["captured"], false);
  EXPECT_EQ(j["connection"]["reason"], "owner-uid");
  EXPECT_EQ(j["connection"]["rule"], "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN");
  EXPECT_EQ(j["policy"]["ipv4"]["proxy_uid"], 1337);

  auto ok = lab::runCommand({bin, "explain", "--netns", pod->podNetnsPath(), "--dst",
                             pod->upstreamV4().str(), "--uid", "1000"});
  EXPECT_EQ(ok.exit_status, 0) << ok.out << ok.err;
  EXPECT_NE(ok.out.find("redirect to :15001"), std::string::npos) << ok.out;

  auto gone = lab::runCommand({bin, "explain", "--pid", "999999999"});
  EXPECT_EQ(gone.exit_status, 2);
  EXPECT_NE(gone.err.find("cannot open"), std::string::npos) << gone.err;
}

}  // namespace
}  // namespace cw
