#include "k8s/pod.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../k8s/fake_apiserver.h"

namespace cw::k8s {
namespace {

using testing::fixture;
using testing::fixtureLines;

TEST(ContainerIdTest, StripsRuntimePrefixes) {
  EXPECT_EQ(stripContainerIdPrefix("containerd://8d1f0c3b5a7e"), "8d1f0c3b5a7e");
  EXPECT_EQ(stripContainerIdPrefix("cri-o://8d1f0c3b5a7e"), "8d1f0c3b5a7e");
  EXPECT_EQ(stripContainerIdPrefix("docker://8d1f0c3b5a7e"), "8d1f0c3b5a7e");
  EXPECT_EQ(stripContainerIdPrefix("8d1f0c3b5a7e"), "8d1f0c3b5a7e");
  EXPECT_EQ(stripContainerIdPrefix(""), "");
}

TEST(PodParseTest, PodListOfGatewayPods) {
  const PodList list = parsePodList(fixture("podlist-worker-1.json"));
  EXPECT_EQ(list.resource_version, "48210");
  ASSERT_EQ(list.items.size(), 2u);

  const Pod& pod = list.items[0];
  EXPECT_EQ(pod.uid, "6f1a3c52-0c1e-4d6b-9a37-2b0f6c1d9e44");
  EXPECT_EQ(pod.name, "envoy-gateway-7d9f8c6b5-x2x7q");
  EXPECT_EQ(pod.namespace_, "edge");
  EXPECT_EQ(pod.node_name, "worker-1");
  EXPECT_EQ(pod.phase, "Running");
  EXPECT_TRUE(pod.running());
  EXPECT_EQ(pod.resource_version, "48102");
  EXPECT_EQ(pod.labels.at("app"), "envoy-gateway");
  EXPECT_EQ(pod.labels.at("security.istio.io/tlsMode"), "istio");
  EXPECT_EQ(pod.pod_ips, std::vector<std::string>{"10.244.1.23"});
  EXPECT_FALSE(pod.host_network);
  EXPECT_EQ(pod.workload_kind, "Deployment");
  EXPECT_EQ(pod.workload, "envoy-gateway");

  // istio-init (an ordinary init container) is left out.
  ASSERT_EQ(pod.containers.size(), 2u);
  EXPECT_EQ(pod.containers[0].name, "envoy");
  EXPECT_EQ(pod.containers[0].container_id,
            "8d1f0c3b5a7e9d2c4b6a8f0e1d3c5b7a9e2f4d6c8b0a1e3f5d7c9b2a4e6f8d0c");
  EXPECT_EQ(pod.containers[0].image, "docker.io/envoyproxy/envoy:v1.30.4");
  EXPECT_TRUE(pod.containers[0].running);
  EXPECT_TRUE(pod.containers[0].ready);
  const Container* proxy = pod.container("istio-proxy");
  ASSERT_NE(proxy, nullptr);
  EXPECT_EQ(proxy->container_id,
            "3e5a7c9b1d2f4e6a8c0b2d4f6e8a1c3b5d7f9e2a4c6b8d0f1e3a5c7b9d2f4e6a");
  EXPECT_FALSE(proxy->native_sidecar);
  EXPECT_EQ(pod.container("istio-init"), nullptr);

  EXPECT_EQ(list.items[1].name, "envoy-gateway-7d9f8c6b5-k4n8m");
}

TEST(PodParseTest, EmptyPodList) {
  const PodList list = parsePodList(fixture("podlist-empty.json"));
  EXPECT_EQ(list.resource_version, "48210");
  EXPECT_TRUE(list.items.empty());
}

TEST(PodParseTest, CrioPodOfDaemonSet) {
  const Pod pod = parsePod(fixture("pod-crio-daemonset.json"));
  EXPECT_EQ(pod.workload_kind, "DaemonSet");
  EXPECT_EQ(pod.workload, "node-gateway");
  ASSERT_NE(pod.container("istio-proxy"), nullptr);
  EXPECT_EQ(pod.container("istio-proxy")->container_id,
            "f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f");
}

TEST(PodParseTest, DockerPodOfJob) {
  const Pod pod = parsePod(fixture("pod-docker-job.json"));
  EXPECT_EQ(pod.workload_kind, "Job");
  EXPECT_EQ(pod.workload, "smoke-test-28771560");
  EXPECT_EQ(pod.containers.at(0).container_id,
            "b2d4f6a8c0e1d3f5a7c9e2b4d6f8a0c1e3d5f7b9a2c4e6d8f0b1a3c5e7d9f2b4");
}

TEST(PodParseTest, NativeSidecarFromInitContainerStatuses) {
  const Pod pod = parsePod(fixture("pod-native-sidecar.json"));
  EXPECT_EQ(pod.workload, "envoy-gateway");
  ASSERT_EQ(pod.containers.size(), 2u);
  const Container* proxy = pod.container("istio-proxy");
  ASSERT_NE(proxy, nullptr);
  EXPECT_TRUE(proxy->native_sidecar);
  EXPECT_TRUE(proxy->running);
  EXPECT_EQ(pod.container("istio-init"), nullptr);
}

TEST(PodParseTest, BarePendingPodIsItsOwnWorkload) {
  const Pod pod = parsePod(fixture("pod-bare-pending.json"));
  EXPECT_EQ(pod.workload_kind, "Pod");
  EXPECT_EQ(pod.workload, "debug-curl");
  EXPECT_EQ(pod.phase, "Pending");
  EXPECT_FALSE(pod.running());
  EXPECT_TRUE(pod.pod_ips.empty());
  ASSERT_EQ(pod.containers.size(), 1u);
  EXPECT_EQ(pod.containers[0].container_id, "");  // not created yet
  EXPECT_FALSE(pod.containers[0].running);
}

nlohmann::json metadataWithOwner(const std::string& kind, const std::string& name, bool controller,
                                 const std::string& template_hash = "") {
  nlohmann::json md = {{"name", "p-1"}};
  md["ownerReferences"] = {{{"apiVersion", "apps/v1"},
                            {"kind", kind},
                            {"name", name},
                            {"uid", "b3e1f0a4-5d2c-4e8b-9f61-2a7c0d9e4b13"},
                            {"controller", controller},
                            {"blockOwnerDeletion", true}}};
  if (!template_hash.empty()) md["labels"] = {{"pod-template-hash", template_hash}};
  return md;
}

TEST(WorkloadTest, ReplicaSetOfDeploymentBecomesTheDeployment) {
  const Workload w = workloadOf(metadataWithOwner("ReplicaSet", "gw-7d9f8c6b5", true, "7d9f8c6b5"));
  EXPECT_EQ(w.kind, "Deployment");
  EXPECT_EQ(w.name, "gw");
  // Dashes in the Deployment's own name stay.
  const Workload multi =
      workloadOf(metadataWithOwner("ReplicaSet", "envoy-gateway-7d9f8c6b5", true, "7d9f8c6b5"));
  EXPECT_EQ(multi.name, "envoy-gateway");
}

TEST(WorkloadTest, ReplicaSetWithoutHashLabelLosesItsLastSegment) {
  const Workload w = workloadOf(metadataWithOwner("ReplicaSet", "gw-7d9f8c6b5", true));
  EXPECT_EQ(w.kind, "Deployment");
  EXPECT_EQ(w.name, "gw");
}

TEST(WorkloadTest, StandaloneReplicaSetStaysAReplicaSet) {
  // The pod-template-hash label does not match the name: not made by a Deployment.
  const Workload w =
      workloadOf(metadataWithOwner("ReplicaSet", "frontend-blue", true, "5d8f7c6b9"));
  EXPECT_EQ(w.kind, "ReplicaSet");
  EXPECT_EQ(w.name, "frontend-blue");
  const Workload plain = workloadOf(metadataWithOwner("ReplicaSet", "frontend", true));
  EXPECT_EQ(plain.kind, "ReplicaSet");
  EXPECT_EQ(plain.name, "frontend");
}

TEST(WorkloadTest, OtherControllersAsTheyAre) {
  for (const char* kind : {"DaemonSet", "StatefulSet", "Job", "ReplicationController"}) {
    const Workload w = workloadOf(metadataWithOwner(kind, "edge-gw-1", true));
    EXPECT_EQ(w.kind, kind);
    EXPECT_EQ(w.name, "edge-gw-1");
  }
}

TEST(WorkloadTest, NonControllerOwnerIsIgnored) {
  const Workload w =
      workloadOf(metadataWithOwner("ReplicaSet", "gw-7d9f8c6b5", false, "7d9f8c6b5"));
  EXPECT_EQ(w.kind, "Pod");
  EXPECT_EQ(w.name, "p-1");
}

TEST(WatchEventTest, StreamOfAddedModifiedDeletedBookmark) {
  const std::vector<std::string> lines = fixtureLines("watch-worker-1.jsonl");
  ASSERT_EQ(lines.size(), 5u);

  const WatchEvent added = parseWatchEvent(lines[0]);
  EXPECT_EQ(added.type, WatchEvent::Type::Added);
  EXPECT_EQ(added.pod.name, "edge-gateway-0");
  EXPECT_EQ(added.pod.workload_kind, "StatefulSet");
  EXPECT_EQ(added.pod.workload, "edge-gateway");
  EXPECT_EQ(added.pod.phase, "Pending");
  EXPECT_EQ(added.resource_version, "48230");
  EXPECT_EQ(added.pod.containers.at(0).container_id, "");  // ContainerCreating

  const WatchEvent running = parseWatchEvent(lines[1]);
  EXPECT_EQ(running.type, WatchEvent::Type::Modified);
  EXPECT_EQ(running.pod.phase, "Running");
  EXPECT_FALSE(running.pod.container("istio-proxy")->container_id.empty());

  const WatchEvent restarted = parseWatchEvent(lines[2]);
  EXPECT_EQ(restarted.type, WatchEvent::Type::Modified);
  EXPECT_EQ(restarted.pod.container("istio-proxy")->restart_count, 1);
  EXPECT_EQ(restarted.pod.container("istio-proxy")->container_id,
            "7c9e1a3b5d7f9e2c4a6b8d0f1e3c5a7b9d2f4e6a8c0b1d3f5e7a9c2b4d6f8e0a");

  const WatchEvent deleted = parseWatchEvent(lines[3]);
  EXPECT_EQ(deleted.type, WatchEvent::Type::Deleted);
  EXPECT_EQ(deleted.pod.uid, "c2d4e6f8-1a3b-4c5d-8e7f-9a0b1c2d3e4f");
  EXPECT_EQ(deleted.resource_version, "48255");

  const WatchEvent bookmark = parseWatchEvent(lines[4]);
  EXPECT_EQ(bookmark.type, WatchEvent::Type::Bookmark);
  EXPECT_EQ(bookmark.resource_version, "48260");
  EXPECT_FALSE(bookmark.gone());
}

TEST(WatchEventTest, ExpiredErrorEventIsGone) {
  const WatchEvent ev = parseWatchEvent(fixtureLines("watch-expired.jsonl").at(0));
  EXPECT_EQ(ev.type, WatchEvent::Type::Error);
  EXPECT_TRUE(ev.gone());
  EXPECT_EQ(ev.status.code, 410);
  EXPECT_EQ(ev.status.reason, "Expired");
  EXPECT_EQ(ev.status.message, "too old resource version: 48210 (48390)");
  EXPECT_TRUE(ev.resource_version.empty());
}

TEST(WatchEventTest, OtherErrorEventIsNotGone) {
  const WatchEvent ev = parseWatchEvent(
      R"({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},)"
      R"("status":"Failure","message":"etcdserver: request timed out","code":500}})");
  EXPECT_EQ(ev.type, WatchEvent::Type::Error);
  EXPECT_FALSE(ev.gone());
  EXPECT_EQ(ev.status.code, 500);
}

TEST(StatusTest, ParsesStatusBodies) {
  const auto unauthorized = parseStatus(fixture("status-401.json"));
  ASSERT_TRUE(unauthorized.has_value());
  EXPECT_EQ(unauthorized->code, 401);
  EXPECT_EQ(unauthorized->reason, "Unauthorized");
  const auto forbidden = parseStatus(fixture("status-403.json"));
  ASSERT_TRUE(forbidden.has_value());
  EXPECT_EQ(forbidden->code, 403);
  EXPECT_NE(forbidden->message.find("cannot list resource \"pods\""), std::string::npos);
  EXPECT_FALSE(parseStatus(fixture("podlist-empty.json")).has_value());
  EXPECT_FALSE(parseStatus("<html>502 Bad Gateway</html>").has_value());
}

TEST(PodParseTest, RejectsMalformedInput) {
  for (const char* text :
       {"", "{", "[]", "null", R"({"kind":"Pod","metadata":{"name":"x"}})",  // no uid
        R"({"metadata":{"uid":"u","labels":{"a":1}}})",                      // label not a string
        R"({"metadata":{"uid":"u"},"status":{"containerStatuses":{}}})",     // not an array
        R"({"metadata":{"uid":"u"},"status":{"containerStatuses":[{"restartCount":"1"}]}})",
        R"({"metadata":{"uid":"u"},"status":{"containerStatuses":[{"restartCount":1e300}]}})",
        R"({"metadata":{"uid":"u"},"status":{"containerStatuses":[{"restartCount":9999999999}]}})",
        R"({"kind":"Service","metadata":{"uid":"u"}})"}) {
    EXPECT_THROW(parsePod(std::string_view(text)), ParseError) << text;
  }
}

TEST(PodParseTest, RejectsMalformedLists) {
  EXPECT_THROW(parsePodList(fixture("status-403.json")), ParseError);
  EXPECT_THROW(parsePodList(R"({"kind":"PodList","items":{}})"), ParseError);
  EXPECT_THROW(parsePodList(R"({"kind":"PodList","items":[{"metadata":{}}]})"), ParseError);
  EXPECT_THROW(parsePodList(R"({"kind":"ServiceList","items":[]})"), ParseError);
}

TEST(WatchEventTest, RejectsMalformedEvents) {
  for (const char* text : {"", "{}", R"({"type":"ADDED"})", R"({"type":"ADDED","object":[]})",
                           R"({"type":"SYNC","object":{}})", R"({"type":1,"object":{}})",
                           R"({"type":"ADDED","object":{"metadata":{}}})"}) {
    EXPECT_THROW(parseWatchEvent(text), ParseError) << text;
  }
}

}  // namespace
}  // namespace cw::k8s
