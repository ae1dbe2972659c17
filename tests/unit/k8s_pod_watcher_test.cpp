#include "k8s/pod_watcher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../k8s/fake_apiserver.h"
#include "k8s/backoff.h"
#include "k8s/line_splitter.h"

namespace cw::k8s {
namespace {

using namespace std::chrono_literals;
using testing::FakeApiServer;
using testing::FakeApiServerOptions;
using testing::FakeRequest;
using testing::FakeResponse;
using testing::fixture;
using testing::fixtureLines;
using Clock = std::chrono::steady_clock;

constexpr const char* kUid1 = "6f1a3c52-0c1e-4d6b-9a37-2b0f6c1d9e44";  // envoy-gateway-...-x2x7q
constexpr const char* kUid2 = "c2d4e6f8-1a3b-4c5d-8e7f-9a0b1c2d3e4f";  // envoy-gateway-...-k4n8m
constexpr const char* kUid3 = "0b7e3f1d-92c4-4a6e-b5d8-7f3a1c9e2d60";  // edge-gateway-0

// ---------------------------------------------------------------- helpers

// Answers list requests and watch requests from two scripts; the last
// answer of each repeats once its script is used up.
class ScriptedApi {
 public:
  ScriptedApi(std::vector<FakeResponse> lists, std::vector<FakeResponse> watches)
      : lists_(std::move(lists)), watches_(std::move(watches)) {}

  FakeResponse answer(const FakeRequest& req) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<FakeResponse>& script = req.isWatch() ? watches_ : lists_;
    size_t& next = req.isWatch() ? next_watch_ : next_list_;
    const size_t i = std::min(next++, script.size() - 1);
    return script[i];
  }

 private:
  std::mutex mutex_;
  std::vector<FakeResponse> lists_;
  std::vector<FakeResponse> watches_;
  size_t next_list_ = 0;
  size_t next_watch_ = 0;
};

// What the callbacks were told, in order.
class Recorder {
 public:
  PodWatcherCallbacks callbacks() {
    PodWatcherCallbacks cb;
    cb.upsert = [this](const Pod& pod) { add("upsert " + pod.name + " " + pod.resource_version); };
    cb.remove = [this](const std::string& uid) { add("remove " + uid); };
    cb.synced = [this] { add("synced"); };
    cb.state_changed = [this](const WatchStatus& s) {
      add(std::string("state ") + connectionStateName(s.state), &s.message);
    };
    return cb;
  }

  std::vector<std::string> log() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return log_;
  }
  std::vector<std::string> messages() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return messages_;
  }
  size_t count(const std::string& entry) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<size_t>(std::count(log_.begin(), log_.end(), entry));
  }
  // Waits until `entry` has been recorded `times` times.
  bool waitFor(const std::string& entry, size_t times = 1, std::chrono::milliseconds timeout = 5s) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] {
      return static_cast<size_t>(std::count(log_.begin(), log_.end(), entry)) >= times;
    });
  }

 private:
  void add(std::string entry, const std::string* message = nullptr) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      log_.push_back(std::move(entry));
      if (message != nullptr) messages_.push_back(*message);
    }
    cv_.notify_all();
  }
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::string> log_;
  std::vector<std::string> messages_;
};

PodWatcherOptions optionsFor(const FakeApiServer& server) {
  PodWatcherOptions o;
  o.cluster.server = server.url();
  o.cluster.ca_data = server.caPem();
  o.cluster.token = "test-token";
  o.cluster.source = "test credentials";
  o.node_name = "worker-1";
  o.selector = LabelSelector::parse("app=envoy-gateway");
  o.backoff_initial = 100ms;
  o.backoff_max = 400ms;
  o.auth_retry = 300ms;
  return o;
}

std::vector<FakeRequest> requestsOf(const FakeApiServer& server, bool watch) {
  std::vector<FakeRequest> out;
  for (const FakeRequest& r : server.requests()) {
    if (r.isWatch() == watch) out.push_back(r);
  }
  return out;
}

