// Privileged tests of the lab pod (agent/lab): real network namespaces,
// Istio's own iptables/ip6tables rules, cgroup v2, a TLS-forwarding sidecar
// and a strict-mTLS upstream. Run as root. Every test checks that what the
// pod created is gone afterwards.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <linux/magic.h>

#include "lab/lab_pod.h"
#include "lab/system.h"

namespace cw::lab {
namespace {

namespace fs = std::filesystem;

const uint32_t kAppUid = 1000;
const uint32_t kAppGid = 1000;

std::string myPid() { return std::to_string(::getpid()); }

// Processes whose parent is this process (zombies included).
std::vector<pid_t> childProcesses() {
  std::vector<pid_t> out;
  const pid_t self = ::getpid();
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "stat");
    std::string stat;
    if (!std::getline(in, stat)) continue;
    const auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 2));
    char state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == self) out.push_back(std::stoi(name));
  }
  return out;
}

// Network namespaces named like this process's lab pods ("<prefix>-<pid>-").
std::vector<std::string> labNetns(const std::string& prefix = "cw-lab") {
  std::vector<std::string> out;
  const std::string stem = prefix + "-" + myPid() + "-";
  const std::string listing = runChecked({"ip", "netns", "list"}, "ip netns list");
  std::istringstream lines(listing);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(stem, 0) == 0) out.push_back(line);
  }
  if (fs::exists("/run/netns")) {
    for (const auto& entry : fs::directory_iterator("/run/netns")) {
      const std::string name = entry.path().filename();
      if (name.rfind(stem, 0) == 0) out.push_back("/run/netns/" + name);
    }
  }
  return out;
}

std::string labCgroupDir() { return findCgroup2Root() + "/capturewatch-lab-" + myPid(); }

void expectNothingLeft() {
  EXPECT_EQ(labNetns(), std::vector<std::string>{});
  EXPECT_FALSE(fs::exists(labCgroupDir())) << labCgroupDir();
  EXPECT_EQ(childProcesses(), std::vector<pid_t>{});
}

bool processExists(pid_t pid) { return pid > 0 && (::kill(pid, 0) == 0 || errno != ESRCH); }

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

uint64_t inodeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_ino;
}

std::string describe(const LabPod::ClientResult& r) {
  std::string out = "ok=" + std::to_string(r.ok) + " reset=" + std::to_string(r.reset) +
                    " refused=" + std::to_string(r.refused) + " other=" + std::to_string(r.other) +
                    " outcomes:";
  for (auto o : r.outcomes) out += std::string(" ") + outcomeName(o);
  return out;
}

class LabPodTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (netns, iptables, cgroups)";
    pod_ = LabPod::create(PodConfig{});
    pod_->startUpstream();
    pod_->startSidecar();
  }
  void TearDown() override {
    if (::geteuid() != 0) return;
    pod_.reset();
    expectNothingLeft();
  }
  std::unique_ptr<LabPod> pod_;
};

TEST_F(LabPodTest, AppConnectionOverIpv4IsCapturedAndCarriedOverTls) {
  // The upstream resets plaintext: 200 proves REDIRECT -> sidecar ->
  // SO_ORIGINAL_DST -> TLS to the original destination.
  auto r = pod_->runClient(kAppUid, kAppGid, pod_->appCgroup(), pod_->upstreamV4(), 5);
  EXPECT_EQ(r.ok, 5) << describe(r);
  ASSERT_EQ(r.local_ports.size(), 5u);
  std::set<uint16_t> distinct(r.local_ports.begin(), r.local_ports.end());
  EXPECT_EQ(distinct.size(), 5u);
  EXPECT_EQ(distinct.count(0), 0u);
}

TEST_F(LabPodTest, AppConnectionOverIpv6IsCapturedAndCarriedOverTls) {
  auto r = pod_->runClient(kAppUid, kAppGid, pod_->appCgroup(), pod_->upstreamV6(), 5);
  EXPECT_EQ(r.ok, 5) << describe(r);
  EXPECT_EQ(r.local_ports.size(), 5u);
}

TEST_F(LabPodTest, AppRunningAsProxyUidBypassesCaptureAndIsResetByStrictUpstream) {
  auto r = pod_->runClient(1337, 1337, pod_->appCgroup(), pod_->upstreamV4(), 5);
  EXPECT_EQ(r.reset, 5) << describe(r);
  auto r6 = pod_->runClient(1337, 1337, pod_->appCgroup(), pod_->upstreamV6(), 2);
  EXPECT_EQ(r6.reset, 2) << describe(r6);
}

