// End to end in Kubernetes mode: the capturewatch binary discovers a gateway
// pod through a fake API server (HTTPS on loopback, answering with JSON shaped
// like a real kube-apiserver's), finds the pod's processes in cgroup v2
// directories laid out as kubelet lays them out (systemd and cgroupfs
// drivers) below a "capturewatch-test-k8s-<pid>" directory, and watches the
// pod's network namespace, a lab pod with Istio's own rules, a sidecar on
// 15001 (uid 1337) in the istio-proxy container's cgroup and a strict-mTLS
// upstream. Verdicts, logs and metrics must carry the pod's Kubernetes
// identity; deleting the pod stops the watch; losing the API server does not.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bpf/bpf.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>

#include "../k8s/fake_apiserver.h"
#include "bpf_test_util.h"
#include "lab/lab_pod.h"
#include "lab/spawn.h"
#include "lab/system.h"

namespace cw {
namespace {

using nlohmann::json;
using testutil::AgentProcess;
using namespace std::chrono_literals;
namespace kt = k8s::testing;

constexpr int kN = 6;  // connections of each kind
constexpr auto kWait = std::chrono::seconds(15);

const std::string kNamespace = "gateway";
const std::string kWorkload = "envoy-gateway";
const std::string kPodName = "envoy-gateway-7d9f8c6b5-x2x7q";      // podlist-gateway.template.json
const std::string kBarePodName = "envoy-gateway-5c8b7d9f4-q7wz2";  // ...-nosidecar.template.json
const std::string kSelector = "app=envoy-gateway";
const std::string kToken = "cw-test-token-7f3a9c";

enum class Driver { Systemd, Cgroupfs };

std::string driverName(Driver d) { return d == Driver::Systemd ? "systemd" : "cgroupfs"; }

std::string randomHex(size_t n) {
  static std::mt19937_64 rng{std::random_device{}()};
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) out.push_back(digits[rng() % 16]);
  return out;
}

// A version-4 UUID, as the API server assigns pod UIDs.
std::string randomPodUid() {
  std::string h = randomHex(32);
  h[12] = '4';
  h[16] = "89ab"[std::stoi(h.substr(16, 1), nullptr, 16) % 4];
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) +
         "-" + h.substr(20);
}

// The cgroup of one container relative to the cgroup2 root, as kubelet (with
// containerd) lays it out, below `top`.
std::string containerCgroup(Driver driver, const std::string& top, const std::string& qos,
                            const std::string& pod_uid, const std::string& container_id) {
  if (driver == Driver::Systemd) {
    std::string uid = pod_uid;
    std::replace(uid.begin(), uid.end(), '-', '_');
    return top + "/kubepods.slice/kubepods-" + qos + ".slice/kubepods-" + qos + "-pod" + uid +
           ".slice/cri-containerd-" + container_id + ".scope";
  }
  return top + "/kubepods/" + qos + "/pod" + pod_uid + "/" + container_id;
}

void replaceAll(std::string& text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
}

uint64_t inodeOf(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
}

bool isWarning(const json& j) {
  const std::string level = j.value("level", "");
  return level == "warning" || level == "warn";
}

auto msgIs(const std::string& msg) {
  return [msg](const json& j) { return j.value("msg", "") == msg; };
}

auto verdictIs(const std::string& v) {
  return
      [v](const json& j) { return j.value("msg", "") == "verdict" && j.value("verdict", "") == v; };
}

std::vector<json> select(const std::vector<json>& lines,
                         const std::function<bool(const json&)>& pred) {
  std::vector<json> out;
  std::copy_if(lines.begin(), lines.end(), std::back_inserter(out), pred);
  return out;
}

std::string label(const std::string& name, const std::string& value) {
  return name + "=\"" + value + "\"";
}

// The API server of the test: a PodList for GET /api/v1/pods (optionally held
// back until releaseList(), to observe the agent before its first sync),
// watches held open for publish(). Requests without the bearer token get the
// API server's 401.
class FakeCluster {
 public:
  FakeCluster(std::string list, bool hold_list) : list_(std::move(list)), released_(!hold_list) {
    server_ = std::make_unique<kt::FakeApiServer>(
        [this](const kt::FakeRequest& req) { return handle(req); });
  }
  ~FakeCluster() { stopServer(); }
  FakeCluster(const FakeCluster&) = delete;
  FakeCluster& operator=(const FakeCluster&) = delete;

