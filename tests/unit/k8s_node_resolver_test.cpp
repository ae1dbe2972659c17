#include "k8s/node_resolver.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>

#include <gtest/gtest.h>

#include "../k8s/fake_apiserver.h"

namespace cw::k8s {
namespace {

namespace fs = std::filesystem;
using testing::fixture;
using testing::TempDir;

uint64_t inodeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_ino;
}

std::string systemdPodSlice(const Pod& pod) {
  std::string uid = pod.uid;
  std::replace(uid.begin(), uid.end(), '-', '_');
  return "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uid + ".slice";
}

// A host as the agent sees it: <tmp>/proc with /proc/PID/cgroup and
// /proc/PID/ns/net (a symlink to a file standing for the pod's netns),
// <tmp>/cgroup as the cgroup2 mount, and a mountinfo naming it.
class FakeHost {
 public:
  FakeHost() {
    dir_.write("mountinfo",
               "30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
               "31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
               "40 30 0:37 / " +
                   cgroupRoot() + " rw,relatime - cgroup2 cgroup2 rw\n");
    fs::create_directories(cgroupRoot());
    fs::create_directories(procRoot());
    dir_.write("proc/uptime", "1.0 1.0\n");  // not a process
    fs::create_directories(procRoot() + "/self");
  }

  // A process in cgroup `path` and network namespace `netns` (a file name).
  void addProcess(int pid, const std::string& path, const std::string& netns,
                  bool make_cgroup_dir = true) {
    const std::string proc = "proc/" + std::to_string(pid);
    dir_.write(proc + "/cgroup", "1:name=systemd:" + path + "\n0::" + path + "\n");
    const std::string ns_file = dir_.write("netns/" + netns, netns);
    fs::create_directories(dir_.path() + "/" + proc + "/ns");
    const std::string link = dir_.path() + "/" + proc + "/ns/net";
    if (!fs::exists(fs::symlink_status(link))) fs::create_symlink(ns_file, link);
    if (make_cgroup_dir) fs::create_directories(cgroupRoot() + path);
  }

  NodeResolverOptions options() const {
    NodeResolverOptions o;
    o.host_proc = procRoot();
    o.mountinfo = dir_.path() + "/mountinfo";
    return o;
  }
  std::string procRoot() const { return dir_.path() + "/proc"; }
  std::string cgroupRoot() const { return dir_.path() + "/cgroup"; }
  std::string netnsFile(const std::string& name) const { return dir_.path() + "/netns/" + name; }

