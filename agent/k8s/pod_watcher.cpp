#include "k8s/pod_watcher.h"

#include <pthread.h>

#include <csignal>
#include <random>
#include <set>
#include <utility>

#include "k8s/api_client.h"
#include "k8s/backoff.h"
#include "k8s/line_splitter.h"

namespace cw::k8s {
namespace {

std::string statusText(const HttpResponse& r) {
  std::string text = "HTTP " + std::to_string(r.status);
  if (std::optional<ApiStatus> s = parseStatus(r.error_body)) {
    if (!s->reason.empty()) text += " " + s->reason;
    if (!s->message.empty()) text += ": " + s->message;
  }
  return text;
}

}  // namespace

const char* connectionStateName(ConnectionState state) {
  switch (state) {
    case ConnectionState::Connecting:
      return "connecting";
    case ConnectionState::Connected:
      return "connected";
    case ConnectionState::Disconnected:
      return "disconnected";
    case ConnectionState::Error:
      return "error";
  }
  return "?";
}

PodWatcher::PodWatcher(PodWatcherOptions options, PodWatcherCallbacks callbacks)
    : options_(std::move(options)),
      callbacks_(std::move(callbacks)),
      client_(std::make_unique<ApiClient>(options_.cluster)) {}

PodWatcher::~PodWatcher() { stop(); }

void PodWatcher::start() {
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread([this] { run(); });
}

void PodWatcher::stop() {
  stopping_ = true;
  client_->cancel();
  { std::lock_guard<std::mutex> lock(sleep_mutex_); }
  sleep_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

WatchStatus PodWatcher::status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return status_;
}

PodWatcherStats PodWatcher::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

std::map<std::string, Pod> PodWatcher::pods() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pods_;
}

std::string PodWatcher::collectionPath() const {
  if (options_.namespace_.empty()) return "/api/v1/pods";
  return "/api/v1/namespaces/" + client_->escape(options_.namespace_) + "/pods";
}

std::string PodWatcher::listPath(bool consistent) const {
  std::string query;
  const auto add = [&](const std::string& key, const std::string& value) {
    query += (query.empty() ? "?" : "&") + key + "=" + client_->escape(value);
  };
  if (!options_.node_name.empty()) add("fieldSelector", "spec.nodeName=" + options_.node_name);
  if (!options_.selector.empty()) add("labelSelector", options_.selector.str());
  // "0": any recent state, served from the API server's cache (cheap for a
  // DaemonSet's many agents); none: the latest state, read from etcd.
  if (!consistent) add("resourceVersion", "0");
  return collectionPath() + query;
}

std::string PodWatcher::watchPath(const std::string& resource_version,
                                  std::chrono::seconds timeout) const {
  std::string path = listPath(/*consistent=*/true);
  path += path.find('?') == std::string::npos ? "?" : "&";
  path += "watch=1&resourceVersion=" + client_->escape(resource_version) +
          "&allowWatchBookmarks=true&timeoutSeconds=" + std::to_string(timeout.count());
  return path;
}

void PodWatcher::run() {
  // A TLS write to a connection the server closed must fail with EPIPE, not
  // kill the process with SIGPIPE (libcurl does not ignore it under CURLOPT_NOSIGNAL).
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe, nullptr);

  Backoff backoff(options_.backoff_initial, options_.backoff_max);
  std::mt19937_64 rng{std::random_device{}()};
  bool after_gone = false;
  while (!stopping_) {
    Outcome outcome;
    bool progressed = false;  // the request delivered something: the server works
    if (resource_version_.empty()) {
      outcome = list(after_gone);
      progressed = outcome == Outcome::Ok;
      if (progressed) after_gone = false;
    } else {
      const auto base = options_.watch_timeout.count();
      std::uniform_int_distribution<int64_t> pick(base, std::max<int64_t>(base, 2 * base - 1));
      outcome = watch(std::chrono::seconds(pick(rng)), progressed);
    }
    if (progressed) backoff.reset();

    std::chrono::milliseconds delay{0};
    switch (outcome) {
      case Outcome::Stopped:
        return;
      case Outcome::Ok:
        continue;
      case Outcome::Gone:
        count(&PodWatcherStats::relists_gone);
        resource_version_.clear();
        after_gone = true;
        continue;
      case Outcome::AuthError:
        delay = options_.auth_retry;
        break;
      case Outcome::Quiet:
      case Outcome::Failed:
        delay = backoff.next();
        break;
    }
    count(&PodWatcherStats::reconnects);
    if (!sleepFor(delay)) return;
  }
}