  kt::FakeApiServer& server() { return *server_; }

  void setList(std::string list) {
    std::lock_guard<std::mutex> lock(mu_);
    list_ = std::move(list);
  }
  void releaseList() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      released_ = true;
    }
    cv_.notify_all();
  }
  // The API server goes away: held watches are cut, connections refused.
  void stopServer() {
    releaseList();
    server_.reset();
  }

  // Writes a kubeconfig for the server (its CA in a file next to it, a
  // bearer token) into dir; returns its path.
  std::string writeKubeconfig(const kt::TempDir& dir) const {
    dir.write("ca.crt", server_->caPem());
    return dir.write("kubeconfig",
                     "apiVersion: v1\n"
                     "kind: Config\n"
                     "clusters:\n"
                     "- cluster:\n"
                     "    certificate-authority: ca.crt\n"
                     "    server: " +
                         server_->url() +
                         "\n"
                         "  name: fake\n"
                         "contexts:\n"
                         "- context:\n"
                         "    cluster: fake\n"
                         "    user: capturewatch\n"
                         "  name: fake\n"
                         "current-context: fake\n"
                         "users:\n"
                         "- name: capturewatch\n"
                         "  user:\n"
                         "    token: " +
                         kToken + "\n");
  }

 private:
  kt::FakeResponse handle(const kt::FakeRequest& req) {
    auto auth = req.headers.find("authorization");
    if (auth == req.headers.end() || auth->second != "Bearer " + kToken) {
      return kt::FakeResponse::json(401, kt::fixture("status-401.json"));
    }
    if (req.path != "/api/v1/pods") {
      return kt::FakeResponse::json(
          404,
          R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)"
          R"("message":"the server could not find the requested resource","reason":"NotFound",)"
          R"("details":{},"code":404})");
    }
    if (req.isWatch()) return kt::FakeResponse::stream({}, kt::FakeResponse::End::Hold);
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, 30s, [this] { return released_; });
    return kt::FakeResponse::json(200, list_);
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::string list_;
  bool released_;
  std::unique_ptr<kt::FakeApiServer> server_;
};

class KubernetesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(testutil::isRoot()) << "privileged test: run as root";
    node_ = "cw-test-node-" + std::to_string(::getpid());
    top_ = "capturewatch-test-k8s-" + std::to_string(::getpid());
    pod_uid_ = randomPodUid();
    app_id_ = randomHex(64);
    proxy_id_ = randomHex(64);
  }

  void TearDown() override {
    agent_.reset();
    cluster_.reset();
    app_process_.kill();
    if (pod_) {
      const std::string top_dir = pod_->cgroup2Root() + "/" + top_;
      pod_.reset();
      struct stat st {};
      EXPECT_NE(::stat(top_dir.c_str(), &st), 0) << "cgroup left behind: " << top_dir;
    }
  }

  // The pod: its netns with Istio's rules (none without a sidecar), the
  // strict-mTLS upstream, the sidecar in the istio-proxy container's cgroup
  // and a long-running app process in the envoy container's cgroup.
  void buildPod(Driver driver, const std::string& qos, bool with_sidecar) {
    lab::PodConfig config;
    config.prefix = "cw-k8s";
    config.app_cgroup = containerCgroup(driver, top_, qos, pod_uid_, app_id_);
    if (with_sidecar) {
      config.sidecar_cgroup = containerCgroup(driver, top_, qos, pod_uid_, proxy_id_);
    } else {
      config.sidecar_cgroup = config.app_cgroup;  // no sidecar: nothing runs there
      config.rules_v4.clear();
      config.rules_v6.clear();
    }
    pod_ = lab::LabPod::create(config);
    pod_->startUpstream();
    if (with_sidecar) pod_->startSidecar();

    const lab::SpawnOptions options = testutil::appSpawnOptions(*pod_);
    app_process_ = lab::spawnInPod(options, [](int fd) {
      lab::writeFrame(fd, lab::kFrameReady, "");
      ::sleep(600);  // killed by the test; dies with its thread in any case
    });
    const lab::Frame f =
        lab::readFrame(app_process_.reportFd(), std::chrono::steady_clock::now() + 5s);
    ASSERT_TRUE(f.status == lab::Frame::Status::kOk && f.type == lab::kFrameReady)
        << "app process did not start: " << f.payload;
  }

  // A fixture template with this run's node, pod UID and container IDs.
  std::string render(const std::string& name) const {
    std::string text = kt::fixture(name);
    replaceAll(text, "{{NODE_NAME}}", node_);
    replaceAll(text, "{{POD_UID}}", pod_uid_);
    replaceAll(text, "{{APP_CONTAINER_ID}}", app_id_);
    replaceAll(text, "{{PROXY_CONTAINER_ID}}", proxy_id_);
    EXPECT_EQ(text.find("{{"), std::string::npos) << name;
    return text;
  }

  void startCluster(const std::string& list, bool hold_list) {
    cluster_ = std::make_unique<FakeCluster>(list, hold_list);
    kubeconfig_ = cluster_->writeKubeconfig(tmp_);
  }

  void startAgent() {
    metrics_port_ = testutil::freePort();
    agent_ = std::make_unique<AgentProcess>(std::vector<std::string>{
        "run", "--kubernetes", "--node-name", node_, "--pod-selector", kSelector, "--kubeconfig",
        kubeconfig_, "--log-format", "json", "--log-level", "debug", "--grace-ms", "200",
        "--metrics-address", "127.0.0.1:" + std::to_string(metrics_port_)});
    ASSERT_TRUE(agent_->waitForLine(msgIs("ready"), 20s)) << agent_->stderrText();
  }

  // Waits until the agent logs that it watches `pod`; returns the line.
  json waitWatching(const std::string& pod) {
    auto watching = [&](const json& j) {
      return j.value("msg", "") == "watching" && j.value("pod", "") == pod;
    };
    EXPECT_TRUE(agent_->waitForLine(watching, kWait))
        << agent_->stdoutText() << agent_->stderrText();
    auto lines = select(agent_->lines(), watching);
    return lines.empty() ? json::object() : lines.front();
  }

  std::map<std::string, double> metrics(std::string* text = nullptr) {
    int status = 0;
    const std::string body = testutil::httpGet(metrics_port_, "/metrics", &status);
    EXPECT_EQ(status, 200);
    if (text != nullptr) *text = body;
    return testutil::parseMetrics(body);
  }

  // Polls /metrics until pred holds (bounded); returns whether it did.
  bool waitForMetrics(const std::function<bool(const std::map<std::string, double>&)>& pred,
                      std::chrono::milliseconds timeout = kWait) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (pred(metrics())) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(100ms);
    }
  }

  int readyz(std::string* body = nullptr) {
    int status = 0;
    std::string text = testutil::httpGet(metrics_port_, "/readyz", &status);
    if (body != nullptr) *body = text;
    return status;
  }

  bool waitForReady(std::chrono::milliseconds timeout = kWait) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (readyz() != 200) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(50ms);
    }
    return true;
  }

  // Every verdict line carries the pod's Kubernetes identity.
  void expectIdentity(const std::vector<json>& verdicts, const std::string& pod) {
    for (const auto& j : verdicts) {
      EXPECT_EQ(j.value("namespace", ""), kNamespace) << j.dump();
      EXPECT_EQ(j.value("pod", ""), pod) << j.dump();
      EXPECT_EQ(j.value("workload", ""), kWorkload) << j.dump();
    }
  }

  // The gateway's traffic: kN calls as uid 1000 (captured) and kN as uid
  // 1337 (bypassed: Istio exempts the proxy's UID), both from the app
  // container's cgroup; the sidecar makes kN upstream connections (proxy).
  void makeTraffic() {
    auto app = pod_->runClient(1000, 1000, pod_->appCgroup(), pod_->upstreamV4(), kN);
    auto gap = pod_->runClient(1337, 1337, pod_->appCgroup(), pod_->upstreamV4(), kN);
    ASSERT_EQ(app.ok, kN) << "captured calls go through the sidecar's mTLS";
    ASSERT_EQ(gap.reset, kN) << "the uid-1337 app's plaintext is reset by the strict upstream";
  }

  // Waits for the verdicts of makeTraffic() (beyond `before` of each kind)
  // and checks them.
  void expectTrafficVerdicts(const std::map<std::string, size_t>& before) {
    const auto at = [&](const char* v) {
      auto it = before.find(v);
      return it == before.end() ? size_t{0} : it->second;
    };
    EXPECT_EQ(agent_->waitForCount(verdictIs("captured"), at("captured") + kN, kWait),
              at("captured") + kN);
    EXPECT_EQ(agent_->waitForCount(verdictIs("bypassed"), at("bypassed") + kN, kWait),
              at("bypassed") + kN);
    EXPECT_EQ(agent_->waitForCount(verdictIs("proxy"), at("proxy") + kN, kWait), at("proxy") + kN);
    std::this_thread::sleep_for(400ms);  // let a late duplicate show up if there were one
    const auto lines = agent_->lines();
    const auto captured = select(lines, verdictIs("captured"));
    const auto bypassed = select(lines, verdictIs("bypassed"));
    const auto proxy = select(lines, verdictIs("proxy"));
    EXPECT_EQ(captured.size(), at("captured") + kN);
    EXPECT_EQ(bypassed.size(), at("bypassed") + kN);
    EXPECT_EQ(proxy.size(), at("proxy") + kN);
    expectIdentity(select(lines, msgIs("verdict")), kPodName);
    for (const auto& j : captured) {
      EXPECT_EQ(j["uid"], 1000) << j.dump();
      EXPECT_EQ(j["dst"], pod_->upstreamV4().str()) << j.dump();
    }
    for (const auto& j : bypassed) {
      EXPECT_EQ(j["uid"], 1337) << j.dump();
      EXPECT_EQ(j["reason"], "owner-uid") << j.dump();
      EXPECT_EQ(j["dst"], pod_->upstreamV4().str()) << j.dump();
    }
    // The sidecar's own upstream connections: its cgroup, the istio-proxy
    // container's, was taken as the proxy cgroup.
    for (const auto& j : proxy) {
      EXPECT_EQ(j["uid"], 1337) << j.dump();
      EXPECT_EQ(j["pid"], pod_->sidecarPid()) << j.dump();
    }
  }

  std::map<std::string, size_t> verdictCounts() {
    std::map<std::string, size_t> counts;
    for (const auto& j : select(agent_->lines(), msgIs("verdict"))) {
      ++counts[j.value("verdict", "")];
    }
    return counts;
  }

  std::string node_, top_, pod_uid_, app_id_, proxy_id_;
  std::unique_ptr<lab::LabPod> pod_;
  lab::ChildProcess app_process_;  // killed before the pod is torn down
  kt::TempDir tmp_;
  std::string kubeconfig_;
  std::unique_ptr<FakeCluster> cluster_;
  std::unique_ptr<AgentProcess> agent_;
  uint16_t metrics_port_ = 0;
};

