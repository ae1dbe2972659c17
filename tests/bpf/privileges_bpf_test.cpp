// Least privilege, demonstrated. The capabilities deploy/daemonset.yaml adds
// to its container (read from the file with yaml-cpp) are exactly what the
// agent needs:
//
//   - sufficient: the agent runs with only them, as the container runs it (uid
//     0, every other capability dropped from the bounding set, so none of
//     root's file-permission overrides either; no_new_privs), watches a lab
//     pod through /proc/PID/ns/net as Kubernetes mode does, and reports
//     captured and bypassed connections with the reason read from the pod's
//     rules (owner-uid);
//   - each one necessary: without any one of them the agent stops at start,
//     exit status 1, naming the capability; and the kernel itself refuses
//     something the agent does (the BPF load, the rules read, entering the
//     host's cgroup namespace as the DaemonSet's command does) without it;
//   - nothing more: Kubernetes mode's requirements (agent/capabilities.h) are
//     met by the set and unmet without any one of its members.
//
// Capabilities, their bounding set and no_new_privs are attributes of a
// thread: a test thread takes the container's credentials and forks the agent
// (or runs the kernel operations) from there, the rest of the test process
// keeps root's.
#include <gtest/gtest.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <array>
#include <exception>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "bpf_test_util.h"
#include "capabilities.h"
#include "cli.h"
#include "lab/lab_pod.h"
#include "lab/system.h"
#include "pod_rules.h"
#include "probe.h"

namespace cw {
namespace {

using nlohmann::json;
using testutil::AgentProcess;

constexpr int kN = 6;  // connections of each kind

std::string daemonSetPath() { return std::string(CW_FIXTURES) + "/../../deploy/daemonset.yaml"; }

// securityContext.capabilities of the agent's container in deploy/daemonset.yaml.
struct ContainerCapabilities {
  std::vector<std::string> add;   // as written ("SYS_ADMIN")
  std::vector<std::string> drop;  // as written ("ALL")
  CapabilitySet set = 0;          // add, parsed
  std::string problem;            // why the file does not say (empty when it does)
};

ContainerCapabilities daemonSetCapabilities() {
  ContainerCapabilities c;
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAllFromFile(daemonSetPath());
  } catch (const std::exception& e) {
    c.problem = daemonSetPath() + ": " + e.what();
    return c;
  }
  for (const auto& doc : docs) {
    if (!doc.IsMap() || doc["kind"].as<std::string>("") != "DaemonSet") continue;
    const YAML::Node containers = doc["spec"]["template"]["spec"]["containers"];
    if (!containers.IsSequence()) break;
    for (const auto& container : containers) {
      if (container["name"].as<std::string>("") != "capturewatch") continue;
      const YAML::Node caps = container["securityContext"]["capabilities"];
      if (!caps.IsMap()) {
        c.problem = "the capturewatch container sets no securityContext.capabilities";
        return c;
      }
      for (const auto& n : caps["drop"]) c.drop.push_back(n.as<std::string>());
      for (const auto& n : caps["add"]) {
        const std::string name = n.as<std::string>();
        c.add.push_back(name);
        if (auto cap = capabilityFromName(name)) {
          c.set |= capabilityBit(*cap);
        } else {
          c.problem = "unknown capability " + name;
        }
      }
      return c;
    }
  }
  c.problem = "no DaemonSet with a container named capturewatch in " + daemonSetPath();
  return c;
}

std::vector<int> members(CapabilitySet set) {
  std::vector<int> out;
  for (int c = 0; c < 64; ++c) {
    if ((set & capabilityBit(c)) != 0) out.push_back(c);
  }
  return out;
}

std::string names(CapabilitySet set) {
  std::string out;
  for (int c : members(set)) out += (out.empty() ? "" : ", ") + capabilityName(c);
  return out.empty() ? "(none)" : out;
}

int lastCapability() {
  std::ifstream in("/proc/sys/kernel/cap_last_cap");
  int last = CAP_LAST_CAP;
  in >> last;
  return last;
}

// The calling thread takes the credentials of the DaemonSet's container: uid 0
// (unchanged), bounding = permitted = effective = caps, inheritable and
// ambient empty, no_new_privs (allowPrivilegeEscalation: false). A program it
// executes as uid 0 gets exactly caps (capabilities(7): a root execve() gets
// the bounding set).
void confineThisThread(CapabilitySet caps) {
  for (int c = 0; c <= lastCapability(); ++c) {
    if ((caps & capabilityBit(c)) == 0 && ::prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0) {
      throw std::runtime_error("PR_CAPBSET_DROP " + capabilityName(c) + ": " +
                               std::strerror(errno));
    }
  }
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) {
    throw std::runtime_error(std::string("PR_CAP_AMBIENT_CLEAR_ALL: ") + std::strerror(errno));
  }
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  std::array<__user_cap_data_struct, _LINUX_CAPABILITY_U32S_3> data{};
  for (size_t i = 0; i < data.size(); ++i) {
    const auto word = static_cast<uint32_t>(caps >> (32 * i));
    data[i].effective = data[i].permitted = word;
    data[i].inheritable = 0;
  }
  if (::syscall(SYS_capset, &header, data.data()) != 0) {
    throw std::runtime_error("capset to " + names(caps) + ": " + std::strerror(errno));
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    throw std::runtime_error(std::string("PR_SET_NO_NEW_PRIVS: ") + std::strerror(errno));
  }
}

