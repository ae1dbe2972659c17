// From a pod the API server announced to what the agent watches on this
// node: the pod's network namespace (through one of its containers'
// processes in the host /proc) and its sidecar's cgroup v2 directory. The
// only I/O is reading files under the configured paths, so tests point it at
// a fake /proc and cgroup tree in a temporary directory.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "k8s/cgroup_path.h"
#include "k8s/pod.h"

namespace cw::k8s {

class ResolveError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct NodeResolverOptions {
  std::string host_proc = "/proc";                 // --host-proc
  std::string mountinfo = "/proc/self/mountinfo";  // where the cgroup2 mount is found
  std::string sidecar_container = "istio-proxy";   // --sidecar-container
};

// What the agent watches for one pod.
struct PodTarget {
  Pod pod;
  std::string netns_path;  // <host-proc>/<pid>/ns/net of one of its containers' processes
  uint32_t netns_inode = 0;
  std::string proxy_cgroup_dir;  // cgroup v2 directory of the sidecar; empty without one
  uint64_t proxy_cgroup_id = 0;  // its inode number (the cgroup id BPF sees)
  bool has_sidecar = false;      // the pod has a container named like the sidecar
};

// A host process in a pod's cgroup.
struct PodProcess {
  int pid = 0;
  std::string cgroup_path;   // cgroup v2 path from /proc/PID/cgroup
  std::string container_id;  // empty for the pod's own cgroup or a runtime helper
};

// Processes of pods on this node, by pod UID; pids ascending.
using PodProcessIndex = std::unordered_map<std::string, std::vector<PodProcess>>;

struct ResolveResult {
  std::optional<PodTarget> target;
  std::string problem;  // why there is no target (yet): log it and try again later

  bool ok() const { return target.has_value(); }
};

class NodeResolver {
 public:
  // Finds the cgroup2 mount in options.mountinfo; throws ResolveError if
  // there is none (cgroup v2 is required).
  explicit NodeResolver(NodeResolverOptions options);

  // Reads <host-proc>/<pid>/cgroup of every process; keeps those in a pod
  // cgroup. Processes that vanish while scanning are skipped.
  PodProcessIndex scan() const;

  // The target of a pod from a scan. Not resolved (with the reason) when none
  // of its containers has a process yet, or when it has a sidecar container
  // whose process or cgroup directory cannot be found.
  ResolveResult resolve(const Pod& pod, const PodProcessIndex& processes) const;
  ResolveResult resolve(const Pod& pod) const { return resolve(pod, scan()); }

  const CgroupMount& cgroupMount() const { return mount_; }
  const NodeResolverOptions& options() const { return options_; }

 private:
  NodeResolverOptions options_;
  CgroupMount mount_;
};

}  // namespace cw::k8s