class KubernetesDriverTest : public KubernetesTest, public ::testing::WithParamInterface<Driver> {};

// 1 and 2: discovery through the API server and the kubelet cgroup layout,
// verdicts labelled with the pod's identity, then the pod's deletion.
TEST_P(KubernetesDriverTest, WatchesTheSelectedPodLabelsItsVerdictsAndForgetsItWhenDeleted) {
  ASSERT_NO_FATAL_FAILURE(buildPod(GetParam(), "burstable", /*with_sidecar=*/true));
  startCluster(render("podlist-gateway.template.json"), /*hold_list=*/true);
  ASSERT_NO_FATAL_FAILURE(startAgent());

  // Not ready while the first list is unanswered.
  ASSERT_TRUE(cluster_->server().waitForRequests(1, kWait));
  std::string body;
  EXPECT_EQ(readyz(&body), 503);
  EXPECT_NE(body.find("targets not synced"), std::string::npos) << body;
  const kt::FakeRequest list = cluster_->server().requests().front();
  EXPECT_EQ(list.path, "/api/v1/pods");
  EXPECT_FALSE(list.isWatch());
  EXPECT_EQ(list.param("fieldSelector"), "spec.nodeName=" + node_);
  EXPECT_EQ(list.param("labelSelector"), kSelector);

  cluster_->releaseList();
  EXPECT_TRUE(waitForReady()) << "/readyz not 200 after the list";
  const json watching = waitWatching(kPodName);
  EXPECT_EQ(watching.value("namespace", ""), kNamespace) << watching.dump();
  EXPECT_EQ(watching.value("netns", uint64_t{0}), inodeOf(pod_->podNetnsPath())) << watching.dump();
  EXPECT_TRUE(waitForMetrics([](const auto& m) {
    return testutil::metricSum(m, "capturewatch_kubernetes_watch_up") == 1 &&
           testutil::metricSum(m, "capturewatch_watched_targets") == 1;
  }));
  EXPECT_EQ(select(agent_->lines(), msgIs("pod not resolvable yet")).size(), 0u)
      << "the pod's processes were there before the agent started";

  ASSERT_NO_FATAL_FAILURE(makeTraffic());
  expectTrafficVerdicts({});

  const std::string name = "capturewatch_connections_total";
  const std::vector<std::string> pod = {label("namespace", kNamespace), label("pod", kPodName),
                                        label("workload", kWorkload)};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), pod.begin(), pod.end());
    return extra;
  };
  auto m = metrics();
  EXPECT_EQ(testutil::metricSum(m, name, with({label("verdict", "captured")})), kN);
  EXPECT_EQ(testutil::metricSum(m, name,
                                with({label("verdict", "bypassed"), label("reason", "owner-uid")})),
            kN);
  EXPECT_EQ(testutil::metricSum(m, name, with({label("verdict", "proxy")})), kN);
  EXPECT_EQ(testutil::metricSum(m, name), 3 * kN) << "every series carries the pod's labels";
  EXPECT_EQ(testutil::metricSum(m, "capturewatch_pods_without_sidecar"), 0);

  // 2. The pod is deleted: a DELETED event on the open watch.
  ASSERT_TRUE(cluster_->server().waitForHeldWatches(1, kWait)) << "the agent is not watching";
  cluster_->setList(kt::fixture("podlist-empty.json"));
  std::string deleted = render("watch-gateway-deleted.template.jsonl");
  deleted.erase(deleted.find_last_not_of('\n') + 1);
  cluster_->server().publish(deleted);
  auto gone = [](const json& j) {
    return j.value("msg", "") == "pod gone: stop watching" && j.value("pod", "") == kPodName;
  };
  ASSERT_TRUE(agent_->waitForLine(gone, kWait)) << agent_->stdoutText();
  const auto gone_line = select(agent_->lines(), gone).front();
  EXPECT_EQ(gone_line.value("namespace", ""), kNamespace);

  // Its metric series go away; nothing is watched any more.
  std::string text;
  EXPECT_TRUE(waitForMetrics([&](const auto& now) {
    metrics(&text);
    return testutil::metricSum(now, "capturewatch_watched_targets") == 0 &&
           text.find(label("pod", kPodName)) == std::string::npos;
  })) << text;

  // Connections in the pod's netns produce no verdict any more.
  const size_t verdicts_before = select(agent_->lines(), msgIs("verdict")).size();
  auto app = pod_->runClient(1000, 1000, pod_->appCgroup(), pod_->upstreamV4(), 2);
  auto gap = pod_->runClient(1337, 1337, pod_->appCgroup(), pod_->upstreamV4(), 2);
  EXPECT_EQ(app.ok, 2);
  EXPECT_EQ(gap.reset, 2);
  std::this_thread::sleep_for(1s);  // five grace windows
  EXPECT_EQ(select(agent_->lines(), msgIs("verdict")).size(), verdicts_before)
      << agent_->stdoutText();
  EXPECT_EQ(testutil::metricSum(metrics(), name), 0);

  EXPECT_EQ(agent_->stop(), 0) << agent_->stderrText();
}