// Runs fn on a thread confined to caps (the calling thread is untouched).
template <typename Fn>
auto confined(CapabilitySet caps, Fn&& fn) -> decltype(fn()) {
  std::optional<decltype(fn())> result;
  std::exception_ptr error;
  std::thread([&] {
    try {
      confineThisThread(caps);
      result.emplace(fn());
    } catch (...) {
      error = std::current_exception();
    }
  }).join();
  if (error) std::rethrow_exception(error);
  return std::move(*result);
}

// A line "Name:\tvalue" of /proc/PID/status text.
std::string statusField(const std::string& status, const std::string& name) {
  std::istringstream in(status);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name + ":", 0) == 0) {
      const size_t start = line.find_first_not_of(" \t", name.size() + 1);
      return start == std::string::npos ? "" : line.substr(start);
    }
  }
  return "";
}

CapabilitySet hexSet(const std::string& hex) {
  return hex.empty() ? ~CapabilitySet{0} : std::stoull(hex, nullptr, 16);
}

RunOptions kubernetesRunOptions() {
  RunOptions o;
  o.kubernetes = true;
  o.node_name = "node-1";
  o.pod_selector = "app=envoy-gateway";
  o.host_proc = "/host/proc";
  return o;
}

auto msgIs(const std::string& msg) {
  return [msg](const json& j) { return j.value("msg", "") == msg; };
}

auto verdictIs(const std::string& v) {
  return
      [v](const json& j) { return j.value("msg", "") == "verdict" && j.value("verdict", "") == v; };
}

// ---- no privileges needed ----------------------------------------------------------------------

TEST(PrivilegeRequirements, DaemonSetGrantsExactlyWhatKubernetesModeNeeds) {
  const ContainerCapabilities granted = daemonSetCapabilities();
  ASSERT_TRUE(granted.problem.empty()) << granted.problem;
  EXPECT_EQ(granted.drop, std::vector<std::string>{"ALL"})
      << "the container must drop every capability and add back only what it uses";
  ASSERT_FALSE(granted.add.empty());
  EXPECT_EQ(members(granted.set).size(), granted.add.size()) << "a capability is listed twice";

  const auto needs = runCapabilityRequirements(kubernetesRunOptions());
  EXPECT_NO_THROW(requireCapabilities(needs, granted.set))
      << "the DaemonSet grants " << names(granted.set);
  // Each one granted is needed: without it a requirement is unmet, and the
  // message names it.
  for (int cap : members(granted.set)) {
    const auto missing = missingCapabilities(needs, granted.set & ~capabilityBit(cap));
    ASSERT_FALSE(missing.empty()) << capabilityName(cap)
                                  << " is granted by the DaemonSet but nothing needs it";
    bool named = false;
    for (const auto& m : missing) named = named || m.find(capabilityName(cap)) != std::string::npos;
    EXPECT_TRUE(named) << capabilityName(cap)
                       << " missing, but the messages say: " << testing::PrintToString(missing);
  }
}

