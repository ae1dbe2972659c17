#include "k8s/pod.h"

#include <algorithm>
#include <climits>
#include <cstdint>

#include <nlohmann/json.hpp>

namespace cw::k8s {
namespace {

using nlohmann::json;

// Field access that never throws nlohmann's exceptions: an absent or null
// member is "not set"; a member of the wrong type is a ParseError.
const json* member(const json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string stringField(const json& object, const char* key) {
  const json* value = member(object, key);
  if (value == nullptr) return {};
  if (!value->is_string()) throw ParseError(std::string("field ") + key + " is not a string");
  return value->get<std::string>();
}

bool boolField(const json& object, const char* key) {
  const json* value = member(object, key);
  if (value == nullptr) return false;
  if (!value->is_boolean()) throw ParseError(std::string("field ") + key + " is not a boolean");
  return value->get<bool>();
}

int intField(const json& object, const char* key) {
  const json* value = member(object, key);
  if (value == nullptr) return 0;
  if (!value->is_number_integer()) {
    throw ParseError(std::string("field ") + key + " is not an integer");
  }
  if (value->is_number_unsigned() && value->get<uint64_t>() > uint64_t{INT_MAX}) {
    throw ParseError(std::string("field ") + key + " is out of range");
  }
  const int64_t number = value->get<int64_t>();
  if (number < INT_MIN || number > INT_MAX) {
    throw ParseError(std::string("field ") + key + " is out of range");
  }
  return static_cast<int>(number);
}

const json& objectField(const json& object, const char* key) {
  static const json kEmpty = json::object();
  const json* value = member(object, key);
  if (value == nullptr) return kEmpty;
  if (!value->is_object()) throw ParseError(std::string("field ") + key + " is not an object");
  return *value;
}

const json& arrayField(const json& object, const char* key) {
  static const json kEmpty = json::array();
  const json* value = member(object, key);
  if (value == nullptr) return kEmpty;
  if (!value->is_array()) throw ParseError(std::string("field ") + key + " is not an array");
  return *value;
}

std::map<std::string, std::string> stringMap(const json& object, const char* key) {
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : objectField(object, key).items()) {
    if (!v.is_string())
      throw ParseError(std::string("field ") + key + "." + k + " is not a string");
    out.emplace(k, v.get<std::string>());
  }
  return out;
}

json parseJson(std::string_view text) {
  json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) throw ParseError("not valid JSON");
  if (!doc.is_object()) throw ParseError("not a JSON object");
  return doc;
}

Container parseContainerStatus(const json& status) {
  if (!status.is_object()) throw ParseError("container status is not an object");
  Container c;
  c.name = stringField(status, "name");
  c.container_id = stripContainerIdPrefix(stringField(status, "containerID"));
  c.image = stringField(status, "image");
  c.ready = boolField(status, "ready");
  c.restart_count = intField(status, "restartCount");
  c.running = member(objectField(status, "state"), "running") != nullptr;
  return c;
}

// Names of init containers declared with restartPolicy: Always.
std::vector<std::string> nativeSidecarNames(const json& spec) {
  std::vector<std::string> names;
  for (const json& c : arrayField(spec, "initContainers")) {
    if (stringField(c, "restartPolicy") == "Always") names.push_back(stringField(c, "name"));
  }
  return names;
}

bool endsWith(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

// The Deployment that made ReplicaSet rs_name, or empty if it was not made by
// one. A Deployment's ReplicaSets are named <deployment>-<pod-template-hash>
// and its pods carry the pod-template-hash label; without that label the last
// '-' segment is taken for the hash.
std::string deploymentOfReplicaSet(const std::string& rs_name, const json& metadata) {
  const json& labels = objectField(metadata, "labels");
  const std::string hash = stringField(labels, "pod-template-hash");
  if (!hash.empty()) {
    const std::string suffix = "-" + hash;
    if (rs_name.size() > suffix.size() && endsWith(rs_name, suffix)) {
      return rs_name.substr(0, rs_name.size() - suffix.size());
    }
    return {};
  }
  const auto dash = rs_name.rfind('-');
  if (dash == std::string::npos || dash == 0 || dash + 1 == rs_name.size()) return {};
  return rs_name.substr(0, dash);
}

}  // namespace

const Container* Pod::container(std::string_view wanted) const {
  for (const Container& c : containers) {
    if (c.name == wanted) return &c;
  }
  return nullptr;
}

std::string stripContainerIdPrefix(std::string_view id) {
  const auto scheme_end = id.find("://");
  if (scheme_end != std::string_view::npos) id.remove_prefix(scheme_end + 3);
  return std::string(id);
}

Workload workloadOf(const json& metadata) {
  const json* owner = nullptr;
  for (const json& ref : arrayField(metadata, "ownerReferences")) {
    if (boolField(ref, "controller")) {
      owner = &ref;
      break;
    }
  }
  if (owner == nullptr) return {"Pod", stringField(metadata, "name")};
  Workload w{stringField(*owner, "kind"), stringField(*owner, "name")};
  if (w.kind == "ReplicaSet") {
    std::string deployment = deploymentOfReplicaSet(w.name, metadata);
    if (!deployment.empty()) w = {"Deployment", std::move(deployment)};
  }
  return w;
}

Pod podFromJson(const json& object) {
  if (!object.is_object()) throw ParseError("pod is not a JSON object");
  const std::string kind = stringField(object, "kind");
  if (!kind.empty() && kind != "Pod") throw ParseError("object of kind " + kind + ", not Pod");
  const json& metadata = objectField(object, "metadata");
  const json& spec = objectField(object, "spec");
  const json& status = objectField(object, "status");

  Pod pod;
  pod.uid = stringField(metadata, "uid");
  if (pod.uid.empty()) throw ParseError("pod without metadata.uid");
  pod.name = stringField(metadata, "name");
  pod.namespace_ = stringField(metadata, "namespace");
  pod.resource_version = stringField(metadata, "resourceVersion");
  pod.labels = stringMap(metadata, "labels");
  pod.node_name = stringField(spec, "nodeName");
  pod.host_network = boolField(spec, "hostNetwork");
  pod.phase = stringField(status, "phase");

  for (const json& ip : arrayField(status, "podIPs")) pod.pod_ips.push_back(stringField(ip, "ip"));
  if (pod.pod_ips.empty()) {
    std::string ip = stringField(status, "podIP");
    if (!ip.empty()) pod.pod_ips.push_back(std::move(ip));
  }

  for (const json& cs : arrayField(status, "containerStatuses")) {
    pod.containers.push_back(parseContainerStatus(cs));
  }
  const std::vector<std::string> sidecars = nativeSidecarNames(spec);
  for (const json& cs : arrayField(status, "initContainerStatuses")) {
    Container c = parseContainerStatus(cs);
    if (std::find(sidecars.begin(), sidecars.end(), c.name) == sidecars.end()) continue;
    c.native_sidecar = true;
    pod.containers.push_back(std::move(c));
  }

  const Workload w = workloadOf(metadata);
  pod.workload_kind = w.kind;
  pod.workload = w.name;
  return pod;
}

Pod parsePod(std::string_view json_text) { return podFromJson(parseJson(json_text)); }

PodList parsePodList(std::string_view json_text) {
  const json doc = parseJson(json_text);
  const std::string kind = stringField(doc, "kind");
  if (kind == "Status") {
    const auto status = parseStatus(json_text);
    throw ParseError("a Status instead of a PodList: " + (status ? status->message : kind));
  }
  if (!kind.empty() && kind != "PodList")
    throw ParseError("object of kind " + kind + ", not PodList");
  PodList list;
  list.resource_version = stringField(objectField(doc, "metadata"), "resourceVersion");
  for (const json& item : arrayField(doc, "items")) list.items.push_back(podFromJson(item));
  return list;
}

std::optional<ApiStatus> parseStatus(std::string_view json_text) {
  try {
    const json doc = parseJson(json_text);
    if (stringField(doc, "kind") != "Status") return std::nullopt;
    return ApiStatus{intField(doc, "code"), stringField(doc, "reason"),
                     stringField(doc, "message")};
  } catch (const ParseError&) {
    return std::nullopt;
  }
}

WatchEvent parseWatchEvent(std::string_view line) {
  const json doc = parseJson(line);
  const std::string type = stringField(doc, "type");
  const json* object = member(doc, "object");
  if (object == nullptr || !object->is_object()) throw ParseError("watch event without an object");

  WatchEvent ev;
  if (type == "ADDED") {
    ev.type = WatchEvent::Type::Added;
  } else if (type == "MODIFIED") {
    ev.type = WatchEvent::Type::Modified;
  } else if (type == "DELETED") {
    ev.type = WatchEvent::Type::Deleted;
  } else if (type == "BOOKMARK") {
    ev.type = WatchEvent::Type::Bookmark;
  } else if (type == "ERROR") {
    ev.type = WatchEvent::Type::Error;
  } else {
    throw ParseError("unknown watch event type \"" + type + "\"");
  }

  switch (ev.type) {
    case WatchEvent::Type::Error:
      ev.status = ApiStatus{intField(*object, "code"), stringField(*object, "reason"),
                            stringField(*object, "message")};
      break;
    case WatchEvent::Type::Bookmark:
      ev.resource_version = stringField(objectField(*object, "metadata"), "resourceVersion");
      break;
    default:
      ev.pod = podFromJson(*object);
      ev.resource_version = ev.pod.resource_version;
      break;
  }
  return ev;
}

const char* watchEventTypeName(WatchEvent::Type type) {
  switch (type) {
    case WatchEvent::Type::Added:
      return "ADDED";
    case WatchEvent::Type::Modified:
      return "MODIFIED";
    case WatchEvent::Type::Deleted:
      return "DELETED";
    case WatchEvent::Type::Bookmark:
      return "BOOKMARK";
    case WatchEvent::Type::Error:
      return "ERROR";
  }
  return "?";
}

}  // namespace cw::k8s