INSTANTIATE_TEST_SUITE_P(CgroupDrivers, KubernetesDriverTest,
                         ::testing::Values(Driver::Systemd, Driver::Cgroupfs),
                         [](const ::testing::TestParamInfo<Driver>& info) {
                           return driverName(info.param);
                         });

// 3. The API server goes away mid-run: the known pod stays watched.
TEST_F(KubernetesTest, KeepsReportingKnownPodsWhileTheApiServerIsGone) {
  ASSERT_NO_FATAL_FAILURE(buildPod(Driver::Systemd, "burstable", /*with_sidecar=*/true));
  startCluster(render("podlist-gateway.template.json"), /*hold_list=*/false);
  ASSERT_NO_FATAL_FAILURE(startAgent());
  waitWatching(kPodName);
  ASSERT_TRUE(cluster_->server().waitForHeldWatches(1, kWait)) << "the agent is not watching";
  EXPECT_TRUE(waitForMetrics([](const auto& m) {
    return testutil::metricSum(m, "capturewatch_kubernetes_watch_up") == 1;
  }));

  cluster_->stopServer();  // the watch is cut, new connections are refused
  EXPECT_TRUE(waitForMetrics([](const auto& m) {
    return testutil::metricSum(m, "capturewatch_kubernetes_watch_up") == 0;
  })) << agent_->stdoutText();
  auto disconnected = [](const json& j) {
    return j.value("msg", "") == "kubernetes watch" && j.value("state", "") == "disconnected";
  };
  EXPECT_TRUE(agent_->waitForLine(disconnected, kWait)) << agent_->stdoutText();
  EXPECT_TRUE(isWarning(select(agent_->lines(), disconnected).front()));

  // Verdicts for the known pod keep coming, with its identity.
  ASSERT_NO_FATAL_FAILURE(makeTraffic());
  expectTrafficVerdicts({});
  auto m = metrics();
  EXPECT_EQ(testutil::metricSum(m, "capturewatch_connections_total",
                                {label("pod", kPodName), label("verdict", "captured")}),
            kN);
  EXPECT_EQ(testutil::metricSum(m, "capturewatch_watched_targets"), 1);
  EXPECT_GE(testutil::metricSum(m, "capturewatch_kubernetes_watch_restarts_total"), 1);
  EXPECT_EQ(testutil::metricSum(m, "capturewatch_kubernetes_watch_up"), 0);
  // It synced once: still ready (scrapes and the DaemonSet's endpoints stay).
  EXPECT_EQ(readyz(), 200);
  EXPECT_EQ(select(agent_->lines(), msgIs("pod gone: stop watching")).size(), 0u);

  EXPECT_EQ(agent_->stop(), 0) << agent_->stderrText();
}

