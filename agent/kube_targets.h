// Kubernetes discovery wired to the agent: watches the API server for the
// selected pods on this node, resolves each Running pod to its network
// namespace and sidecar cgroup through the host's /proc and cgroup tree, and
// adds, replaces and removes the agent's targets as pods come and go.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>

#include "agent.h"
#include "k8s/node_resolver.h"
#include "k8s/pod_watcher.h"

namespace cw {

struct KubeOptions {
  k8s::ClusterConfig cluster;
  std::string node_name;
  std::string namespace_;  // empty: all
  std::string selector;    // label selector text
  std::string sidecar_container = "istio-proxy";
  std::string host_proc = "/proc";
};

class KubeTargets {
 public:
  // Throws k8s::SelectorError for a bad selector.
  KubeTargets(Agent& agent, KubeOptions options);
  ~KubeTargets();  // stops the watch

  void start();

 private:
  struct Watched {
    uint32_t netns = 0;
    std::string netns_path;
    uint64_t proxy_cgroup_id = 0;
    PodLabels labels;
  };

  // On the agent's thread.
  void upsert(const k8s::Pod& pod);
  void remove(const std::string& uid);
  void retryPending();
  void unwatch(const std::string& uid);

  Agent& agent_;
  KubeOptions options_;
  k8s::NodeResolver resolver_;
  std::unique_ptr<k8s::PodWatcher> watcher_;
  std::map<std::string, Watched> watched_;   // by pod uid
  std::map<std::string, k8s::Pod> pending_;  // selected, not resolvable yet (by uid)
  std::map<std::string, std::string> last_problem_;  // uid -> last logged problem
  std::set<std::string> without_sidecar_;            // uids reported without a sidecar
  uint32_t next_id_ = 1;
};

}  // namespace cw