PodWatcher::Outcome PodWatcher::list(bool consistent) {
  std::string body;
  bool too_big = false;
  const auto sink = [&](std::string_view chunk) {
    if (body.size() + chunk.size() > options_.max_list_bytes) {
      too_big = true;
      return false;
    }
    body.append(chunk);
    return true;
  };
  const HttpResponse response = client_->get(listPath(consistent), sink, options_.list_timeout);
  if (too_big) {
    setStatus(ConnectionState::Error,
              "list of pods larger than " + std::to_string(options_.max_list_bytes) + " bytes");
    return Outcome::Failed;
  }
  const Outcome outcome = classify(response, "list pods");
  if (outcome != Outcome::Ok) return outcome;

  PodList list;
  try {
    list = parsePodList(body);
  } catch (const ParseError& e) {
    count(&PodWatcherStats::parse_errors);
    setStatus(ConnectionState::Error, std::string("list pods: unexpected answer: ") + e.what());
    return Outcome::Failed;
  }
  if (list.resource_version.empty()) {
    setStatus(ConnectionState::Error, "list pods: answer without metadata.resourceVersion");
    return Outcome::Failed;
  }

  std::set<std::string> listed;
  for (const Pod& pod : list.items) {
    if (!selected(pod)) continue;
    listed.insert(pod.uid);
    applyUpsert(pod);
  }
  std::vector<std::string> gone;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [uid, pod] : pods_) {
      if (listed.count(uid) == 0) gone.push_back(uid);
    }
  }
  for (const std::string& uid : gone) applyRemove(uid);
  count(&PodWatcherStats::lists);

  resource_version_ = list.resource_version;
  synced_once_ = true;
  setStatus(ConnectionState::Connected, "");
  if (callbacks_.synced) callbacks_.synced();
  return Outcome::Ok;
}

PodWatcher::Outcome PodWatcher::watch(std::chrono::seconds timeout, bool& progressed) {
  LineSplitter lines(options_.max_event_bytes);
  WatchStop why_stopped = WatchStop::None;
  uint64_t applied = 0;
  const auto on_line = [&](std::string_view line) {
    why_stopped = onEventLine(line);
    if (why_stopped == WatchStop::None) ++applied;
    return why_stopped == WatchStop::None && !stopping_;
  };
  const auto sink = [&](std::string_view chunk) { return lines.feed(chunk, on_line); };
  const auto on_status = [&](long status) {
    if (status != 200) return;
    count(&PodWatcherStats::watches);
    setStatus(ConnectionState::Connected, "");
  };
  // The server ends the watch after `timeout`; give it a margin before
  // giving up on it.
  const HttpResponse response = client_->get(watchPath(resource_version_, timeout), sink,
                                             timeout + std::chrono::seconds(30), on_status);
  count(&PodWatcherStats::oversize_events, lines.oversize());
  progressed = applied > 0;
  if (stopping_) return Outcome::Stopped;
  if (why_stopped == WatchStop::Gone) return Outcome::Gone;
  if (why_stopped == WatchStop::Error) return Outcome::Failed;

  const Outcome outcome = classify(response, "watch pods");
  if (outcome == Outcome::Ok && applied == 0) return Outcome::Quiet;
  return outcome;
}