// 4. A selected pod without the istio-proxy container: reported, and its
// plaintext connections seen for what they are.
TEST_F(KubernetesTest, ReportsASelectedPodWithoutSidecar) {
  ASSERT_NO_FATAL_FAILURE(buildPod(Driver::Cgroupfs, "besteffort", /*with_sidecar=*/false));
  startCluster(render("podlist-gateway-nosidecar.template.json"), /*hold_list=*/false);
  ASSERT_NO_FATAL_FAILURE(startAgent());
  waitWatching(kBarePodName);

  auto no_sidecar = [](const json& j) {
    return j.value("msg", "") == "selected pod has no sidecar: nothing can capture its traffic";
  };
  ASSERT_TRUE(agent_->waitForLine(no_sidecar, kWait)) << agent_->stdoutText();
  const auto warn = select(agent_->lines(), no_sidecar);
  ASSERT_EQ(warn.size(), 1u);
  EXPECT_TRUE(isWarning(warn[0])) << warn[0].dump();
  EXPECT_EQ(warn[0].value("namespace", ""), kNamespace);
  EXPECT_EQ(warn[0].value("pod", ""), kBarePodName);
  EXPECT_EQ(warn[0].value("workload", ""), kWorkload);
  EXPECT_EQ(warn[0].value("sidecar_container", ""), "istio-proxy");

  const std::vector<std::string> pod = {label("namespace", kNamespace), label("pod", kBarePodName),
                                        label("workload", kWorkload)};
  std::string text;
  EXPECT_TRUE(waitForMetrics([&](const auto& m) {
    metrics(&text);
    return testutil::metricSum(m, "capturewatch_pods_without_sidecar", pod) == 1;
  })) << text;

  // Nothing captures its traffic: plaintext straight to the strict upstream.
  auto r = pod_->runClient(1000, 1000, pod_->appCgroup(), pod_->upstreamV4(), 2);
  EXPECT_EQ(r.reset, 2);
  EXPECT_EQ(agent_->waitForCount(verdictIs("bypassed"), 2, kWait), 2u) << agent_->stdoutText();
  const auto bypassed = select(agent_->lines(), verdictIs("bypassed"));
  expectIdentity(bypassed, kBarePodName);
  for (const auto& j : bypassed) EXPECT_EQ(j.value("reason", ""), "no-capture-rules") << j.dump();
  EXPECT_EQ(select(agent_->lines(), verdictIs("captured")).size(), 0u);

  EXPECT_EQ(agent_->stop(), 0) << agent_->stderrText();
}

