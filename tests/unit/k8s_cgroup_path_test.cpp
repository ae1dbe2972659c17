#include "k8s/cgroup_path.h"

#include <gtest/gtest.h>

namespace cw::k8s {
namespace {

constexpr const char* kUid = "6f1a3c52-0c1e-4d6b-9a37-2b0f6c1d9e44";
constexpr const char* kUidSystemd = "6f1a3c52_0c1e_4d6b_9a37_2b0f6c1d9e44";
constexpr const char* kId = "3e5a7c9b1d2f4e6a8c0b2d4f6e8a1c3b5d7f9e2a4c6b8d0f1e3a5c7b9d2f4e6a";

struct Case {
  std::string path;
  std::string container_id;
};

void expectPodAndContainer(const Case& c) {
  const auto id = parseCgroupPath(c.path);
  ASSERT_TRUE(id.has_value()) << c.path;
  EXPECT_EQ(id->pod_uid, kUid) << c.path;
  EXPECT_EQ(id->container_id, c.container_id) << c.path;
}

TEST(CgroupPathTest, SystemdDriverThreeRuntimesThreeQosClasses) {
  const std::string id = kId;
  const std::string uid = kUidSystemd;
  for (const Case& c : {
           Case{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uid +
                    ".slice/cri-containerd-" + id + ".scope",
                id},
           Case{"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uid +
                    ".slice/crio-" + id + ".scope",
                id},
           Case{"/kubepods.slice/kubepods-pod" + uid + ".slice/docker-" + id + ".scope", id},
           // The pod's own slice, and CRI-O's conmon (not a container).
           Case{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uid + ".slice",
                ""},
           Case{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uid +
                    ".slice/crio-conmon-" + id + ".scope",
                ""},
       }) {
    expectPodAndContainer(c);
  }
}

TEST(CgroupPathTest, CgroupfsDriver) {
  const std::string id = kId;
  const std::string uid = kUid;
  for (const Case& c : {
           Case{"/kubepods/burstable/pod" + uid + "/" + id, id},
           Case{"/kubepods/besteffort/pod" + uid + "/" + id, id},
           Case{"/kubepods/pod" + uid + "/" + id, id},  // guaranteed
           Case{"/kubepods/burstable/pod" + uid + "/crio-" + id, id},
           Case{"/kubepods/burstable/pod" + uid, ""},
       }) {
    expectPodAndContainer(c);
  }
}

TEST(CgroupPathTest, DirectoryBelowAMountPoint) {
  expectPodAndContainer(
      {std::string("/sys/fs/cgroup/unified/kubepods/pod") + kUid + "/" + kId, kId});
  expectPodAndContainer({std::string("/sys/fs/cgroup/kubepods.slice/kubepods-pod") + kUidSystemd +
                             ".slice/cri-containerd-" + kId + ".scope/",
                         kId});
}

TEST(CgroupPathTest, StaticPodUidIsAHash) {
  const auto id = parseCgroupPath(
      "/kubepods.slice/kubepods-burstable.slice/"
      "kubepods-burstable-pod0d4d6c1e5b8a4f1d9e7c3b2a1f0e9d8c.slice/cri-containerd-" +
      std::string(kId) + ".scope");
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(id->pod_uid, "0d4d6c1e5b8a4f1d9e7c3b2a1f0e9d8c");
}

TEST(CgroupPathTest, NotAPod) {
  for (const char* path :
       {"/", "", "/system.slice/containerd.service", "/user.slice/user-0.slice", "/kubepods.slice",
        "/kubepods.slice/kubepods-burstable.slice", "/kubepods/burstable",
        "/kubepods/podnot-a-uid/abc", "/kubepods.slice/kubepods-podXYZ.slice",
        "/docker/3e5a7c9b1d2f4e6a8c0b2d4f6e8a1c3b5d7f9e2a4c6b8d0f1e3a5c7b9d2f4e6a"}) {
    EXPECT_FALSE(parseCgroupPath(path).has_value()) << path;
  }
}

TEST(CgroupPathTest, ProcCgroupFile) {
  // cgroup v2 only
  EXPECT_EQ(cgroupV2Path("0::/kubepods/pod1/abc\n"), "/kubepods/pod1/abc");
  // hybrid host: v1 hierarchies and the unified one
  EXPECT_EQ(cgroupV2Path("12:pids:/kubepods/x\n4:memory:/kubepods/x\n1:name=systemd:/kubepods/x\n"
                         "0::/kubepods.slice/y\n"),
            "/kubepods.slice/y");
  EXPECT_FALSE(cgroupV2Path("4:memory:/kubepods/x\n").has_value());
  EXPECT_FALSE(cgroupV2Path("").has_value());
}

TEST(CgroupMountTest, FindsCgroup2InMountinfo) {
  const std::string hybrid =
      "30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
      "31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
      "40 30 0:37 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
  const auto mount = findCgroup2Mount(hybrid);
  ASSERT_TRUE(mount.has_value());
  EXPECT_EQ(mount->mount_point, "/sys/fs/cgroup/unified");
  EXPECT_EQ(mount->root, "/");

  const auto unified = findCgroup2Mount(
      "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
      "rw,nsdelegate,memory_recursiveprot\n");
  ASSERT_TRUE(unified.has_value());
  EXPECT_EQ(unified->mount_point, "/sys/fs/cgroup");

  const auto escaped =
      findCgroup2Mount("50 1 0:40 /kubepods /host\\040cgroup rw - cgroup2 none rw\n");
  ASSERT_TRUE(escaped.has_value());
  EXPECT_EQ(escaped->mount_point, "/host cgroup");
  EXPECT_EQ(escaped->root, "/kubepods");

  EXPECT_FALSE(findCgroup2Mount("31 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"));
  EXPECT_FALSE(findCgroup2Mount("garbage\n\n- cgroup2\n"));
}

TEST(CgroupMountTest, DirectoryOfAPath) {
  const CgroupMount root{"/sys/fs/cgroup/unified", "/"};
  EXPECT_EQ(cgroupDirectory(root, "/kubepods/pod1/abc"),
            "/sys/fs/cgroup/unified/kubepods/pod1/abc");
  EXPECT_EQ(cgroupDirectory(root, "/"), "/sys/fs/cgroup/unified");

  const CgroupMount subtree{"/host/cgroup/", "/kubepods"};
  EXPECT_EQ(cgroupDirectory(subtree, "/kubepods/pod1/abc"), "/host/cgroup/pod1/abc");
  EXPECT_EQ(cgroupDirectory(subtree, "/kubepods"), "/host/cgroup");
  EXPECT_FALSE(cgroupDirectory(subtree, "/kubepodsX/pod1"));
  EXPECT_FALSE(cgroupDirectory(subtree, "/system.slice"));
  // Outside the reader's cgroup namespace.
  EXPECT_FALSE(cgroupDirectory(root, "/../../kubepods/pod1/abc"));
  EXPECT_FALSE(cgroupDirectory(root, "relative"));
}

}  // namespace
}  // namespace cw::k8s