PodWatcher::WatchStop PodWatcher::onEventLine(std::string_view line) {
  WatchEvent ev;
  try {
    ev = parseWatchEvent(line);
  } catch (const ParseError&) {
    count(&PodWatcherStats::parse_errors);
    return WatchStop::None;  // skip the line; the next relist repairs what it carried
  }
  if (ev.type == WatchEvent::Type::Error) {
    if (ev.gone()) return WatchStop::Gone;
    setStatus(ConnectionState::Error, "watch pods: error event: code " +
                                          std::to_string(ev.status.code) + " " + ev.status.reason +
                                          ": " + ev.status.message);
    return WatchStop::Error;
  }
  switch (ev.type) {
    case WatchEvent::Type::Added:
    case WatchEvent::Type::Modified:
      if (selected(ev.pod)) {
        applyUpsert(ev.pod);
      } else {
        applyRemove(ev.pod.uid);  // its labels changed: no longer selected
      }
      break;
    case WatchEvent::Type::Deleted:
      applyRemove(ev.pod.uid);
      break;
    default:
      break;
  }
  if (!ev.resource_version.empty()) resource_version_ = ev.resource_version;
  count(&PodWatcherStats::events);
  return WatchStop::None;
}

PodWatcher::Outcome PodWatcher::classify(const HttpResponse& response, const char* what) {
  const std::string prefix = std::string(what) + " at " + options_.cluster.server + ": ";
  if (response.cancelled || stopping_) return Outcome::Stopped;
  if (response.status == 410) return Outcome::Gone;
  if (response.status == 401 || response.status == 403) {
    count(&PodWatcherStats::auth_errors);
    const char* hint = response.status == 401
                           ? " (the API server rejected the credentials of "
                           : " (the credentials are not allowed to get/list/watch pods: check the "
                             "ClusterRole and its binding; credentials of ";
    setStatus(ConnectionState::Error,
              prefix + statusText(response) + hint + options_.cluster.source + ")");
    return Outcome::AuthError;
  }
  if (!response.error.empty()) {
    setStatus(response.tls_trust_error ? ConnectionState::Error : ConnectionState::Disconnected,
              prefix + response.error);
    return Outcome::Failed;
  }
  if (response.status >= 200 && response.status < 300) return Outcome::Ok;
  const bool server_trouble = response.status >= 500 || response.status == 429;
  setStatus(server_trouble ? ConnectionState::Disconnected : ConnectionState::Error,
            prefix + statusText(response));
  return Outcome::Failed;
}

bool PodWatcher::selected(const Pod& pod) const {
  return (options_.node_name.empty() || pod.node_name == options_.node_name) &&
         (options_.namespace_.empty() || pod.namespace_ == options_.namespace_) &&
         options_.selector.matches(pod.labels);
}

void PodWatcher::applyUpsert(const Pod& pod) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = pods_.find(pod.uid);
    if (it != pods_.end() && !pod.resource_version.empty() &&
        it->second.resource_version == pod.resource_version) {
      return;  // seen already (a relist of an unchanged pod)
    }
    pods_[pod.uid] = pod;
  }
  if (callbacks_.upsert) callbacks_.upsert(pod);
}

void PodWatcher::applyRemove(const std::string& uid) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (pods_.erase(uid) == 0) return;
  }
  if (callbacks_.remove) callbacks_.remove(uid);
}

void PodWatcher::setStatus(ConnectionState state, std::string message) {
  WatchStatus now;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (status_.state == state && status_.message == message) return;
    status_ = WatchStatus{state, std::move(message)};
    now = status_;
  }
  if (callbacks_.state_changed) callbacks_.state_changed(now);
}

void PodWatcher::count(uint64_t PodWatcherStats::*counter, uint64_t n) {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.*counter += n;
}

bool PodWatcher::sleepFor(std::chrono::milliseconds delay) {
  std::unique_lock<std::mutex> lock(sleep_mutex_);
  sleep_cv_.wait_for(lock, delay, [this] { return stopping_.load(); });
  return !stopping_;
}

}  // namespace cw::k8s