// The agent process's resident memory (KiB) and open descriptors.
struct ProcessUse {
  long rss_kib = -1;
  long fds = -1;
};
ProcessUse processUse(pid_t pid) {
  ProcessUse u;
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) u.rss_kib = std::stol(line.substr(6));
  }
  std::error_code ec;
  u.fds = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++u.fds;
  }
  return u;
}

// Soak: gateway pods come and go (ADDED, traffic, DELETED, torn down) for
// CW_SOAK_SECONDS (default 15; `scripts/dev soak` runs 600), each with a new
// UID, new container IDs and a new network namespace, while connections
// churn. The agent's RSS, open descriptors and owner-map occupancy stay
// flat, every cycle's verdicts are exact, and nothing is left behind.
TEST_F(KubernetesTest, SoakPodsComeAndGoWhileConnectionsChurn) {
  const char* env = std::getenv("CW_SOAK_SECONDS");
  const int seconds = env != nullptr ? std::max(1, std::atoi(env)) : 15;
  startCluster(kt::fixture("podlist-empty.json"), /*hold_list=*/false);
  ASSERT_NO_FATAL_FAILURE(startAgent());
  ASSERT_TRUE(cluster_->server().waitForHeldWatches(1, kWait)) << "the agent is not watching";

  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  std::vector<ProcessUse> use;
  std::vector<long> owners;
  size_t expected_captured = 0, expected_bypassed = 0;
  int cycle = 0;
  for (; cycle < 2 || std::chrono::steady_clock::now() < end; ++cycle) {
    SCOPED_TRACE("cycle " + std::to_string(cycle));
    pod_uid_ = randomPodUid();
    app_id_ = randomHex(64);
    proxy_id_ = randomHex(64);
    ASSERT_NO_FATAL_FAILURE(
        buildPod(cycle % 2 == 0 ? Driver::Systemd : Driver::Cgroupfs, "burstable", true));
    const std::string name = kPodName + "-c" + std::to_string(cycle);
    auto item = json::parse(render("podlist-gateway.template.json"))["items"][0];
    item["kind"] = "Pod";
    item["apiVersion"] = "v1";
    std::string added = json{{"type", "ADDED"}, {"object", item}}.dump();
    std::string deleted = render("watch-gateway-deleted.template.jsonl");
    deleted.erase(deleted.find_last_not_of('\n') + 1);
    replaceAll(added, kPodName, name);
    replaceAll(deleted, kPodName, name);

    cluster_->server().publish(added);
    waitWatching(name);
    for (int round = 0; round < 3; ++round) ASSERT_NO_FATAL_FAILURE(makeTraffic());
    expected_captured += 3 * kN;
    expected_bypassed += 3 * kN;
    EXPECT_EQ(agent_->waitForCount(verdictIs("captured"), expected_captured, kWait),
              expected_captured);
    EXPECT_EQ(agent_->waitForCount(verdictIs("bypassed"), expected_bypassed, kWait),
              expected_bypassed);

    cluster_->server().publish(deleted);
    auto gone = [&](const json& j) {
      return j.value("msg", "") == "pod gone: stop watching" && j.value("pod", "") == name;
    };
    ASSERT_TRUE(agent_->waitForLine(gone, kWait)) << agent_->stdoutText();
    app_process_.kill();
    pod_.reset();
    ASSERT_TRUE(waitForMetrics([](const auto& m) {
      return testutil::metricSum(m, "capturewatch_watched_targets") == 0;
    }));
    use.push_back(processUse(agent_->pid()));
    owners.push_back(testutil::bpfOwnerEntries());
  }
  const auto lines = agent_->lines();
  EXPECT_EQ(select(lines, verdictIs("captured")).size(), expected_captured);
  EXPECT_EQ(select(lines, verdictIs("bypassed")).size(), expected_bypassed);

  // Flat: over the second half of the run RSS grows by less than 2 MiB,
  // descriptors do not pile up, and the owner map holds nothing once every
  // pod is gone (each closed socket's entry is deleted).
  std::string series;
  for (size_t i = 0; i < use.size(); ++i) {
    series += " [" + std::to_string(i) + "] rss " + std::to_string(use[i].rss_kib) + " KiB, fds " +
              std::to_string(use[i].fds) + ", owners " + std::to_string(owners[i]) + ";";
  }
  std::printf("[soak] %d cycles in %d s:%s\n", cycle, seconds, series.c_str());
  ASSERT_GE(use.size(), 2u);
  const size_t mid = use.size() / 2;
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer keeps freed memory in quarantine (up to 256 MiB), so RSS
  // grows by design there; LeakSanitizer checks leaks at the agent's exit.
  std::printf("[soak] RSS not checked under AddressSanitizer\n");
#else
  EXPECT_LT(use.back().rss_kib - use[mid].rss_kib, 2048) << series;
#endif
  // A descriptor or two come and go with in-flight work (a scrape being served).
  long max_fds = 0;
  for (size_t i = mid; i < use.size(); ++i) max_fds = std::max(max_fds, use[i].fds);
  EXPECT_LE(max_fds, use[1].fds + 2) << series;
  EXPECT_GE(owners.back(), 0) << series;
  EXPECT_LE(owners.back(), 2) << series;

  const std::string out = agent_->stdoutText();
  EXPECT_EQ(agent_->stop(), 0) << agent_->stderrText() << out.substr(out.size() > 3000 ? out.size() - 3000 : 0);
  EXPECT_EQ(testutil::agentProgramsLoaded(), 0);
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/run/netns", ec)) {
    EXPECT_NE(e.path().filename().string().rfind("cw-k8s-", 0), 0u)
        << "namespace left behind: " << e.path();
  }
}

