#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>

#include "agent.h"
#include "capabilities.h"
#include "explain_wiring.h"
#include "k8s/kubeconfig.h"
#include "k8s/label_selector.h"
#include "kube_targets.h"
#include "commands.h"
#include "logging.h"
#include "targets.h"

namespace cw {
namespace {

std::atomic<bool> g_stop{false};

void onStopSignal(int) { g_stop.store(true); }

}  // namespace

const std::atomic<bool>& installStopSignals() {
  struct sigaction sa {};
  sa.sa_handler = onStopSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: interrupt the ring-buffer poll
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return g_stop;
}

AgentOptions agentOptionsFrom(const CommonOptions& common, uint32_t summary_interval_s) {
  AgentOptions a;
  a.probe.redirect_port = common.redirect_port;
  a.probe.ring_buffer_bytes = common.ring_buffer_kb * 1024u;
  a.probe.max_tracked_sockets = common.max_tracked_sockets;
  a.grace_ns = static_cast<uint64_t>(common.grace_ms) * 1'000'000ull;
  a.summary_interval = std::chrono::milliseconds(summary_interval_s * 1000ull);
  a.metrics_address = common.metrics_address;
  return a;
}

int runCommand(const RunOptions& options) {
  // Every capability these options need, named if missing, before anything
  // else can fail on an EPERM deep inside libbpf, setns or nsenter.
  requireCapabilities(runCapabilityRequirements(options));
  // Resolve every path before touching the kernel: a bad flag fails fast
  // and leaves nothing behind.
  std::vector<Target> targets;
  for (const auto& path : options.netns_paths) {
    Target t;
    t.id = static_cast<uint32_t>(targets.size());
    t.netns = netnsInode(path);
    t.netns_path = path;
    t.name = targetNameFromPath(path);
    targets.push_back(std::move(t));
  }
  std::vector<uint64_t> proxy_cgroups;
  for (const auto& path : options.proxy_cgroups) proxy_cgroups.push_back(proxyCgroupId(path));
  KubeOptions kube;
  if (options.kubernetes) {
    kube.cluster = options.kubeconfig.empty() ? k8s::inClusterConfig()
                                              : k8s::loadKubeconfig(options.kubeconfig);
    kube.node_name = options.node_name;
    kube.namespace_ = options.namespace_;
    kube.selector = options.pod_selector;
    k8s::LabelSelector::parse(kube.selector);  // a bad selector fails here, before BPF
    kube.sidecar_container = options.sidecar_container;
    kube.host_proc = options.host_proc;
  }

  logging::init(options.common.log_format, options.common.log_level);
  const auto& stop = installStopSignals();

  AgentOptions agent_options = agentOptionsFrom(options.common, options.summary_interval_s);
  if (options.kubernetes) agent_options.proc_root = options.host_proc;
  Agent agent(agent_options);
  ExplainSettings explain_settings;
  explain_settings.redirect_port = options.common.redirect_port;
  explain_settings.rules_interval_ns = uint64_t{options.rules_interval_s} * 1'000'000'000ull;
  auto explainer = attachExplainer(agent, explain_settings);
  for (uint64_t id : proxy_cgroups) agent.addProxyCgroup(id);
  // Not ready (/readyz) until every namespace given is watched and its
  // startup scan done: a load started on "ready" is then seen whole.
  agent.setTargetsSynced(false);
  for (const auto& t : targets) agent.addTarget(t, PodLabels{t.namespace_, t.name, ""});
  agent.setTargetsSynced(true);
  // A namespace given by path can vanish (its pod or process ended, `ip netns
  // del`): stop watching it rather than keep a stale entry, once a second.
  if (!targets.empty()) {
    agent.addPeriodic([&agent, remaining = targets]() mutable {
      std::erase_if(remaining, [&](const Target& t) {
        struct stat st {};
        if (::stat(t.netns_path.c_str(), &st) == 0 && st.st_ino == t.netns) return false;
        logging::warn("watched network namespace is gone: stop watching",
                      {{"pod", t.name}, {"netns", t.netns}, {"netns_path", t.netns_path}});
        agent.removeTarget(t.netns);
        agent.metrics().addTargetGone();
        return true;
      });
    });
  }
  std::unique_ptr<KubeTargets> kube_targets;
  if (options.kubernetes) {
    kube_targets = std::make_unique<KubeTargets>(agent, kube);
    kube_targets->start();
  }
  logging::info("ready", {{"targets", targets.size()},
                          {"proxy_cgroups", proxy_cgroups.size()},
                          {"grace_ms", options.common.grace_ms},
                          {"metrics_address", options.common.metrics_address}});

  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (options.duration_s > 0) {
    deadline = std::chrono::steady_clock::now() + std::chrono::seconds(options.duration_s);
  }
  agent.run(stop, deadline);
  logging::info("stopped");
  return 0;
}

}  // namespace cw