FakeResponse podList(const char* name = "podlist-worker-1.json") {
  return FakeResponse::json(200, fixture(name));
}

FakeResponse heldWatch(std::vector<std::string> lines = {}) {
  return FakeResponse::stream(std::move(lines), FakeResponse::End::Hold);
}

std::vector<std::string> watchLines() { return fixtureLines("watch-worker-1.jsonl"); }

// ------------------------------------------------------------------ tests

TEST(PodWatcherTest, ListThenWatchDeliversUpsertsAndDeletes) {
  ScriptedApi api({podList()}, {heldWatch(watchLines()), heldWatch()});
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  Recorder rec;
  PodWatcher watcher(optionsFor(server), rec.callbacks());
  watcher.start();

  ASSERT_TRUE(rec.waitFor("remove " + std::string(kUid2)));
  ASSERT_TRUE(server.waitForHeldWatches(1, 5s));
  const std::vector<std::string> expected = {
      "upsert envoy-gateway-7d9f8c6b5-x2x7q 48102",
      "upsert envoy-gateway-7d9f8c6b5-k4n8m 48117",
      "state connected",
      "synced",
      "upsert edge-gateway-0 48230",                 // ADDED, Pending
      "upsert edge-gateway-0 48236",                 // MODIFIED: running
      "upsert envoy-gateway-7d9f8c6b5-x2x7q 48241",  // MODIFIED: sidecar restarted
      "remove " + std::string(kUid2),                // DELETED
  };
  EXPECT_EQ(rec.log(), expected);
  EXPECT_TRUE(watcher.hasSynced());

  const std::map<std::string, Pod> pods = watcher.pods();
  ASSERT_EQ(pods.size(), 2u);
  EXPECT_EQ(pods.at(kUid1).resource_version, "48241");
  EXPECT_EQ(pods.at(kUid3).phase, "Running");
  EXPECT_EQ(pods.at(kUid3).workload, "edge-gateway");

  // The requests a real API server would see.
  const std::vector<FakeRequest> lists = requestsOf(server, false);
  ASSERT_EQ(lists.size(), 1u);
  EXPECT_EQ(lists[0].path, "/api/v1/pods");
  EXPECT_EQ(lists[0].param("fieldSelector"), "spec.nodeName=worker-1");
  EXPECT_EQ(lists[0].param("labelSelector"), "app=envoy-gateway");
  EXPECT_EQ(lists[0].param("resourceVersion"), "0");
  EXPECT_NE(lists[0].target.find("fieldSelector=spec.nodeName%3Dworker-1"), std::string::npos)
      << lists[0].target;
  EXPECT_EQ(lists[0].headers.at("authorization"), "Bearer test-token");
  EXPECT_EQ(lists[0].headers.at("accept"), "application/json");
  const std::vector<FakeRequest> watches = requestsOf(server, true);
  ASSERT_EQ(watches.size(), 1u);
  EXPECT_EQ(watches[0].param("resourceVersion"), "48210");
  EXPECT_EQ(watches[0].param("allowWatchBookmarks"), "true");
  EXPECT_EQ(watches[0].param("labelSelector"), "app=envoy-gateway");
  const int timeout = std::stoi(watches[0].param("timeoutSeconds"));
  EXPECT_GE(timeout, 300);
  EXPECT_LT(timeout, 600);

  // The server ends the watch (its timeout): resumed from the bookmark.
  server.endWatches(/*drop=*/false);
  ASSERT_TRUE(server.waitForRequests(3, 5s));
  EXPECT_EQ(requestsOf(server, true).at(1).param("resourceVersion"), "48260");

  const PodWatcherStats stats = watcher.stats();
  EXPECT_EQ(stats.lists, 1u);
  EXPECT_EQ(stats.events, 5u);
  EXPECT_EQ(stats.parse_errors, 0u);
  EXPECT_EQ(stats.relists_gone, 0u);
  watcher.stop();
}

