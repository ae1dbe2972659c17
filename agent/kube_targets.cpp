#include "kube_targets.h"

#include "logging.h"

namespace cw {
namespace {

PodLabels labelsOf(const k8s::Pod& pod) { return PodLabels{pod.namespace_, pod.name, pod.workload}; }

logging::Fields podFields(const k8s::Pod& pod) {
  return {{"namespace", pod.namespace_}, {"pod", pod.name}, {"workload", pod.workload}};
}

}  // namespace

KubeTargets::KubeTargets(Agent& agent, KubeOptions options)
    : agent_(agent),
      options_(std::move(options)),
      resolver_(k8s::NodeResolverOptions{options_.host_proc, "/proc/self/mountinfo",
                                         options_.sidecar_container}) {
  k8s::PodWatcherOptions wo;
  wo.cluster = options_.cluster;
  wo.node_name = options_.node_name;
  wo.namespace_ = options_.namespace_;
  wo.selector = k8s::LabelSelector::parse(options_.selector);

  // The watcher's callbacks run on its thread: hand everything to the agent's.
  k8s::PodWatcherCallbacks cb;
  cb.upsert = [this](const k8s::Pod& pod) { agent_.post([this, pod] { upsert(pod); }); };
  cb.remove = [this](const std::string& uid) { agent_.post([this, uid] { remove(uid); }); };
  cb.synced = [this] {
    agent_.post([this] {
      agent_.setTargetsSynced(true);
      agent_.metrics().setKubernetesWatchUp(true);
    });
  };
  cb.state_changed = [this](const k8s::WatchStatus& status) {
    agent_.post([this, status] {
      const bool up = status.state == k8s::ConnectionState::Connected;
      agent_.metrics().setKubernetesWatchUp(up);
      logging::Fields f{{"state", std::string(k8s::connectionStateName(status.state))}};
      if (!status.message.empty()) f["message"] = status.message;
      if (status.state == k8s::ConnectionState::Error) {
        agent_.metrics().addKubernetesError("api");
        logging::error("kubernetes watch", f);
      } else if (status.state == k8s::ConnectionState::Disconnected) {
        agent_.metrics().addKubernetesWatchRestart();
        logging::warn("kubernetes watch", f);
      } else {
        logging::info("kubernetes watch", f);
      }
    });
  };
  watcher_ = std::make_unique<k8s::PodWatcher>(std::move(wo), std::move(cb));
  agent_.metrics().enableKubernetes();
  agent_.setTargetsSynced(false);
  agent_.addPeriodic([this] { retryPending(); });
}

KubeTargets::~KubeTargets() { watcher_->stop(); }

void KubeTargets::start() {
  logging::info("kubernetes discovery", {{"server", options_.cluster.server},
                                         {"node", options_.node_name},
                                         {"selector", options_.selector},
                                         {"namespace", options_.namespace_},
                                         {"sidecar_container", options_.sidecar_container}});
  watcher_->start();
}

void KubeTargets::upsert(const k8s::Pod& pod) {
  if (!pod.running()) {
    // Pending: not yet; Succeeded/Failed: gone as far as capture goes.
    if (pod.phase == "Pending") {
      pending_[pod.uid] = pod;
    } else {
      remove(pod.uid);
    }
    return;
  }
  k8s::ResolveResult r = resolver_.resolve(pod);
  if (!r.ok()) {
    pending_[pod.uid] = pod;
    if (last_problem_[pod.uid] != r.problem) {
      last_problem_[pod.uid] = r.problem;
      auto f = podFields(pod);
      f["problem"] = r.problem;
      agent_.metrics().addKubernetesError("resolve");
      logging::warn("pod not resolvable yet", f);
    }
    return;
  }
  pending_.erase(pod.uid);
  last_problem_.erase(pod.uid);
  const k8s::PodTarget& t = *r.target;
  const PodLabels labels = labelsOf(pod);

  auto it = watched_.find(pod.uid);
  if (it != watched_.end() && it->second.netns == t.netns_inode &&
      it->second.netns_path == t.netns_path && it->second.proxy_cgroup_id == t.proxy_cgroup_id) {
    return;  // nothing changed for capture
  }
  if (it != watched_.end()) unwatch(pod.uid);  // restarted: new netns or containers

  if (!t.has_sidecar) {
    agent_.metrics().setPodWithoutSidecar(labels, true);
    if (without_sidecar_.insert(pod.uid).second) {
      auto f = podFields(pod);
      f["sidecar_container"] = options_.sidecar_container;
      logging::warn("selected pod has no sidecar: nothing can capture its traffic", f);
    }
  } else if (without_sidecar_.erase(pod.uid) > 0) {
    agent_.metrics().setPodWithoutSidecar(labels, false);
  }

  Target target;
  target.id = next_id_++;
  target.netns = t.netns_inode;
  target.netns_path = t.netns_path;
  target.name = pod.name;
  target.namespace_ = pod.namespace_;
  if (t.proxy_cgroup_id != 0) agent_.addProxyCgroup(t.proxy_cgroup_id);
  agent_.addTarget(target, labels);
  watched_[pod.uid] = Watched{t.netns_inode, t.netns_path, t.proxy_cgroup_id, labels};
}

void KubeTargets::unwatch(const std::string& uid) {
  auto it = watched_.find(uid);
  if (it == watched_.end()) return;
  if (it->second.proxy_cgroup_id != 0) agent_.removeProxyCgroup(it->second.proxy_cgroup_id);
  agent_.removeTarget(it->second.netns);
  watched_.erase(it);
}

void KubeTargets::remove(const std::string& uid) {
  pending_.erase(uid);
  last_problem_.erase(uid);
  auto it = watched_.find(uid);
  if (it != watched_.end()) {
    PodLabels labels = it->second.labels;
    logging::info("pod gone: stop watching",
                  {{"namespace", labels.namespace_}, {"pod", labels.pod}, {"netns", it->second.netns}});
    if (without_sidecar_.erase(uid) > 0) agent_.metrics().setPodWithoutSidecar(labels, false);
    unwatch(uid);
  }
}

void KubeTargets::retryPending() {
  if (pending_.empty()) return;
  auto pods = pending_;  // upsert() edits pending_
  for (const auto& [uid, pod] : pods) {
    if (pod.running()) upsert(pod);
  }
}

}  // namespace cw