TEST(PrivilegeRequirements, FollowTheOptionsAndSayWhatEachCapabilityIsFor) {
  EXPECT_EQ(capabilityFromName("SYS_ADMIN"), CAP_SYS_ADMIN);
  EXPECT_EQ(capabilityFromName("cap_net_admin"), CAP_NET_ADMIN);
  EXPECT_EQ(capabilityFromName("CAP_BPF"), CAP_BPF);
  EXPECT_EQ(capabilityFromName("perfmon"), CAP_PERFMON);
  EXPECT_EQ(capabilityFromName("NOT_A_CAP"), std::nullopt);
  EXPECT_EQ(capabilityName(CAP_SYS_PTRACE), "CAP_SYS_PTRACE");

  // Static targets by name need no ptrace access; /proc/PID/ns/net does.
  RunOptions by_name;
  by_name.netns_paths = {"/run/netns/gateway"};
  RunOptions by_pid;
  by_pid.netns_paths = {"/run/netns/gateway", "/proc/4242/ns/net"};
  const CapabilitySet three =
      capabilityBit(CAP_SYS_ADMIN) | capabilityBit(CAP_NET_ADMIN) | capabilityBit(CAP_SYS_PTRACE);
  const CapabilitySet no_ptrace = three & ~capabilityBit(CAP_SYS_PTRACE);
  EXPECT_NO_THROW(requireCapabilities(runCapabilityRequirements(by_name), no_ptrace));
  EXPECT_THROW(requireCapabilities(runCapabilityRequirements(by_pid), no_ptrace), CapabilityError);
  EXPECT_THROW(requireCapabilities(runCapabilityRequirements(kubernetesRunOptions()), no_ptrace),
               CapabilityError);

  // The BPF load is met by CAP_BPF + CAP_PERFMON or by CAP_SYS_ADMIN.
  const auto needs = runCapabilityRequirements(by_name);
  const CapabilitySet bpf_only = capabilityBit(CAP_BPF) | capabilityBit(CAP_PERFMON);
  auto missing = missingCapabilities(needs, bpf_only | capabilityBit(CAP_NET_ADMIN));
  ASSERT_EQ(missing.size(), 1u) << testing::PrintToString(missing);
  EXPECT_EQ(missing[0].rfind("missing capability CAP_SYS_ADMIN: needed to enter the watched", 0),
            0u)
      << missing[0];
  missing = missingCapabilities(needs, capabilityBit(CAP_NET_ADMIN));
  ASSERT_EQ(missing.size(), 2u) << testing::PrintToString(missing);
  EXPECT_EQ(missing[0].rfind("missing capabilities CAP_BPF, CAP_PERFMON (or CAP_SYS_ADMIN): "
                             "needed to load and attach the BPF programs",
                             0),
            0u)
      << missing[0];
  missing = missingCapabilities(needs, capabilityBit(CAP_SYS_ADMIN));
  ASSERT_EQ(missing.size(), 1u) << testing::PrintToString(missing);
  EXPECT_NE(missing[0].find("missing capability CAP_NET_ADMIN: needed to read"), std::string::npos);

  // One line, every unmet requirement.
  try {
    requireCapabilities(needs, 0);
    ADD_FAILURE() << "no capabilities at all, and no error";
  } catch (const CapabilityError& e) {
    const std::string text = e.what();
    EXPECT_EQ(text.find('\n'), std::string::npos);
    for (const char* name : {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_NET_ADMIN"}) {
      EXPECT_NE(text.find(name), std::string::npos) << text;
    }
  }
}

// ---- as root: the agent on a lab pod ---------------------------------------------------------

class PrivilegesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(testutil::isRoot()) << "privileged test: run as root";
    granted_ = daemonSetCapabilities();
    ASSERT_TRUE(granted_.problem.empty()) << granted_.problem;
    ASSERT_NE(granted_.set, 0u);
    // This process must hold what it hands on.
    std::ifstream status("/proc/self/status");
    const std::string text((std::istreambuf_iterator<char>(status)), {});
    const CapabilitySet own = hexSet(statusField(text, "CapPrm"));
    ASSERT_EQ(granted_.set & ~own, 0u)
        << "the test process lacks " << names(granted_.set & ~own) << " that the DaemonSet grants";

    lab::PodConfig config;
    config.prefix = "cw-priv";
    config.cgroup_prefix = "capturewatch-priv";
    pod_ = lab::LabPod::create(config);
    pod_->startUpstream();
    pod_->startSidecar();
    // The pod's network namespace as Kubernetes mode finds it: through a
    // process of the pod (the sidecar, uid 1337) in /proc.
    netns_path_ = "/proc/" + std::to_string(pod_->sidecarPid()) + "/ns/net";
  }

  std::vector<std::string> agentArgs(uint16_t port) const {
    return {"run",
            "--netns",
            netns_path_,
            "--proxy-cgroup",
            pod_->sidecarCgroup(),
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--grace-ms",
            "200",
            "--metrics-address",
            "127.0.0.1:" + std::to_string(port)};
  }

  std::unique_ptr<AgentProcess> startConfined(CapabilitySet caps, uint16_t port) {
    return confined(caps, [&] { return std::make_unique<AgentProcess>(agentArgs(port)); });
  }

  ContainerCapabilities granted_;
  std::unique_ptr<lab::LabPod> pod_;
  std::string netns_path_;
};