TEST(PodWatcherTest, GoneErrorEventTriggersAConsistentRelist) {
  ScriptedApi api({podList(), podList("podlist-worker-1-relist.json")},
                  {heldWatch(fixtureLines("watch-expired.jsonl")), heldWatch()});
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  Recorder rec;
  PodWatcher watcher(optionsFor(server), rec.callbacks());
  watcher.start();

  ASSERT_TRUE(rec.waitFor("synced", 2));
  ASSERT_TRUE(server.waitForRequests(4, 5s));
  // The relist: P2 deleted meanwhile, P1 changed, edge-gateway-0 new.
  const std::vector<std::string> log = rec.log();
  const std::vector<std::string> after_relist(log.begin() + 4, log.end());
  EXPECT_EQ(after_relist, (std::vector<std::string>{"upsert envoy-gateway-7d9f8c6b5-x2x7q 48241",
                                                    "upsert edge-gateway-0 48236",
                                                    "remove " + std::string(kUid2), "synced"}));
  const std::vector<FakeRequest> lists = requestsOf(server, false);
  ASSERT_EQ(lists.size(), 2u);
  EXPECT_EQ(lists[1].params.count("resourceVersion"), 0u);  // the latest state, not the cache
  EXPECT_EQ(requestsOf(server, true).at(1).param("resourceVersion"), "48390");
  EXPECT_EQ(watcher.stats().relists_gone, 1u);
  EXPECT_EQ(watcher.stats().lists, 2u);
  EXPECT_EQ(watcher.pods().size(), 2u);
}

TEST(PodWatcherTest, GoneHttpStatusTriggersARelist) {
  ScriptedApi api({podList(), podList("podlist-worker-1-relist.json")},
                  {FakeResponse::json(410, fixture("status-410-expired.json")), heldWatch()});
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  Recorder rec;
  PodWatcher watcher(optionsFor(server), rec.callbacks());
  watcher.start();

  ASSERT_TRUE(rec.waitFor("synced", 2));
  EXPECT_EQ(rec.count("remove " + std::string(kUid2)), 1u);
  EXPECT_EQ(watcher.stats().relists_gone, 1u);
  EXPECT_EQ(rec.count("state disconnected") + rec.count("state error"), 0u);
}

TEST(PodWatcherTest, DroppedConnectionReconnectsWithBackoffAndKeepsPods) {
  const std::vector<std::string> lines = watchLines();
  ScriptedApi api({podList()},
                  {
                      // Two events, then the connection drops mid-stream.
                      FakeResponse::stream({lines[0], lines[1]}, FakeResponse::End::Drop),
                      // The API server is away: connections closed unanswered.
                      FakeResponse::hangUp(),
                      FakeResponse::hangUp(),
                      FakeResponse::hangUp(),
                      // Back: the rest of the events.
                      heldWatch({lines[2], lines[3], lines[4]}),
                  });
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  Recorder rec;
  PodWatcher watcher(optionsFor(server), rec.callbacks());
  watcher.start();

  ASSERT_TRUE(rec.waitFor("state disconnected"));
  // While the API server is away the pods stay known.
  EXPECT_EQ(watcher.pods().size(), 3u);
  EXPECT_EQ(watcher.status().state, ConnectionState::Disconnected);

  ASSERT_TRUE(rec.waitFor("remove " + std::string(kUid2)));
  EXPECT_EQ(watcher.status().state, ConnectionState::Connected);
  EXPECT_EQ(rec.count("synced"), 1u);  // resumed, never listed again
  EXPECT_EQ(watcher.stats().lists, 1u);
  EXPECT_EQ(watcher.stats().reconnects, 4u);

  const std::vector<FakeRequest> watches = requestsOf(server, true);
  ASSERT_EQ(watches.size(), 5u);
  for (size_t i = 1; i < watches.size(); ++i) {
    // Resumed from the last event before the drop.
    EXPECT_EQ(watches[i].param("resourceVersion"), "48236") << i;
    // Each retry waits at least the initial backoff (100 ms), at most the maximum (400 ms).
    const auto gap = watches[i].received - watches[i - 1].received;
    EXPECT_GE(gap, 95ms) << i;
    EXPECT_LT(gap, 1500ms) << i;
  }
  const std::map<std::string, Pod> pods = watcher.pods();
  EXPECT_EQ(pods.size(), 2u);
  EXPECT_EQ(pods.at(kUid1).resource_version, "48241");
  EXPECT_EQ(pods.count(kUid3), 1u);
  const std::vector<std::string> messages = rec.messages();
  const bool told = std::any_of(messages.begin(), messages.end(), [&](const std::string& m) {
    return m.find("watch pods at " + server.url()) != std::string::npos;
  });
  EXPECT_TRUE(told);
}