TEST_F(LabPodTest, ProxyGidAloneIsEnoughToBypass) {
  auto r = pod_->runClient(kAppUid, 1337, pod_->appCgroup(), pod_->upstreamV4(), 3);
  EXPECT_EQ(r.reset, 3) << describe(r);
}

TEST_F(LabPodTest, LoopbackAdminCallsAreNotCaptured) {
  auto r = pod_->runClient(kAppUid, kAppGid, pod_->appCgroup(), pod_->adminV4(), 2);
  EXPECT_EQ(r.ok, 2) << describe(r);
  auto r6 = pod_->runClient(kAppUid, kAppGid, pod_->appCgroup(), pod_->adminV6(), 2);
  EXPECT_EQ(r6.ok, 2) << describe(r6);
}

TEST_F(LabPodTest, BypassedConnectionToClosedPortIsRefused) {
  Endpoint closed = pod_->upstreamV4();
  closed.port = 31999;
  auto r = pod_->runClient(1337, 1337, pod_->appCgroup(), closed, 2);
  EXPECT_EQ(r.refused, 2) << describe(r);
}

TEST_F(LabPodTest, SidecarRunsInItsCgroupNetnsAndUid) {
  const pid_t pid = pod_->sidecarPid();
  ASSERT_GT(pid, 0);
  const std::string proc = "/proc/" + std::to_string(pid);
  const std::string relative = pod_->sidecarCgroup().substr(pod_->cgroup2Root().size());
  EXPECT_NE(readFile(proc + "/cgroup").find("0::" + relative + "\n"), std::string::npos)
      << readFile(proc + "/cgroup");
  EXPECT_NE(readFile(proc + "/status").find("Uid:\t1337\t1337\t1337\t1337"), std::string::npos);
  EXPECT_NE(readFile(proc + "/status").find("Gid:\t1337\t1337\t1337\t1337"), std::string::npos);
  EXPECT_EQ(readFile(proc + "/comm"), "envoy\n");
  EXPECT_EQ(inodeOf(proc + "/ns/net"), inodeOf(pod_->podNetnsPath()));
  EXPECT_NE(inodeOf(proc + "/ns/net"), inodeOf("/proc/self/ns/net"));
  EXPECT_EQ(inodeOf("/proc/" + std::to_string(pod_->upstreamPid()) + "/ns/net"),
            inodeOf(pod_->upstreamNetnsPath()));
}

TEST_F(LabPodTest, CgroupIdIsTheKernelsId) {
  // The kernel's cgroup id is what name_to_handle_at() returns for a cgroup
  // v2 directory (the id bpf_get_current_cgroup_id() reports).
  for (const auto& dir : {pod_->sidecarCgroup(), pod_->appCgroup()}) {
    std::vector<char> storage(sizeof(file_handle) + sizeof(uint64_t));
    auto* fh = reinterpret_cast<file_handle*>(storage.data());
    fh->handle_bytes = sizeof(uint64_t);
    int mount_id = 0;
    ASSERT_EQ(::name_to_handle_at(AT_FDCWD, dir.c_str(), fh, &mount_id, 0), 0) << strerror(errno);
    uint64_t id = 0;
    std::memcpy(&id, fh->f_handle, sizeof id);
    EXPECT_EQ(cgroupId(dir), id) << dir;
  }
  EXPECT_NE(cgroupId(pod_->sidecarCgroup()), cgroupId(pod_->appCgroup()));
}

TEST_F(LabPodTest, SecondPodWithTheSameNamesFailsWithoutHarmingTheFirst) {
  // Same cgroup: fails first thing.
  EXPECT_THROW(LabPod::create(PodConfig{}), std::runtime_error);
  // Own cgroups, same netns names: fails at `ip netns add`, removes its own
  // cgroups and nothing of the first pod.
  PodConfig other;
  other.cgroup_prefix = "capturewatch-lab-other";
  try {
    LabPod::create(other);
    ADD_FAILURE() << "create() did not fail";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("ip netns add cw-lab-" + myPid() + "-gw: "),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(findCgroup2Root() + "/capturewatch-lab-other-" + myPid()));
  EXPECT_TRUE(fs::exists(pod_->podNetnsPath()));
  EXPECT_TRUE(fs::exists(pod_->sidecarCgroup()));
  auto r = pod_->runClient(kAppUid, kAppGid, pod_->appCgroup(), pod_->upstreamV4(), 1);
  EXPECT_EQ(r.ok, 1) << describe(r);
}

