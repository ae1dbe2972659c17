// Command-line parsing (Boost.Program_options). Pure: argv in, options or
// a usage error out; paths are checked later, when they are opened.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "event.h"
#include "logging.h"

namespace cw {

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct CommonOptions {
  logging::Format log_format = logging::Format::Text;
  spdlog::level::level_enum log_level = spdlog::level::info;
  std::string metrics_address;  // empty: no HTTP server
  uint16_t redirect_port = 15001;
  uint32_t grace_ms = 200;
  uint32_t ring_buffer_kb = 4096;
  uint32_t max_tracked_sockets = 131072;  // kernel owner table: open app sockets tracked at once
};

struct RunOptions {
  CommonOptions common;
  std::vector<std::string> netns_paths;
  std::vector<std::string> proxy_cgroups;
  uint32_t summary_interval_s = 60;
  uint32_t duration_s = 0;  // 0: until SIGINT/SIGTERM
  uint32_t rules_interval_s = 30;  // re-read every pod's capture rules this often
  // Kubernetes discovery (--kubernetes)
  bool kubernetes = false;
  std::string node_name;  // default: $NODE_NAME
  std::string pod_selector;
  std::string namespace_;
  std::string sidecar_container = "istio-proxy";
  std::string kubeconfig;  // empty: in-cluster service account
  std::string host_proc = "/proc";
};

struct LabOptions {
  CommonOptions common;
  uint32_t duration_s = 15;
  uint32_t interval_ms = 1000;  // between rounds of app calls
  bool all_captured = false;     // leave out the UID-1337 app: a pod with no gap
};

struct ExplainOptions {
  std::optional<uint32_t> pid;
  std::string netns_path;
  uint16_t redirect_port = 15001;
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::optional<Endpoint> dst;  // trace one connection
  bool json = false;
};

struct HelpRequest {
  std::string text;
};
struct VersionRequest {};

using Command = std::variant<RunOptions, LabOptions, ExplainOptions, HelpRequest, VersionRequest>;

// args excludes the program name. Throws UsageError with a one-line message.
Command parseCommandLine(const std::vector<std::string>& args);

// Parses "IP:PORT" / "[V6]:PORT" into an endpoint; nullopt if malformed.
std::optional<Endpoint> parseEndpoint(const std::string& text);

// Parses "HOST:PORT" / "[V6]:PORT"; throws UsageError naming the flag.
void checkListenAddress(const std::string& flag, const std::string& value);

}  // namespace cw
