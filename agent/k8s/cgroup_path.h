// Kubernetes identity in cgroup v2 paths, as kubelet lays them out:
//
//   systemd driver:  /kubepods.slice/kubepods-burstable.slice/
//                      kubepods-burstable-pod<uid, '_' for '-'>.slice/cri-containerd-<id>.scope
//                    (crio-<id>.scope for CRI-O, docker-<id>.scope for dockershim/cri-dockerd;
//                     guaranteed pods sit directly in kubepods.slice/kubepods-pod<uid>.slice)
//   cgroupfs driver: /kubepods/burstable/pod<uid>/<id>   (guaranteed: /kubepods/pod<uid>/<id>)
//
// and the cgroup2 mount (from mountinfo) that maps a path to a directory.
// Pure: text in, values out.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace cw::k8s {

struct CgroupIdentity {
  std::string pod_uid;       // normalised with '-': "6f1a3c52-0c1e-4d6b-9a37-2b0f6c1d9e44"
  std::string container_id;  // runtime container ID; empty for the pod's own cgroup
};

// The pod (and container) a cgroup path belongs to; nullopt if it is not
// under a kubelet pod cgroup. Accepts a path relative to the cgroup root
// ("/kubepods/..."), or a directory below a mount point
// ("/sys/fs/cgroup/kubepods.slice/..."). CRI-O's conmon scope
// (crio-conmon-<id>.scope) and other non-container leaves give an empty
// container_id.
std::optional<CgroupIdentity> parseCgroupPath(std::string_view path);

// The cgroup v2 path of a process from the text of /proc/PID/cgroup: the
// path of its "0::" line; nullopt if there is none (a cgroup v1-only host).
std::optional<std::string> cgroupV2Path(std::string_view proc_cgroup);

// A cgroup2 mount: its mount point and the cgroup path mounted there ("/"
// unless a subtree is bind-mounted or the reader is in a cgroup namespace).
struct CgroupMount {
  std::string mount_point;  // e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified
  std::string root = "/";
};

// The first cgroup2 mount listed in the text of /proc/self/mountinfo.
std::optional<CgroupMount> findCgroup2Mount(std::string_view mountinfo);

// The directory of cgroup `path` (as /proc/PID/cgroup shows it) under the
// mount; nullopt if the path is not below the mount's root (e.g. "/../..":
// the process is outside the reader's cgroup namespace).
std::optional<std::string> cgroupDirectory(const CgroupMount& mount, std::string_view path);

}  // namespace cw::k8s
