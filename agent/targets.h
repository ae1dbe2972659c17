// Static targets: which network namespaces to watch and which cgroups are
// sidecar proxies, from command-line paths.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace cw {

class TargetError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A watched pod-like network namespace.
struct Target {
  uint32_t id = 0;           // index given to the kernel map
  uint32_t netns = 0;        // netns inode
  std::string netns_path;    // as given
  std::string name;          // pod name (outside Kubernetes: derived from the path)
  std::string namespace_;    // Kubernetes namespace, empty outside Kubernetes
};

// The name of a target from its netns path: /run/netns/NAME -> NAME,
// /proc/PID/ns/net -> pid-PID, anything else -> its last path component.
std::string targetNameFromPath(const std::string& path);

// Opens PATH and checks that it is a network namespace; returns its inode.
// Throws TargetError naming the path and the problem.
uint32_t netnsInode(const std::string& path);

// Checks that PATH is a readable cgroup v2 directory; returns its cgroup id.
uint64_t proxyCgroupId(const std::string& path);

}  // namespace cw
