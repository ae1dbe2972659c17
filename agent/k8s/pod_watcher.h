// Keeps the set of pods selected for this node in step with the API server:
// list, then watch from the list's resourceVersion; list again when the
// watch is too old (410 Gone); reconnect with backoff and jitter when the
// connection fails, keeping the pods it knows meanwhile. Runs on its own
// thread; callbacks are called on that thread, one at a time.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "k8s/kubeconfig.h"
#include "k8s/label_selector.h"
#include "k8s/pod.h"

namespace cw::k8s {

class ApiClient;
struct HttpResponse;

struct PodWatcherOptions {
  ClusterConfig cluster;
  std::string node_name;   // spec.nodeName to select; empty: every node
  std::string namespace_;  // empty: all namespaces
  LabelSelector selector;  // --pod-selector; empty: every pod
  std::chrono::milliseconds backoff_initial{500};
  std::chrono::milliseconds backoff_max{30'000};
  std::chrono::milliseconds auth_retry{30'000};  // wait after 401/403 before trying again
  // timeoutSeconds asked of the server for one watch (drawn from [t, 2t) as
  // client-go does); the server then ends the watch and it is resumed.
  std::chrono::seconds watch_timeout{300};
  std::chrono::seconds list_timeout{60};
  size_t max_event_bytes = 8u << 20;   // a longer watch line is dropped and counted
  size_t max_list_bytes = 256u << 20;  // a longer list response is an error
};

enum class ConnectionState {
  Connecting,    // not listed yet
  Connected,     // listed, or watching
  Disconnected,  // the API server cannot be reached; retrying with backoff
  Error,         // the API server refuses (401/403, TLS trust) or answers nonsense; retrying
};
const char* connectionStateName(ConnectionState state);

struct WatchStatus {
  ConnectionState state = ConnectionState::Connecting;
  std::string message;  // why, for Disconnected and Error
};

struct PodWatcherCallbacks {
  std::function<void(const Pod&)> upsert;                 // new pod, or a pod that changed
  std::function<void(const std::string& uid)> remove;     // deleted, or no longer selected
  std::function<void()> synced;                           // after each complete list
  std::function<void(const WatchStatus&)> state_changed;  // on each change of state or message
};

struct PodWatcherStats {
  uint64_t lists = 0;            // successful lists
  uint64_t relists_gone = 0;     // lists because the watch's resourceVersion was too old
  uint64_t watches = 0;          // watch requests answered 200
  uint64_t reconnects = 0;       // waits before trying again (after a failure or an empty watch)
  uint64_t events = 0;           // watch events applied (bookmarks included)
  uint64_t parse_errors = 0;     // watch lines or list bodies that could not be parsed
  uint64_t oversize_events = 0;  // watch lines longer than max_event_bytes
  uint64_t auth_errors = 0;      // 401/403 answers
};

class PodWatcher {
 public:
  PodWatcher(PodWatcherOptions options, PodWatcherCallbacks callbacks);
  ~PodWatcher();  // stop()
  PodWatcher(const PodWatcher&) = delete;
  PodWatcher& operator=(const PodWatcher&) = delete;

  void start();
  // Aborts the request in flight and joins the thread; returns promptly.
  void stop();

  WatchStatus status() const;
  PodWatcherStats stats() const;
  // The pods known now (kept while the API server is away), by UID.
  std::map<std::string, Pod> pods() const;
  bool hasSynced() const { return synced_once_; }

  // The request paths it uses (for logs and tests). A list is served from
  // the API server's cache unless `consistent`.
  std::string listPath(bool consistent) const;
  std::string watchPath(const std::string& resource_version, std::chrono::seconds timeout) const;

 private:
  enum class Outcome {
    Ok,         // listed; or the watch ended normally after delivering events
    Quiet,      // the watch ended normally without any event
    Gone,       // 410: list again
    AuthError,  // 401/403
    Failed,     // anything else: retry with backoff
    Stopped,
  };
  enum class WatchStop { None, Gone, Error };  // why an event line ends the watch

  void run();
  Outcome list(bool consistent);
  Outcome watch(std::chrono::seconds timeout, bool& progressed);
  Outcome classify(const HttpResponse& response, const char* what);
  WatchStop onEventLine(std::string_view line);
  void applyUpsert(const Pod& pod);
  void applyRemove(const std::string& uid);
  bool selected(const Pod& pod) const;
  void setStatus(ConnectionState state, std::string message);
  void count(uint64_t PodWatcherStats::*counter, uint64_t n = 1);
  bool sleepFor(std::chrono::milliseconds delay);  // false if stopping
  std::string collectionPath() const;

  PodWatcherOptions options_;
  PodWatcherCallbacks callbacks_;
  std::unique_ptr<ApiClient> client_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> synced_once_{false};
  std::mutex sleep_mutex_;
  std::condition_variable sleep_cv_;

  mutable std::mutex mutex_;  // guards the members below
  std::map<std::string, Pod> pods_;
  WatchStatus status_;
  PodWatcherStats stats_;

  std::string resource_version_;  // where the next watch starts; empty: list first (thread only)
};

}  // namespace cw::k8s