 private:
  TempDir dir_;
};

Pod gatewayPod() { return parsePodList(fixture("podlist-worker-1.json")).items.at(0); }

TEST(NodeResolverTest, SystemdDriverPodWithSidecar) {
  FakeHost host;
  const Pod pod = gatewayPod();
  const std::string slice = systemdPodSlice(pod);
  const std::string app_id = pod.container("envoy")->container_id;
  const std::string proxy_id = pod.container("istio-proxy")->container_id;
  const std::string pause_id = "4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d";
  host.addProcess(1, "/init.scope", "host");
  host.addProcess(57, "/system.slice/containerd.service", "host");
  host.addProcess(2, "/", "host");
  host.addProcess(4100, slice + "/cri-containerd-" + pause_id + ".scope", "gw-a");
  host.addProcess(4123, slice + "/cri-containerd-" + app_id + ".scope", "gw-a");
  host.addProcess(4150, slice + "/cri-containerd-" + proxy_id + ".scope", "gw-a");
  host.addProcess(4171, slice + "/cri-containerd-" + proxy_id + ".scope", "gw-a");

  const NodeResolver resolver(host.options());
  EXPECT_EQ(resolver.cgroupMount().mount_point, host.cgroupRoot());

  const PodProcessIndex index = resolver.scan();
  ASSERT_EQ(index.size(), 1u);
  const std::vector<PodProcess>& processes = index.at(pod.uid);
  ASSERT_EQ(processes.size(), 4u);
  EXPECT_EQ(processes[0].pid, 4100);
  EXPECT_EQ(processes[0].container_id, pause_id);
  EXPECT_EQ(processes[3].pid, 4171);

  const ResolveResult result = resolver.resolve(pod, index);
  ASSERT_TRUE(result.ok()) << result.problem;
  const PodTarget& t = *result.target;
  EXPECT_EQ(t.pod.uid, pod.uid);
  EXPECT_EQ(t.netns_path, host.procRoot() + "/4123/ns/net");  // the app container's process
  EXPECT_EQ(t.netns_inode, static_cast<uint32_t>(inodeOf(host.netnsFile("gw-a"))));
  EXPECT_TRUE(t.has_sidecar);
  const std::string proxy_dir =
      host.cgroupRoot() + slice + "/cri-containerd-" + proxy_id + ".scope";
  EXPECT_EQ(t.proxy_cgroup_dir, proxy_dir);
  EXPECT_EQ(t.proxy_cgroup_id, inodeOf(proxy_dir));
}

TEST(NodeResolverTest, CgroupfsDriverPodWithoutSidecar) {
  FakeHost host;
  Pod pod = parsePod(fixture("pod-docker-job.json"));
  pod.containers.erase(std::remove_if(pod.containers.begin(), pod.containers.end(),
                                      [](const Container& c) { return c.name == "istio-proxy"; }),
                       pod.containers.end());
  const std::string app_id = pod.containers.at(0).container_id;
  host.addProcess(900, "/kubepods/pod" + pod.uid + "/" + app_id, "job");

  const NodeResolver resolver(host.options());
  const ResolveResult result = resolver.resolve(pod);
  ASSERT_TRUE(result.ok()) << result.problem;
  EXPECT_EQ(result.target->netns_path, host.procRoot() + "/900/ns/net");
  EXPECT_EQ(result.target->netns_inode, static_cast<uint32_t>(inodeOf(host.netnsFile("job"))));
  EXPECT_FALSE(result.target->has_sidecar);
  EXPECT_TRUE(result.target->proxy_cgroup_dir.empty());
  EXPECT_EQ(result.target->proxy_cgroup_id, 0u);
}

TEST(NodeResolverTest, CrioCgroupfsPodWithSidecarAndConmon) {
  FakeHost host;
  const Pod pod = parsePod(fixture("pod-crio-daemonset.json"));
  const std::string base = "/kubepods/burstable/pod" + pod.uid;
  const std::string app_id = pod.container("envoy")->container_id;
  const std::string proxy_id = pod.container("istio-proxy")->container_id;
  // conmon sits in the pod's cgroup but in the host's netns: never used for the netns.
  host.addProcess(300, base + "/crio-conmon-" + app_id, "host");
  host.addProcess(310, base + "/crio-" + proxy_id, "ds");
  host.addProcess(320, base + "/crio-" + app_id, "ds");

  const ResolveResult result = NodeResolver(host.options()).resolve(pod);
  ASSERT_TRUE(result.ok()) << result.problem;
  EXPECT_EQ(result.target->netns_path, host.procRoot() + "/320/ns/net");
  EXPECT_EQ(result.target->proxy_cgroup_dir, host.cgroupRoot() + base + "/crio-" + proxy_id);
}

TEST(NodeResolverTest, CustomSidecarContainerName) {
  FakeHost host;
  Pod pod = gatewayPod();
  pod.containers.at(1).name = "mesh-proxy";
  const std::string slice = systemdPodSlice(pod);
  host.addProcess(10, slice + "/cri-containerd-" + pod.containers[0].container_id + ".scope", "p");
  host.addProcess(11, slice + "/cri-containerd-" + pod.containers[1].container_id + ".scope", "p");

  NodeResolverOptions options = host.options();
  EXPECT_FALSE(NodeResolver(options).resolve(pod).target->has_sidecar);
  options.sidecar_container = "mesh-proxy";
  const ResolveResult result = NodeResolver(options).resolve(pod);
  ASSERT_TRUE(result.ok());
  EXPECT_TRUE(result.target->has_sidecar);
  EXPECT_NE(result.target->proxy_cgroup_dir.find(pod.containers[1].container_id),
            std::string::npos);
}

TEST(NodeResolverTest, ProblemsAreReportedNotThrown) {
  FakeHost host;
  const Pod pod = gatewayPod();
  const std::string slice = systemdPodSlice(pod);
  const std::string app_id = pod.container("envoy")->container_id;
  const std::string proxy_id = pod.container("istio-proxy")->container_id;
  const NodeResolver resolver(host.options());

  // Nothing of the pod on this host yet.
  ResolveResult r = resolver.resolve(pod);
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.problem.find("no process of pod edge/envoy-gateway-7d9f8c6b5-x2x7q"),
            std::string::npos)
      << r.problem;

