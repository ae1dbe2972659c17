// Kubernetes API objects the agent needs, parsed from the API server's JSON:
// a Pod (identity, labels, containers, owning workload), a PodList, the
// lines of a watch stream and the Status objects of errors. Pure: text in,
// values out; no I/O.
#pragma once

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace cw::k8s {

// Malformed JSON, or JSON that is not the object expected.
class ParseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Container {
  std::string name;
  std::string container_id;  // runtime prefix ("containerd://", ...) removed; empty if not started
  std::string image;
  bool ready = false;
  bool running = false;  // state.running is set
  int restart_count = 0;
  bool native_sidecar = false;  // an init container with restartPolicy Always (K8s >= 1.28)
};

struct Pod {
  std::string uid;
  std::string name;
  std::string namespace_;
  std::string node_name;
  std::string phase;  // Pending, Running, Succeeded, Failed, Unknown
  std::string resource_version;
  std::map<std::string, std::string> labels;
  std::vector<std::string> pod_ips;  // status.podIPs (or status.podIP)
  bool host_network = false;
  // From status.containerStatuses, plus native sidecars from
  // status.initContainerStatuses (Istio's istio-proxy when native sidecars are
  // enabled); ordinary init containers (istio-init) are left out.
  std::vector<Container> containers;
  std::string workload;       // owning Deployment/DaemonSet/StatefulSet/... name
  std::string workload_kind;  // "Deployment", "DaemonSet", ...; "Pod" when it has no owner

  const Container* container(std::string_view name) const;
  bool running() const { return phase == "Running"; }
};

struct PodList {
  std::string resource_version;
  std::vector<Pod> items;
};

// The Status object of a failed request or of a watch ERROR event.
struct ApiStatus {
  int code = 0;        // HTTP status code: 401, 403, 410, ...
  std::string reason;  // "Unauthorized", "Forbidden", "Expired", "Gone", ...
  std::string message;
};

struct WatchEvent {
  enum class Type { Added, Modified, Deleted, Bookmark, Error };
  Type type = Type::Added;
  Pod pod;                       // Added, Modified, Deleted
  std::string resource_version;  // of the object (pod or bookmark); empty for Error
  ApiStatus status;              // Error

  // The watch's resourceVersion is too old: the client must list again.
  bool gone() const { return type == Type::Error && status.code == 410; }
};

// A container ID without its runtime prefix: "containerd://abc" -> "abc"
// (also "cri-o://", "docker://"; any other "scheme://" is removed too).
std::string stripContainerIdPrefix(std::string_view id);

// Owning workload from metadata.ownerReferences: the controller reference;
// a ReplicaSet made by a Deployment becomes the Deployment (the
// pod-template-hash suffix removed); no owner -> the pod itself ("Pod").
struct Workload {
  std::string kind;
  std::string name;
};
Workload workloadOf(const nlohmann::json& metadata);

// Each throws ParseError with a short description of what is wrong.
Pod podFromJson(const nlohmann::json& object);
Pod parsePod(std::string_view json_text);
PodList parsePodList(std::string_view json_text);
WatchEvent parseWatchEvent(std::string_view line);
// A Status body ({"kind":"Status",...}); nullopt if the text is not one.
std::optional<ApiStatus> parseStatus(std::string_view json_text);

const char* watchEventTypeName(WatchEvent::Type type);

}  // namespace cw::k8s