TEST(PodWatcherTest, UnauthorizedIsReportedAndRetriedSlowly) {
  ScriptedApi api({FakeResponse::json(401, fixture("status-401.json")), podList()}, {heldWatch()});
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  Recorder rec;
  PodWatcher watcher(optionsFor(server), rec.callbacks());
  watcher.start();

  ASSERT_TRUE(rec.waitFor("state error"));
  const std::string message = rec.messages().at(0);
  EXPECT_NE(message.find("list pods at " + server.url() + ": HTTP 401 Unauthorized"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("rejected the credentials of test credentials"), std::string::npos)
      << message;
  EXPECT_FALSE(watcher.hasSynced());

  ASSERT_TRUE(rec.waitFor("synced"));
  const std::vector<FakeRequest> lists = requestsOf(server, false);
  ASSERT_EQ(lists.size(), 2u);
  EXPECT_GE(lists[1].received - lists[0].received, 290ms);  // auth_retry, not the backoff
  EXPECT_EQ(watcher.status().state, ConnectionState::Connected);
  EXPECT_EQ(watcher.stats().auth_errors, 1u);
}

TEST(PodWatcherTest, ForbiddenNamesTheMissingPermission) {
  ScriptedApi api({FakeResponse::json(403, fixture("status-403.json"))}, {heldWatch()});
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  Recorder rec;
  PodWatcher watcher(optionsFor(server), rec.callbacks());
  watcher.start();

  ASSERT_TRUE(rec.waitFor("state error"));
  const std::string message = rec.messages().at(0);
  EXPECT_NE(message.find("HTTP 403 Forbidden: pods is forbidden"), std::string::npos) << message;
  EXPECT_NE(message.find("ClusterRole"), std::string::npos) << message;
  watcher.stop();
  EXPECT_EQ(rec.count("state error"), 1u);  // reported once, not on every retry
}

TEST(PodWatcherTest, StopReturnsPromptlyFromASilentWatch) {
  ScriptedApi api({podList()}, {heldWatch()});
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  Recorder rec;
  PodWatcher watcher(optionsFor(server), rec.callbacks());
  watcher.start();
  ASSERT_TRUE(server.waitForHeldWatches(1, 5s));

  const auto start = Clock::now();
  watcher.stop();
  EXPECT_LT(Clock::now() - start, 1s);
  EXPECT_EQ(watcher.pods().size(), 2u);
}

TEST(PodWatcherTest, StopReturnsPromptlyDuringBackoff) {
  ScriptedApi api({FakeResponse::hangUp()}, {heldWatch()});
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  Recorder rec;
  PodWatcherOptions options = optionsFor(server);
  options.backoff_initial = 20s;
  options.backoff_max = 30s;
  PodWatcher watcher(options, rec.callbacks());
  watcher.start();
  ASSERT_TRUE(rec.waitFor("state disconnected"));

  const auto start = Clock::now();
  watcher.stop();
  EXPECT_LT(Clock::now() - start, 1s);
}

TEST(PodWatcherTest, StopReturnsPromptlyDuringTheTlsHandshake) {
  // A listener that completes TCP handshakes (backlog) but never answers.
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);

  PodWatcherOptions options;
  options.cluster.server = "https://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  Recorder rec;
  PodWatcher watcher(options, rec.callbacks());
  watcher.start();
  std::this_thread::sleep_for(300ms);
  const auto start = Clock::now();
  watcher.stop();
  EXPECT_LT(Clock::now() - start, 1s);
  EXPECT_EQ(rec.count("state disconnected") + rec.count("state error"), 0u);  // still waiting
  ::close(fd);
}