  // Only the pod's own cgroup (sandbox setting up): no container process.
  host.addProcess(20, slice, "p");
  r = resolver.resolve(pod);
  EXPECT_NE(r.problem.find("no process of the containers"), std::string::npos) << r.problem;

  // The app runs, the sidecar has not started.
  host.addProcess(21, slice + "/cri-containerd-" + app_id + ".scope", "p");
  Pod starting = pod;
  for (Container& c : starting.containers) {
    if (c.name == "istio-proxy") c.container_id.clear();
  }
  r = resolver.resolve(starting);
  EXPECT_NE(r.problem.find("sidecar container istio-proxy"), std::string::npos) << r.problem;
  EXPECT_NE(r.problem.find("has not started"), std::string::npos) << r.problem;

  // The status names the sidecar's container, its process is not there yet.
  r = resolver.resolve(pod);
  EXPECT_NE(r.problem.find("no process in container 3e5a7c9b1d2f"), std::string::npos) << r.problem;

  // Its process is there, its cgroup directory is not (removed meanwhile).
  host.addProcess(22, slice + "/cri-containerd-" + proxy_id + ".scope", "p",
                  /*make_cgroup_dir=*/false);
  r = resolver.resolve(pod);
  EXPECT_NE(r.problem.find("cannot stat cgroup directory"), std::string::npos) << r.problem;
}

TEST(NodeResolverTest, ProcessOutsideTheCgroupNamespace) {
  FakeHost host;
  const Pod pod = gatewayPod();
  const std::string slice = "/../.." + systemdPodSlice(pod);
  host.addProcess(30, slice + "/cri-containerd-" + pod.containers[0].container_id + ".scope", "p",
                  false);
  host.addProcess(31, slice + "/cri-containerd-" + pod.containers[1].container_id + ".scope", "p",
                  false);
  const ResolveResult r = NodeResolver(host.options()).resolve(pod);
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.problem.find("host's cgroup namespace"), std::string::npos) << r.problem;
}

TEST(NodeResolverTest, NeedsACgroup2Mount) {
  TempDir dir;
  NodeResolverOptions options;
  options.mountinfo =
      dir.write("mountinfo", "31 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw\n");
  EXPECT_THROW(NodeResolver{options}, ResolveError);
  options.mountinfo = dir.path() + "/absent";
  EXPECT_THROW(NodeResolver{options}, ResolveError);
}

TEST(NodeResolverTest, ThisHost) {
  // The real /proc and mountinfo: the cgroup2 mount is a cgroup v2 directory
  // and scanning works (this machine runs no pods).
  const NodeResolver resolver(NodeResolverOptions{});
  EXPECT_TRUE(fs::exists(resolver.cgroupMount().mount_point + "/cgroup.procs"))
      << resolver.cgroupMount().mount_point;
  EXPECT_NO_THROW(resolver.scan());
}

}  // namespace
}  // namespace cw::k8s
