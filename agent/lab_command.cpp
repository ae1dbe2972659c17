// `capturewatch lab`: a simulated Envoy gateway pod with an Istio sidecar on
// this machine, its apps calling an upstream that enforces strict mTLS, and
// the agent watching it live. Everything is removed at the end, also on
// Ctrl-C or failure (LabPod's destructor).
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <sstream>
#include <thread>

#include "agent.h"
#include "explain_wiring.h"
#include "commands.h"
#include "lab/lab_pod.h"
#include "lab/system.h"
#include "logging.h"
#include "targets.h"

namespace cw {
namespace {

constexpr uint32_t kAppUid = 1000;

struct AppCall {
  const char* who;  // what the call stands for
  uint32_t uid;
  Endpoint dst;
};

struct AppTally {
  int ok = 0, reset = 0, refused = 0, other = 0;
};

std::string percent(double rate) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", rate * 100.0);
  return buf;
}

void printReport(const Reporter& reporter, const std::vector<std::pair<std::string, AppTally>>& apps,
                 uint32_t seconds) {
  std::ostringstream out;
  out << "\n== capturewatch lab: " << seconds << " s of traffic ==\n\n";
  out << "What the apps saw:\n";
  for (const auto& [who, t] : apps) {
    out << "  " << who << ": " << t.ok << " ok";
    if (t.reset) out << ", " << t.reset << " reset (upstream connect error ... connection termination)";
    if (t.refused) out << ", " << t.refused << " refused";
    if (t.other) out << ", " << t.other << " other errors";
    out << "\n";
  }
  out << "\nWhat capturewatch saw:\n";
  for (const auto& [pod, tally] : reporter.tallies()) {
    out << "  pod " << pod.namespace_ << "/" << pod.pod << "\n";
    for (Verdict v : kAllVerdicts) {
      char line[64];
      std::snprintf(line, sizeof line, "    %-9s %6llu\n", std::string(toString(v)).c_str(),
                    static_cast<unsigned long long>(tally.count(v)));
      out << line;
    }
    double rate = tally.captureRate();
    out << "    capture rate: " << (rate < 0 ? std::string("n/a") : percent(rate))
        << " of app connections to upstreams went through the sidecar\n";
    out << "    bypassed and rejected by the peer (strict mTLS): " << tally.rejected << "\n";
  }
  auto gaps = reporter.gaps();
  out << "\nCapture gaps (plaintext on the wire):\n";
  if (gaps.empty()) out << "  none\n";
  for (const auto& g : gaps) {
    out << "  " << g.pod.namespace_ << "/" << g.pod.pod << " -> " << g.dst << "  reason=" << g.why.reason << "  connections=" << g.count
        << "  outcomes:";
    for (const auto& [outcome, n] : g.outcomes) out << " " << outcome << "=" << n;
    out << "\n";
    if (!g.why.rule.empty()) out << "    deciding rule: " << g.why.rule << "\n";
    if (!g.why.remedy.empty()) out << "    fix: " << g.why.remedy << "\n";
  }
  std::cout << out.str() << std::flush;
}

}  // namespace

int labCommand(const LabOptions& options) {
  if (geteuid() != 0) {
    throw std::runtime_error(
        "the lab needs root: it creates network namespaces, iptables rules and cgroups, and "
        "loads BPF");
  }
  logging::init(options.common.log_format, options.common.log_level);
  const auto& stop = installStopSignals();

  // The pod and its servers come first: they fork, and the agent's threads
  // do not exist yet.
  lab::PodConfig config;
  auto pod = lab::LabPod::create(config);
  pod->startUpstream();
  pod->startSidecar();
  logging::info("lab pod ready",
                {{"pod_netns", pod->podNetnsPath()},
                 {"rules", "Istio default sidecar (cni/pkg/plugin/testdata/basic.txt.golden)"},
                 {"sidecar_cgroup", pod->sidecarCgroup()},
                 {"app_cgroup", pod->appCgroup()},
                 {"upstream", pod->upstreamV4().str() + " " + pod->upstreamV6().str() +
                                  " (strict mTLS: resets plaintext)"}});

  AgentOptions agent_options = agentOptionsFrom(options.common, 3600);
  agent_options.probe.redirect_port = config.redirect_port;
  Agent agent(agent_options);
  ExplainSettings explain_settings;
  explain_settings.redirect_port = config.redirect_port;
  auto explainer = attachExplainer(agent, explain_settings);
  agent.addProxyCgroup(lab::cgroupId(pod->sidecarCgroup()));
  Target target;
  target.netns = netnsInode(pod->podNetnsPath());
  target.netns_path = pod->podNetnsPath();
  target.name = "envoy-gateway";
  target.namespace_ = "lab";
  agent.addTarget(target, PodLabels{target.namespace_, target.name, "envoy-gateway"});

  std::vector<AppCall> calls = {
      {"gateway app (uid 1000) -> upstream IPv4", kAppUid, pod->upstreamV4()},
      {"gateway app (uid 1000) -> upstream IPv6", kAppUid, pod->upstreamV6()},
      {"gateway app (uid 1337) -> upstream IPv4", config.proxy_uid, pod->upstreamV4()},
      {"gateway app (uid 1000) -> admin on loopback", kAppUid, pod->adminV4()},
  };
  if (options.all_captured) std::erase_if(calls, [&](const AppCall& c) { return c.uid == config.proxy_uid; });
  std::vector<std::pair<std::string, AppTally>> tallies;
  for (const auto& c : calls) tallies.emplace_back(c.who, AppTally{});

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(options.duration_s);
  std::atomic<bool> traffic_done{false};
  std::string traffic_error;
  std::thread traffic([&] {
    try {
      while (!stop.load() && std::chrono::steady_clock::now() < deadline) {
        for (size_t i = 0; i < calls.size() && !stop.load(); ++i) {
          const auto& c = calls[i];
          auto r = pod->runClient(c.uid, c.uid, pod->appCgroup(), c.dst, 1);
          auto& t = tallies[i].second;
          t.ok += r.ok;
          t.reset += r.reset;
          t.refused += r.refused;
          t.other += r.other;
          const char* result = r.ok ? "200 OK" : r.reset ? "connection reset" : "failed";
          logging::info("app call", {{"app", c.who}, {"url", "http://" + c.dst.str() + "/"},
                                     {"result", result}});
        }
        auto pause = std::chrono::steady_clock::now() + std::chrono::milliseconds(options.interval_ms);
        while (!stop.load() && std::chrono::steady_clock::now() < std::min(pause, deadline)) {
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
      }
    } catch (const std::exception& e) {
      traffic_error = e.what();
    }
    traffic_done = true;
  });

  // The agent runs here until the traffic ends (deadline, Ctrl-C or error).
  agent.run(traffic_done);
  traffic.join();
  if (!traffic_error.empty()) throw std::runtime_error("lab traffic failed: " + traffic_error);

  printReport(agent.reporter(), tallies, options.duration_s);
  pod.reset();  // teardown before saying so
  logging::info("lab removed", {{"pod_netns", target.netns_path}});
  return 0;
}

}  // namespace cw