TEST(PodWatcherTest, BadLinesAreCountedAndSkipped) {
  const std::vector<std::string> lines = watchLines();
  FakeResponse stream = heldWatch({
      "this is not JSON",
      R"({"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"x"}}})",
      R"({"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"big","uid":"u","annotations":{"a":")" +
          std::string(100 * 1024, 'x') + R"("}}}})",
      lines[0],
  });
  stream.max_chunk = 4096;  // lines arrive in pieces
  ScriptedApi api({podList()}, {stream});
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  Recorder rec;
  PodWatcherOptions options = optionsFor(server);
  options.max_event_bytes = 64 * 1024;
  PodWatcher watcher(options, rec.callbacks());
  watcher.start();

  ASSERT_TRUE(rec.waitFor("upsert edge-gateway-0 48230"));
  const PodWatcherStats stats = watcher.stats();
  EXPECT_EQ(stats.parse_errors, 2u);
  EXPECT_EQ(stats.oversize_events, 0u);  // counted when the watch ends
  watcher.stop();
  EXPECT_EQ(watcher.stats().oversize_events, 1u);
  EXPECT_EQ(watcher.pods().size(), 3u);
}

TEST(PodWatcherTest, ErrorEventOtherThanGoneResumesAfterBackoff) {
  const std::string error =
      R"({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},)"
      R"("status":"Failure","message":"etcdserver: request timed out","reason":"InternalError",)"
      R"("code":500}})";
  ScriptedApi api({podList()}, {heldWatch({watchLines()[0], error}), heldWatch()});
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  Recorder rec;
  PodWatcher watcher(optionsFor(server), rec.callbacks());
  watcher.start();

  ASSERT_TRUE(rec.waitFor("state error"));
  ASSERT_TRUE(server.waitForRequests(3, 5s));
  const std::vector<FakeRequest> watches = requestsOf(server, true);
  EXPECT_EQ(watches.at(1).param("resourceVersion"), "48230");
  EXPECT_GE(watches[1].received - watches[0].received, 95ms);
  EXPECT_NE(rec.messages().at(1).find("etcdserver: request timed out"), std::string::npos);
  EXPECT_EQ(watcher.stats().lists, 1u);
  ASSERT_TRUE(rec.waitFor("state connected", 2));
}

TEST(PodWatcherTest, PodsThatStopMatchingAreRemoved) {
  nlohmann::json relabelled = nlohmann::json::parse(watchLines()[2]);  // MODIFIED x2x7q
  relabelled["object"]["metadata"]["labels"]["app"] = "something-else";
  relabelled["object"]["metadata"]["resourceVersion"] = "48300";
  nlohmann::json elsewhere = nlohmann::json::parse(watchLines()[0]);  // ADDED edge-gateway-0
  elsewhere["object"]["spec"]["nodeName"] = "worker-2";
  ScriptedApi api({podList()}, {heldWatch({elsewhere.dump(), relabelled.dump()})});
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  Recorder rec;
  PodWatcher watcher(optionsFor(server), rec.callbacks());
  watcher.start();

  ASSERT_TRUE(rec.waitFor("remove " + std::string(kUid1)));
  EXPECT_EQ(rec.count("upsert edge-gateway-0 48230"), 0u);
  EXPECT_EQ(watcher.pods().size(), 1u);
}

