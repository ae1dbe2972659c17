#include "k8s/node_resolver.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "k8s/file_text.h"

namespace cw::k8s {
namespace {

bool isPid(const std::string& name) {
  return !name.empty() && name.size() < 11 &&
         std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string podName(const Pod& pod) {
  return (pod.namespace_.empty() ? "" : pod.namespace_ + "/") + pod.name + " (uid " + pod.uid + ")";
}

const PodProcess* processOfContainer(const std::vector<PodProcess>& processes,
                                     const std::string& container_id) {
  if (container_id.empty()) return nullptr;
  for (const PodProcess& p : processes) {
    if (p.container_id == container_id) return &p;
  }
  return nullptr;
}

}  // namespace

NodeResolver::NodeResolver(NodeResolverOptions options) : options_(std::move(options)) {
  const std::optional<std::string> mountinfo = readFileText(options_.mountinfo);
  if (!mountinfo) throw ResolveError("cannot read " + options_.mountinfo);
  std::optional<CgroupMount> mount = findCgroup2Mount(*mountinfo);
  if (!mount) {
    throw ResolveError("no cgroup2 mount in " + options_.mountinfo + " (cgroup v2 is required)");
  }
  mount_ = std::move(*mount);
}

PodProcessIndex NodeResolver::scan() const {
  PodProcessIndex index;
  std::error_code ec;
  std::filesystem::directory_iterator it(options_.host_proc, ec);
  if (ec) throw ResolveError("cannot list " + options_.host_proc + ": " + ec.message());
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    const std::string name = it->path().filename().string();
    if (!isPid(name)) continue;
    const std::optional<std::string> text = readFileText(it->path().string() + "/cgroup");
    if (!text) continue;  // gone meanwhile
    std::optional<std::string> path = cgroupV2Path(*text);
    if (!path) continue;
    std::optional<CgroupIdentity> id = parseCgroupPath(*path);
    if (!id) continue;
    index[id->pod_uid].push_back(PodProcess{std::stoi(name), std::move(*path), id->container_id});
  }
  for (auto& [uid, processes] : index) {
    std::sort(processes.begin(), processes.end(),
              [](const PodProcess& a, const PodProcess& b) { return a.pid < b.pid; });
  }
  return index;
}

ResolveResult NodeResolver::resolve(const Pod& pod, const PodProcessIndex& index) const {
  const auto found = index.find(pod.uid);
  if (found == index.end()) {
    return {std::nullopt, "no process of pod " + podName(pod) + " in " + options_.host_proc};
  }
  const std::vector<PodProcess>& processes = found->second;

  // The pod's network namespace, through a process of one of its containers
  // (not a runtime helper such as CRI-O's conmon, which sits in the pod's
  // cgroup but in the host's namespace).
  const PodProcess* member = nullptr;
  for (const Container& c : pod.containers) {
    member = processOfContainer(processes, c.container_id);
    if (member != nullptr) break;
  }
  if (member == nullptr) {
    return {std::nullopt, "no process of the containers of pod " + podName(pod) + " yet"};
  }

  PodTarget target;
  target.pod = pod;
  target.netns_path = options_.host_proc + "/" + std::to_string(member->pid) + "/ns/net";
  struct stat st {};
  if (::stat(target.netns_path.c_str(), &st) != 0) {
    return {std::nullopt, "cannot stat " + target.netns_path + " of pod " + podName(pod) + ": " +
                              std::strerror(errno)};
  }
  target.netns_inode = static_cast<uint32_t>(st.st_ino);

  const Container* sidecar = pod.container(options_.sidecar_container);
  target.has_sidecar = sidecar != nullptr;
  if (sidecar != nullptr) {
    const std::string what = "sidecar container " + sidecar->name + " of pod " + podName(pod);
    if (sidecar->container_id.empty()) return {std::nullopt, what + " has not started yet"};
    const PodProcess* proxy = processOfContainer(processes, sidecar->container_id);
    if (proxy == nullptr) {
      return {std::nullopt,
              what + ": no process in container " + sidecar->container_id.substr(0, 12) + " yet"};
    }
    std::optional<std::string> dir = cgroupDirectory(mount_, proxy->cgroup_path);
    if (!dir) {
      return {std::nullopt, what + ": cgroup " + proxy->cgroup_path + " is not below the cgroup2 " +
                                "mount " + mount_.mount_point +
                                " (run the agent in the host's cgroup namespace)"};
    }
    if (::stat(dir->c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return {std::nullopt, what + ": cannot stat cgroup directory " + *dir};
    }
    target.proxy_cgroup_dir = std::move(*dir);
    target.proxy_cgroup_id = static_cast<uint64_t>(st.st_ino);
  }
  return {std::move(target), {}};
}

}  // namespace cw::k8s