TEST_F(PrivilegesTest, ProcessesStartedConfinedHaveExactlyTheDaemonSetCapabilities) {
  const auto r = confined(granted_.set, [] {
    return lab::runCommand({"cat", "/proc/self/status"}, "", std::chrono::seconds(5));
  });
  ASSERT_EQ(r.exit_status, 0) << r.err;
  EXPECT_EQ(statusField(r.out, "Uid"), "0\t0\t0\t0") << "the container runs as uid 0";
  for (const char* set : {"CapEff", "CapPrm", "CapBnd"}) {
    EXPECT_EQ(hexSet(statusField(r.out, set)), granted_.set)
        << set << ": " << names(hexSet(statusField(r.out, set))) << ", want "
        << names(granted_.set);
  }
  EXPECT_EQ(hexSet(statusField(r.out, "CapInh")), 0u);
  EXPECT_EQ(hexSet(statusField(r.out, "CapAmb")), 0u);
  EXPECT_EQ(statusField(r.out, "NoNewPrivs"), "1");
  EXPECT_EQ(hexSet(statusField(r.out, "CapEff")) & capabilityBit(CAP_DAC_OVERRIDE), 0u)
      << "root's file-permission override must be gone too";
}

TEST_F(PrivilegesTest, AgentWorksWithOnlyTheDaemonSetCapabilities) {
  const uint16_t port = testutil::freePort();
  auto agent = startConfined(granted_.set, port);
  ASSERT_TRUE(agent->waitForLine(msgIs("ready"), std::chrono::seconds(20)))
      << "with " << names(granted_.set) << ":\n"
      << agent->stderrText();

  const std::string app_cg = pod_->appCgroup();
  const auto captured_calls = pod_->runClient(1000, 1000, app_cg, pod_->upstreamV4(), kN);
  const auto gap_calls = pod_->runClient(1337, 1337, app_cg, pod_->upstreamV4(), kN);
  ASSERT_EQ(captured_calls.ok, kN);
  ASSERT_EQ(gap_calls.reset, kN);

  const auto timeout = std::chrono::seconds(10);
  EXPECT_EQ(agent->waitForCount(verdictIs("captured"), kN, timeout), size_t{kN});
  // owner-uid comes from the pod's own rules: the rules were read, inside its
  // network namespace, with these capabilities.
  auto owner_uid = [](const json& j) {
    return j.value("verdict", "") == "bypassed" && j.value("reason", "") == "owner-uid" &&
           j.value("rule", "") == "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN";
  };
  EXPECT_EQ(agent->waitForCount(owner_uid, kN, timeout), size_t{kN})
      << testing::PrintToString(agent->lines().size()) << " lines; stderr:\n"
      << agent->stderrText();
  EXPECT_EQ(agent->waitForCount(verdictIs("proxy"), kN, timeout), size_t{kN});

  int status = 0;
  const auto metrics = testutil::parseMetrics(testutil::httpGet(port, "/metrics", &status));
  ASSERT_EQ(status, 200);
  EXPECT_EQ(testutil::metricSum(metrics, "capturewatch_rules_reads_total", {"result=\"error\""}),
            0);
  EXPECT_GE(testutil::metricSum(metrics, "capturewatch_rules_reads_total", {"result=\"ok\""}), 1);
  EXPECT_EQ(testutil::metricSum(metrics, "capturewatch_ready"), 1);
  testutil::httpGet(port, "/readyz", &status);
  EXPECT_EQ(status, 200);

  EXPECT_EQ(agent->stop(), 0) << agent->stderrText();
  for (const auto& name : testutil::loadedBpfProgramNames()) {
    EXPECT_EQ(name.find("on_"), std::string::npos) << "left attached: " << name;
  }
}