TEST(PodWatcherTest, NamespacedCollectionAndNoSelectors) {
  ScriptedApi api({podList()}, {heldWatch()});
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  Recorder rec;
  PodWatcherOptions options = optionsFor(server);
  options.namespace_ = "edge";
  options.node_name.clear();
  options.selector = LabelSelector();
  PodWatcher watcher(options, rec.callbacks());
  watcher.start();
  ASSERT_TRUE(server.waitForHeldWatches(1, 5s));
  const FakeRequest list = requestsOf(server, false).at(0);
  EXPECT_EQ(list.path, "/api/v1/namespaces/edge/pods");
  EXPECT_EQ(list.params.count("fieldSelector"), 0u);
  EXPECT_EQ(list.params.count("labelSelector"), 0u);
  EXPECT_EQ(requestsOf(server, true).at(0).path, "/api/v1/namespaces/edge/pods");
}

TEST(PodWatcherTest, SelectorIsUrlEncoded) {
  ScriptedApi api({podList()}, {heldWatch()});
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  Recorder rec;
  PodWatcherOptions options = optionsFor(server);
  options.selector = LabelSelector::parse("app in (envoy-gateway,gw),!canary");
  PodWatcher watcher(options, rec.callbacks());
  watcher.start();
  ASSERT_TRUE(server.waitForHeldWatches(1, 5s));
  const FakeRequest list = requestsOf(server, false).at(0);
  EXPECT_EQ(list.param("labelSelector"), "app in (envoy-gateway,gw),!canary");
  EXPECT_NE(list.target.find("labelSelector=app%20in%20%28envoy-gateway%2Cgw%29%2C%21canary"),
            std::string::npos)
      << list.target;
  EXPECT_EQ(watcher.pods().size(), 2u);
}

TEST(PodWatcherTest, ClientCertificateAuthentication) {
  ScriptedApi api({podList()}, {heldWatch()});
  FakeApiServerOptions server_options;
  server_options.require_client_cert = true;
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); }, server_options);

  // Inline PEM data, as client-certificate-data / client-key-data give it.
  {
    Recorder rec;
    PodWatcherOptions options = optionsFor(server);
    options.cluster.token.clear();
    options.cluster.client_cert_data = server.clientCertPem();
    options.cluster.client_key_data = server.clientKeyPem();
    PodWatcher watcher(options, rec.callbacks());
    watcher.start();
    ASSERT_TRUE(rec.waitFor("synced"));
  }
  // Files, as certificate-authority / client-certificate / client-key give them.
  {
    testing::TempDir dir;
    Recorder rec;
    PodWatcherOptions options = optionsFor(server);
    options.cluster.token.clear();
    options.cluster.ca_data.clear();
    options.cluster.ca_file = dir.write("ca.crt", server.caPem());
    options.cluster.client_cert_file = dir.write("client.crt", server.clientCertPem());
    options.cluster.client_key_file = dir.write("client.key", server.clientKeyPem());
    PodWatcher watcher(options, rec.callbacks());
    watcher.start();
    ASSERT_TRUE(rec.waitFor("synced"));
  }
  const FakeRequest first = server.requests().at(0);
  EXPECT_EQ(first.client_cert_subject, "system:node:fake-node");
  EXPECT_EQ(first.headers.count("authorization"), 0u);
}

TEST(PodWatcherTest, UntrustedServerIsAnErrorUnlessVerificationIsOff) {
  ScriptedApi api({podList()}, {heldWatch()});
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  {
    Recorder rec;
    PodWatcherOptions options = optionsFor(server);
    options.cluster.ca_data.clear();  // the system's CAs do not know the fake one
    PodWatcher watcher(options, rec.callbacks());
    watcher.start();
    ASSERT_TRUE(rec.waitFor("state error"));
    EXPECT_NE(rec.messages().at(0).find("certificate"), std::string::npos) << rec.messages().at(0);
    EXPECT_EQ(server.requests().size(), 0u);
  }
  {
    Recorder rec;
    PodWatcherOptions options = optionsFor(server);
    options.cluster.ca_data.clear();
    options.cluster.insecure_skip_tls_verify = true;
    PodWatcher watcher(options, rec.callbacks());
    watcher.start();
    ASSERT_TRUE(rec.waitFor("synced"));
  }
}

