// Faults the agent meets on a real node, each handled without a crash or a
// wrong verdict: a watched pod vanishes mid-run (its network namespace, its
// processes and its cgroups all go), and SIGTERM arrives in the middle of a
// connection storm. (A taken metrics port, a missing kernel feature and bad
// flags are in agent_bpf_test.cpp; rules changing mid-run in
// explain_bpf_test.cpp; clock handling in tests/unit/correlator_test.cpp.)
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <set>
#include <thread>

#include "bpf_test_util.h"
#include "lab/lab_pod.h"
#include "targets.h"

namespace cw {
namespace {

using nlohmann::json;
using testutil::AgentProcess;
using namespace std::chrono_literals;

auto msgIs(const std::string& m) {
  return [m](const json& j) { return j.value("msg", "") == m; };
}

std::vector<json> select(const std::vector<json>& lines,
                         const std::function<bool(const json&)>& pred) {
  std::vector<json> out;
  std::copy_if(lines.begin(), lines.end(), std::back_inserter(out), pred);
  return out;
}

std::unique_ptr<lab::LabPod> makePod(const std::string& prefix) {
  lab::PodConfig config;
  config.prefix = prefix;
  config.cgroup_prefix = prefix;
  auto pod = lab::LabPod::create(config);
  pod->startUpstream();
  pod->startSidecar();
  return pod;
}

std::map<std::string, double> scrape(uint16_t port) {
  return testutil::parseMetrics(testutil::httpGet(port, "/metrics"));
}

// Two watched pods; one vanishes entirely (netns deleted, processes killed,
// cgroups removed, the sidecar's among them). The agent says so, stops
// watching it, drops its series, and goes on reporting the other pod.
TEST(Faults, AWatchedPodVanishingMidRunIsDroppedAndTheRestGoesOn) {
  ASSERT_TRUE(testutil::isRoot()) << "privileged test: run as root";
  auto doomed = makePod("cw-test-fault-a");
  auto survivor = makePod("cw-test-fault-b");
  const std::string doomed_name = targetNameFromPath(doomed->podNetnsPath());
  const std::string survivor_name = targetNameFromPath(survivor->podNetnsPath());
  const uint16_t port = testutil::freePort();
  AgentProcess agent({"run", "--netns", doomed->podNetnsPath(), "--netns",
                      survivor->podNetnsPath(), "--proxy-cgroup", doomed->sidecarCgroup(),
                      "--proxy-cgroup", survivor->sidecarCgroup(), "--log-format", "json",
                      "--log-level", "debug", "--rules-interval", "1", "--metrics-address",
                      "127.0.0.1:" + std::to_string(port)});
  ASSERT_TRUE(agent.waitForLine(msgIs("ready"), 20s)) << agent.stderrText();

  auto gap = doomed->runClient(1337, 1337, doomed->appCgroup(), doomed->upstreamV4(), 3);
  EXPECT_EQ(gap.reset, 3);
  auto bypassedIn = [](const std::string& pod) {
    return [pod](const json& j) {
      return j.value("msg", "") == "verdict" && j.value("verdict", "") == "bypassed" &&
             j.value("pod", "") == pod;
    };
  };
  EXPECT_EQ(agent.waitForCount(bypassedIn(doomed_name), 3, 10s), 3u) << agent.stdoutText();

  doomed->teardown();
  auto gone = [&](const json& j) {
    return j.value("msg", "") == "watched network namespace is gone: stop watching" &&
           j.value("pod", "") == doomed_name;
  };
  ASSERT_TRUE(agent.waitForLine(gone, 10s)) << agent.stdoutText();

  // A scrape reads one metric family after another while the agent goes on:
  // wait for the last thing the agent does for a vanished pod (the counter),
  // then read a scrape that started after it.
  std::map<std::string, double> m;
  for (int i = 0; i < 30; ++i) {
    m = scrape(port);
    if (testutil::metricSum(m, "capturewatch_watched_targets") == 1 &&
        testutil::metricSum(m, "capturewatch_targets_gone_total") == 1) {
      break;
    }
    std::this_thread::sleep_for(100ms);
  }
  m = scrape(port);
  EXPECT_EQ(testutil::metricSum(m, "capturewatch_watched_targets"), 1);
  EXPECT_EQ(testutil::metricSum(m, "capturewatch_targets_gone_total"), 1);
  EXPECT_EQ(testutil::metricSum(m, "capturewatch_connections_total",
                                {"pod=\"" + doomed_name + "\""}),
            0)
      << "the vanished pod's series are removed";

  // The other pod is still watched, explained and counted, through several
  // rules intervals after the loss.
  std::this_thread::sleep_for(2500ms);
  auto ok = survivor->runClient(1000, 1000, survivor->appCgroup(), survivor->upstreamV4(), 3);
  auto gap2 = survivor->runClient(1337, 1337, survivor->appCgroup(), survivor->upstreamV4(), 3);
  EXPECT_EQ(ok.ok, 3);
  EXPECT_EQ(gap2.reset, 3);
  EXPECT_EQ(agent.waitForCount(bypassedIn(survivor_name), 3, 10s), 3u) << agent.stdoutText();
  for (const auto& j : select(agent.lines(), bypassedIn(survivor_name))) {
    EXPECT_EQ(j.value("reason", ""), "owner-uid") << j.dump();
  }
  m = scrape(port);
  EXPECT_EQ(testutil::metricSum(m, "capturewatch_connections_total",
                                {"pod=\"" + survivor_name + "\"", "verdict=\"captured\""}),
            3);
  EXPECT_EQ(agent.stop(), 0) << agent.stderrText();
}

// SIGTERM while connections are being made: the agent reads one more grace
// window, so every connection completed before the signal has its verdict,
// logs a final summary, detaches, and exits 0.
TEST(Faults, SigtermDuringAStormDetachesCleanlyWithAFinalSummary) {
  ASSERT_TRUE(testutil::isRoot()) << "privileged test: run as root";
  auto pod = makePod("cw-test-fault-t");
  AgentProcess agent({"run", "--netns", pod->podNetnsPath(), "--proxy-cgroup",
                      pod->sidecarCgroup(), "--log-format", "json", "--log-level", "debug"});
  ASSERT_TRUE(agent.waitForLine(msgIs("ready"), 20s)) << agent.stderrText();

  std::mutex mu;
  std::vector<uint16_t> completed;  // ports of connections whose batch finished
  std::atomic<bool> storming{true};
  std::atomic<int> batches{0};
  std::thread storm([&] {
    for (int i = 0; storming.load() && i < 100; ++i) {
      auto r = pod->runClient(1000, 1000, pod->appCgroup(), pod->upstreamV4(), 10);
      std::lock_guard lock(mu);
      completed.insert(completed.end(), r.local_ports.begin(), r.local_ports.end());
      ++batches;
    }
  });
  while (batches.load() < 3) std::this_thread::sleep_for(10ms);
  std::vector<uint16_t> before;
  {
    std::lock_guard lock(mu);
    before = completed;
    ASSERT_EQ(kill(agent.pid(), SIGTERM), 0);
  }
  const int rc = agent.wait(10s);
  storming = false;
  storm.join();
  EXPECT_EQ(rc, 0) << agent.stderrText();

  const auto lines = agent.lines();
  std::set<std::string> captured;
  for (const auto& j : lines) {
    if (j.value("msg", "") == "verdict" && j.value("verdict", "") == "captured") {
      captured.insert(j.value("src", ""));
    }
  }
  for (uint16_t p : before) {
    EXPECT_TRUE(captured.contains(Endpoint{pod->podAddressV4(), p}.str()))
        << "connection from port " << p << " completed before SIGTERM has no verdict";
  }
  EXPECT_TRUE(select(lines, [](const json& j) { return j.value("verdict", "") == "bypassed"; })
                  .empty())
      << "nothing of the storm is a gap";
  const auto summaries = select(lines, msgIs("summary"));
  ASSERT_FALSE(summaries.empty()) << "no final summary";
  EXPECT_GE(summaries.back().value("captured", 0u), before.size());
  EXPECT_FALSE(select(lines, msgIs("stopped")).empty());
  EXPECT_EQ(testutil::agentProgramsLoaded(), 0) << "detached";
}

}  // namespace
}  // namespace cw