TEST_F(PrivilegesTest, AgentStopsAtStartNamingEachMissingCapability) {
  for (int cap : members(granted_.set)) {
    SCOPED_TRACE("without " + capabilityName(cap));
    auto agent = startConfined(granted_.set & ~capabilityBit(cap), testutil::freePort());
    const int status = agent->wait(std::chrono::seconds(15));
    const std::string err = agent->stderrText();
    EXPECT_EQ(status, 1) << "stderr:\n" << err;
    EXPECT_NE(err.find("missing capabilit"), std::string::npos) << err;
    EXPECT_NE(err.find(capabilityName(cap)), std::string::npos) << err;
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "one line:\n" << err;
    EXPECT_FALSE(agent->waitForLine(msgIs("ready"), std::chrono::milliseconds(1)))
        << "it started anyway";
  }
}

// What the kernel itself refuses: the agent's own operations, run on a thread
// with the DaemonSet's capabilities minus one.
struct KernelOperation {
  std::string what;
  std::function<std::string()> run;  // "" when it worked, else what went wrong
};

TEST_F(PrivilegesTest, KernelRefusesAnOperationOfTheAgentWithoutEachCapability) {
  const std::string own_cgroupns = "/proc/" + std::to_string(::getpid()) + "/ns/cgroup";
  const std::vector<KernelOperation> operations = {
      {"load and attach the BPF programs (Probe::open)",
       [] {
         try {
           Probe::open(ProbeOptions{}, [](std::span<const uint8_t>) {});
           return std::string();
         } catch (const std::exception& e) {
           return std::string(e.what());
         }
       }},
      {"read the pod's rules through " + netns_path_ +
           " (readRulesText: setns + libnftables, "
           "nsenter --net iptables-nft-save)",
       [this] {
         const RulesText t = readRulesText(netns_path_);
         if (t.iptables_nft_v4.find("ISTIO_OUTPUT") != std::string::npos) return std::string();
         return t.error.empty() ? std::string("no ISTIO_OUTPUT chain read") : t.error;
       }},
      {"enter the host's cgroup namespace (the DaemonSet's command: nsenter --cgroup=...)",
       [&] {
         auto r = lab::runCommand({"nsenter", "--cgroup=" + own_cgroupns, "--", "true"}, "",
                                  std::chrono::seconds(10));
         return r.exit_status == 0 ? std::string()
                                   : "exit " + std::to_string(r.exit_status) + ": " + r.err;
       }},
  };
  auto runAll = [&](CapabilitySet caps) {
    return confined(caps, [&] {
      std::vector<std::string> results;
      for (const auto& op : operations) results.push_back(op.run());
      return results;
    });
  };

  const auto with_all = runAll(granted_.set);
  for (size_t i = 0; i < operations.size(); ++i) {
    EXPECT_EQ(with_all[i], "") << operations[i].what << " fails with " << names(granted_.set);
  }
  std::ostringstream evidence;
  for (int cap : members(granted_.set)) {
    const auto without = runAll(granted_.set & ~capabilityBit(cap));
    bool refused = false;
    evidence << "without " << capabilityName(cap) << ":\n";
    for (size_t i = 0; i < operations.size(); ++i) {
      refused = refused || !without[i].empty();
      evidence << "  " << (without[i].empty() ? "ok     " : "REFUSED") << "  " << operations[i].what
               << (without[i].empty() ? "" : "\n           " + without[i].substr(0, 160)) << "\n";
    }
    EXPECT_TRUE(refused) << "the kernel refuses nothing the agent does without "
                         << capabilityName(cap) << ": is it needed?";
  }
  std::cout << evidence.str();
  RecordProperty("evidence", evidence.str());
}

}  // namespace
}  // namespace cw