TEST(LabPodLifecycle, TeardownRemovesNetnsCgroupsAndChildren) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  auto pod = LabPod::create(PodConfig{});
  pod->startUpstream();
  pod->startSidecar();
  const pid_t sidecar = pod->sidecarPid(), upstream = pod->upstreamPid();
  EXPECT_EQ(labNetns().size(), 4u);  // 2 in `ip netns list`, 2 in /run/netns
  EXPECT_TRUE(fs::is_directory(pod->appCgroup()));
  EXPECT_EQ(childProcesses().size(), 2u);
  auto r = pod->runClient(kAppUid, kAppGid, pod->appCgroup(), pod->upstreamV4(), 1);
  EXPECT_EQ(r.ok, 1) << describe(r);

  const auto start = std::chrono::steady_clock::now();
  pod->teardown();
  pod->teardown();  // idempotent
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - start)
                      .count();
  EXPECT_FALSE(processExists(sidecar));
  EXPECT_FALSE(processExists(upstream));
  EXPECT_EQ(pod->sidecarPid(), -1);
  expectNothingLeft();
  pod.reset();
  expectNothingLeft();
  RecordProperty("teardown_ms", std::to_string(ms));
}

TEST(LabPodLifecycle, FailureHalfwayThroughCreateLeavesNothingBehind) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  // Everything but the last step (ip6tables-restore) succeeds first.
  PodConfig config;
  config.rules_v6 = "*nat\n-A NO_SUCH_CHAIN -j ACCEPT\nCOMMIT\n";
  try {
    LabPod::create(config);
    ADD_FAILURE() << "create() did not fail";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(
        std::string(e.what()).find("ip6tables-restore failed in netns cw-lab-" + myPid() + "-gw: "),
        std::string::npos)
        << e.what();
  }
  expectNothingLeft();
}

TEST(LabPodLifecycle, InvalidPrefixIsRejectedBeforeAnythingIsCreated) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  PodConfig config;
  config.prefix = "../escape";
  EXPECT_THROW(LabPod::create(config), std::invalid_argument);
  expectNothingLeft();
}

TEST(LabPodLifecycle, PodWithoutCaptureRulesLetsAppTrafficOutInPlaintext) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  PodConfig config;
  config.rules_v4 = "";
  config.rules_v6 = "";
  {
    auto pod = LabPod::create(config);
    pod->startUpstream();
    pod->startSidecar();
    auto r = pod->runClient(kAppUid, kAppGid, pod->appCgroup(), pod->upstreamV4(), 3);
    EXPECT_EQ(r.reset, 3) << describe(r);
    const std::string nat = runChecked(
        {"nsenter", "--net=" + pod->podNetnsPath(), "iptables-save", "-t", "nat"}, "iptables-save");
    EXPECT_EQ(nat.find("ISTIO"), std::string::npos) << nat;
  }
  expectNothingLeft();
}

TEST(LabSystem, FindsTheCgroup2Mount) {
  const std::string root = findCgroup2Root();
  struct statfs sfs {};
  ASSERT_EQ(::statfs(root.c_str(), &sfs), 0) << root;
  EXPECT_EQ(static_cast<unsigned long>(sfs.f_type),
            static_cast<unsigned long>(CGROUP2_SUPER_MAGIC));
  EXPECT_TRUE(fs::exists(root + "/cgroup.procs"));
}

TEST(LabSystem, RunCommandPassesStdinAndReportsFailures) {
  CommandResult echo = runCommand({"cat"}, "hello\n");
  EXPECT_EQ(echo.exit_status, 0);
  EXPECT_EQ(echo.out, "hello\n");

  CommandResult missing = runCommand({"cw-lab-no-such-command"});
  EXPECT_EQ(missing.exit_status, 127);

  // Arguments are passed verbatim, never through a shell.
  CommandResult literal = runCommand({"echo", "$(id)", ";", "*"});
  EXPECT_EQ(literal.out, "$(id) ; *\n");

  try {
    runChecked({"ip", "link", "show", "dev", "cw-lab-nodev0"}, "looking up cw-lab-nodev0");
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("looking up cw-lab-nodev0: "), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
  }

  CommandResult slow = runCommand({"sleep", "5"}, "", std::chrono::milliseconds(100));
  EXPECT_TRUE(slow.timed_out);
  EXPECT_EQ(childProcesses(), std::vector<pid_t>{});
}

}  // namespace
}  // namespace cw::lab