TEST(PodWatcherTest, TokenFileIsReadForEachRequest) {
  testing::TempDir dir;
  ScriptedApi api({podList()},
                  {FakeResponse::stream({}, FakeResponse::End::Complete), heldWatch()});
  FakeApiServer server([&](const FakeRequest& r) { return api.answer(r); });
  Recorder rec;
  PodWatcherOptions options = optionsFor(server);
  options.cluster.token = "old";
  options.cluster.token_file = dir.write("token", "rotated-1\n");
  PodWatcher watcher(options, rec.callbacks());
  watcher.start();
  ASSERT_TRUE(rec.waitFor("synced"));
  dir.write("token", "rotated-2\n");
  ASSERT_TRUE(server.waitForHeldWatches(1, 5s));
  const std::vector<FakeRequest> requests = server.requests();
  EXPECT_EQ(requests.at(0).headers.at("authorization"), "Bearer rotated-1");
  EXPECT_EQ(requests.back().headers.at("authorization"), "Bearer rotated-2");
}

// ------------------------------------------------------- stream support

TEST(LineSplitterTest, SplitsAcrossChunks) {
  LineSplitter splitter(16);
  std::vector<std::string> lines;
  const auto sink = [&](std::string_view l) {
    lines.emplace_back(l);
    return true;
  };
  EXPECT_TRUE(splitter.feed("ab", sink));
  EXPECT_TRUE(splitter.feed("c\nde", sink));
  EXPECT_EQ(splitter.pending(), 2u);
  EXPECT_TRUE(splitter.feed("f\r\n\n\ng\n", sink));
  EXPECT_EQ(lines, (std::vector<std::string>{"abc", "def", "g"}));
  EXPECT_EQ(splitter.pending(), 0u);
}

TEST(LineSplitterTest, DropsOversizeLinesUpToTheirEnd) {
  LineSplitter splitter(8);
  std::vector<std::string> lines;
  const auto sink = [&](std::string_view l) {
    lines.emplace_back(l);
    return true;
  };
  splitter.feed("12345", sink);
  splitter.feed("6789abc", sink);  // now too long
  splitter.feed("def\nok\n", sink);
  splitter.feed(std::string(20, 'x') + "\n12345678\n", sink);
  EXPECT_EQ(lines, (std::vector<std::string>{"ok", "12345678"}));
  EXPECT_EQ(splitter.oversize(), 2u);
}

TEST(LineSplitterTest, SinkCanStopTheStream) {
  LineSplitter splitter(100);
  int seen = 0;
  EXPECT_FALSE(splitter.feed("a\nb\nc\n", [&](std::string_view) { return ++seen < 2; }));
  EXPECT_EQ(seen, 2);
}

TEST(BackoffTest, GrowsWithJitterWithinBounds) {
  Backoff backoff(500ms, 30s, /*seed=*/42);
  std::vector<std::chrono::milliseconds> delays;
  for (int i = 0; i < 12; ++i) delays.push_back(backoff.next());
  for (size_t i = 0; i < delays.size(); ++i) {
    const auto ceiling = std::min<std::chrono::milliseconds>(500ms * (1 << (i + 1)), 30s);
    EXPECT_GE(delays[i], 500ms) << i;
    EXPECT_LE(delays[i], ceiling) << i;
  }
  EXPECT_GT(delays.back(), 1s);  // grown (a draw below 1 s of [0.5, 30] s is unlikely for seed 42)
  backoff.reset();
  EXPECT_LE(backoff.next(), 1s);
  // Two agents do not retry in step.
  Backoff a(500ms, 30s, 1), b(500ms, 30s, 2);
  int same = 0;
  for (int i = 0; i < 8; ++i) same += a.next() == b.next() ? 1 : 0;
  EXPECT_LT(same, 8);
}

}  // namespace
}  // namespace cw::k8s