// The lab pod's cgroup options the tests above rely on: nested directories
// below the cgroup2 root, created as needed and removed deepest first; a
// parent that existed before is used and left alone; a directory that exists
// already is refused (teardown would kill what is in it).
TEST(LabPodCgroupLayout, NestedDirectoriesAreCreatedAndRemovedDeepestFirst) {
  ASSERT_TRUE(testutil::isRoot()) << "privileged test: run as root";
  const std::string root = lab::findCgroup2Root();
  const std::string top = "capturewatch-test-k8s-layout-" + std::to_string(::getpid());
  ASSERT_EQ(::mkdir((root + "/" + top).c_str(), 0755), 0) << std::strerror(errno);
  struct RemoveTop {
    std::string dir;
    ~RemoveTop() { ::rmdir(dir.c_str()); }
  } remove_top{root + "/" + top};

  lab::PodConfig config;
  config.prefix = "cw-k8s-layout";
  config.sidecar_cgroup = top + "/kubepods/burstable/pod" + randomPodUid() + "/" + randomHex(64);
  config.app_cgroup = "/" + top + "/kubepods/burstable/pod" + randomPodUid() + "/" + randomHex(64);
  auto pod = lab::LabPod::create(config);
  EXPECT_EQ(pod->sidecarCgroup(), root + "/" + config.sidecar_cgroup);
  EXPECT_EQ(pod->appCgroup(), root + config.app_cgroup);
  pod->startSidecar();
  std::ifstream cgroup("/proc/" + std::to_string(pod->sidecarPid()) + "/cgroup");
  std::stringstream text;
  text << cgroup.rdbuf();
  EXPECT_NE(text.str().find("0::/" + config.sidecar_cgroup + "\n"), std::string::npos)
      << text.str();

  lab::PodConfig same = config;
  same.prefix = "cw-k8s-layout2";
  EXPECT_THROW(lab::LabPod::create(same), std::runtime_error);
  struct stat st {};
  EXPECT_EQ(::stat(pod->sidecarCgroup().c_str(), &st), 0) << "the first pod's cgroup was removed";

  pod->teardown();
  EXPECT_NE(::stat((root + "/" + top + "/kubepods").c_str(), &st), 0) << "left behind";
  EXPECT_EQ(::stat((root + "/" + top).c_str(), &st), 0) << "a parent it did not create was removed";

  const std::vector<std::string> bad_paths = {
      "/", "a//b", "..", "a/../b", "a/./b", "a/b/", "a b", "a/b\nc", std::string(256, 'a')};
  for (const std::string& bad : bad_paths) {
    lab::PodConfig c;
    c.app_cgroup = bad;
    EXPECT_THROW(lab::LabPod::create(c), std::invalid_argument) << bad;
  }
}

}  // namespace
}  // namespace cw
