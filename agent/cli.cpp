#include "cli.h"

#include <boost/program_options.hpp>
#include <cstdlib>
#include <sstream>

namespace po = boost::program_options;

namespace cw {
namespace {

constexpr const char* kUsage =
    "Usage: capturewatch COMMAND [OPTIONS]\n"
    "\n"
    "Verifies, connection by connection, that a pod's outbound TCP traffic is\n"
    "captured by its Istio sidecar (redirected to the outbound port 15001).\n"
    "\n"
    "Commands:\n"
    "  run       the agent: watch network namespaces and report verdicts\n"
    "  lab       build a simulated gateway pod on this machine and run the agent on it\n"
    "  explain   print a pod's capture policy from its live rules, or trace one connection\n"
    "  version   print the version\n"
    "\n"
    "Run 'capturewatch COMMAND --help' for the options of a command.\n";

struct CommonRaw {
  std::string log_format = "text";
  std::string log_level;
  std::string metrics_address;
  int redirect_port = 15001;
  int grace_ms = 200;
  int ring_buffer_kb = 4096;
  int max_tracked_sockets = 131072;
};

void addCommon(po::options_description& desc, CommonRaw& raw, const char* default_level,
               bool with_redirect_port) {
  raw.log_level = default_level;
  if (with_redirect_port) {
    desc.add_options()("redirect-port", po::value<int>(&raw.redirect_port)->default_value(15001),
                       "the sidecar's outbound capture port (Istio: 15001)");
  }
  desc.add_options()
      ("grace-ms", po::value<int>(&raw.grace_ms)->default_value(200),
       "how long an open connection waits for the sidecar's accept before it is reported bypassed "
       "(one that closes without it is reported at its close)")
      ("log-format", po::value<std::string>(&raw.log_format)->default_value("text"),
       "text | json (one JSON object per line)")
      ("log-level", po::value<std::string>(&raw.log_level)->default_value(default_level),
       "trace | debug (one line per verdict) | info | warn | error")
      ("metrics-address", po::value<std::string>(&raw.metrics_address),
       "serve Prometheus metrics on HOST:PORT at /metrics (off when not given)")
      ("ring-buffer-kb", po::value<int>(&raw.ring_buffer_kb)->default_value(4096),
       "kernel ring buffers in KiB, all CPUs together (a power of two, at least 4; each CPU "
       "gets an equal share)")
      ("max-tracked-sockets", po::value<int>(&raw.max_tracked_sockets)->default_value(131072),
       "app sockets of watched pods tracked at once in the kernel (connections beyond it are "
       "counted as lost)")
      ("help,h", "show this help");
}

CommonOptions finishCommon(const CommonRaw& raw) {
  CommonOptions c;
  auto format = logging::parseFormat(raw.log_format);
  if (!format) throw UsageError("--log-format must be text or json, got '" + raw.log_format + "'");
  c.log_format = *format;
  auto level = logging::parseLevel(raw.log_level);
  if (!level) {
    throw UsageError("--log-level must be trace, debug, info, warn or error, got '" +
                     raw.log_level + "'");
  }
  c.log_level = *level;
  if (raw.redirect_port < 1 || raw.redirect_port > 65535) {
    throw UsageError("--redirect-port must be between 1 and 65535, got " +
                     std::to_string(raw.redirect_port));
  }
  c.redirect_port = static_cast<uint16_t>(raw.redirect_port);
  if (raw.grace_ms < 1 || raw.grace_ms > 60000) {
    throw UsageError("--grace-ms must be between 1 and 60000, got " + std::to_string(raw.grace_ms));
  }
  c.grace_ms = static_cast<uint32_t>(raw.grace_ms);
  if (raw.ring_buffer_kb < 4 || raw.ring_buffer_kb > (1 << 20) ||
      (raw.ring_buffer_kb & (raw.ring_buffer_kb - 1)) != 0) {
    throw UsageError("--ring-buffer-kb must be a power of two between 4 and 1048576, got " +
                     std::to_string(raw.ring_buffer_kb));
  }
  c.ring_buffer_kb = static_cast<uint32_t>(raw.ring_buffer_kb);
  if (raw.max_tracked_sockets < 1024 || raw.max_tracked_sockets > (1 << 24)) {
    throw UsageError("--max-tracked-sockets must be between 1024 and 16777216, got " +
                     std::to_string(raw.max_tracked_sockets));
  }
  c.max_tracked_sockets = static_cast<uint32_t>(raw.max_tracked_sockets);
  if (!raw.metrics_address.empty()) checkListenAddress("--metrics-address", raw.metrics_address);
  c.metrics_address = raw.metrics_address;
  return c;
}

po::variables_map parse(const po::options_description& desc, const std::vector<std::string>& args) {
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(desc).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }
  return vm;
}

std::string helpText(const std::string& synopsis, const po::options_description& desc) {
  std::ostringstream out;
  out << synopsis << "\n\n" << desc;
  return out.str();
}

uint32_t nonNegative(const char* flag, int value) {
  if (value < 0) throw UsageError(std::string(flag) + " must not be negative");
  return static_cast<uint32_t>(value);
}

}  // namespace

std::optional<Endpoint> parseEndpoint(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 >= text.size()) return std::nullopt;
  std::string host = text.substr(0, colon);
  const std::string port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string::npos) {
    return std::nullopt;  // an IPv6 address needs brackets
  }
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  int p = std::stoi(port);
  if (p < 1 || p > 65535) return std::nullopt;
  auto addr = Address::parse(host);
  if (!addr) return std::nullopt;
  return Endpoint{*addr, static_cast<uint16_t>(p)};
}

void checkListenAddress(const std::string& flag, const std::string& value) {
  auto colon = value.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= value.size()) {
    throw UsageError(flag + " must be HOST:PORT, got '" + value + "'");
  }
  const std::string port = value.substr(colon + 1);
  if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 ||
      std::stoi(port) > 65535) {
    throw UsageError(flag + ": bad port in '" + value + "'");
  }
}

Command parseCommandLine(const std::vector<std::string>& args) {
  // Boost.Program_options substitutes %placeholders% into its error messages
  // and never terminates when an argument itself contains one (found by the
  // command-line fuzzer): refuse such arguments before Boost sees them.
  for (const auto& a : args) {
    auto first = a.find('%');
    if (first != std::string::npos && a.find('%', first + 1) != std::string::npos) {
      throw UsageError("arguments may not contain '%...%': '" + a.substr(0, 64) + "'");
    }
    if (a.size() > 4096) throw UsageError("an argument is longer than 4096 bytes");
  }
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    return HelpRequest{kUsage};
  }
  const std::string& cmd = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());

  if (cmd == "version" || cmd == "--version") return VersionRequest{};

  if (cmd == "run") {
    RunOptions opts;
    CommonRaw raw;
    int summary = 60;
    int duration = 0;
    int rules_interval = 30;
    po::options_description desc("Options");
    desc.add_options()
        ("netns", po::value<std::vector<std::string>>(&opts.netns_paths),
         "network namespace to watch: /proc/PID/ns/net or /run/netns/NAME (repeatable)")
        ("proxy-cgroup", po::value<std::vector<std::string>>(&opts.proxy_cgroups),
         "cgroup v2 directory of a sidecar proxy: its connections are 'proxy' (repeatable)")
        ("summary-interval", po::value<int>(&summary)->default_value(60),
         "seconds between per-pod summary lines")
        ("duration", po::value<int>(&duration)->default_value(0),
         "stop after this many seconds (0: run until SIGINT/SIGTERM)")
        ("kubernetes", po::bool_switch(&opts.kubernetes),
         "discover the pods to watch from the Kubernetes API (pods on this node matching "
         "--pod-selector)")
        ("node-name", po::value<std::string>(&opts.node_name),
         "this node's name (default: $NODE_NAME, set by the DaemonSet)")
        ("pod-selector", po::value<std::string>(&opts.pod_selector),
         "label selector of the pods to watch, e.g. app=envoy-gateway")
        ("namespace", po::value<std::string>(&opts.namespace_), "only pods of this namespace")
        ("sidecar-container", po::value<std::string>(&opts.sidecar_container)->default_value("istio-proxy"),
         "name of the sidecar container: its cgroup is the proxy's")
        ("kubeconfig", po::value<std::string>(&opts.kubeconfig),
         "kubeconfig file (default: the in-cluster service account)")
        ("host-proc", po::value<std::string>(&opts.host_proc)->default_value("/proc"),
         "the host's /proc (mounted into the agent's container)")
        ("rules-interval", po::value<int>(&rules_interval)->default_value(30),
         "seconds between re-reads of each pod's capture rules (a gap also triggers one, at "
         "most once a second)");
    addCommon(desc, raw, "info", true);
    auto vm = parse(desc, rest);
    if (vm.count("help")) return HelpRequest{helpText("Usage: capturewatch run --netns PATH [OPTIONS]", desc)};
    opts.common = finishCommon(raw);
    if (opts.kubernetes) {
      if (opts.node_name.empty()) {
        const char* env = std::getenv("NODE_NAME");
        if (env != nullptr) opts.node_name = env;
      }
      if (opts.node_name.empty()) {
        throw UsageError("--kubernetes needs --node-name or the NODE_NAME environment variable");
      }
    } else {
      if (opts.netns_paths.empty()) throw UsageError("run needs at least one --netns PATH (or --kubernetes)");
      for (const char* k8s_only : {"pod-selector", "namespace", "kubeconfig", "node-name"}) {
        if (vm.count(k8s_only)) throw UsageError(std::string("--") + k8s_only + " needs --kubernetes");
      }
    }
    if (summary < 1) throw UsageError("--summary-interval must be at least 1 second");
    opts.summary_interval_s = static_cast<uint32_t>(summary);
    opts.duration_s = nonNegative("--duration", duration);
    if (rules_interval < 1 || rules_interval > 3600) {
      throw UsageError("--rules-interval must be between 1 and 3600 seconds");
    }
    opts.rules_interval_s = static_cast<uint32_t>(rules_interval);
    return opts;
  }

  if (cmd == "lab") {
    LabOptions opts;
    CommonRaw raw;
    int duration = 15;
    int interval = 1000;
    po::options_description desc("Options");
    desc.add_options()
        ("duration", po::value<int>(&duration)->default_value(15),
         "seconds of traffic before the final report")
        ("interval-ms", po::value<int>(&interval)->default_value(1000),
         "pause between rounds of app calls")
        ("all-captured", po::bool_switch(&opts.all_captured),
         "leave out the app running as UID 1337: a pod whose capture is complete");
    addCommon(desc, raw, "debug", false);
    auto vm = parse(desc, rest);
    if (vm.count("help")) return HelpRequest{helpText("Usage: capturewatch lab [OPTIONS]", desc)};
    opts.common = finishCommon(raw);
    if (duration < 1 || duration > 3600) throw UsageError("--duration must be between 1 and 3600");
    if (interval < 10 || interval > 60000) {
      throw UsageError("--interval-ms must be between 10 and 60000");
    }
    opts.duration_s = static_cast<uint32_t>(duration);
    opts.interval_ms = static_cast<uint32_t>(interval);
    return opts;
  }

  if (cmd == "explain") {
    ExplainOptions opts;
    int pid = -1;
    std::string netns;
    std::string dst;
    long long uid = -1;
    long long gid = -1;
    int redirect_port = 15001;
    std::string format = "text";
    po::options_description desc("Options");
    desc.add_options()
        ("pid", po::value<int>(&pid), "a process of the pod (its network namespace is read)")
        ("netns", po::value<std::string>(&netns), "the pod's network namespace: /proc/PID/ns/net or /run/netns/NAME")
        ("dst", po::value<std::string>(&dst), "trace one connection to IP:PORT ([v6]:PORT)")
        ("uid", po::value<long long>(&uid), "the connecting process's UID (with --dst; required)")
        ("gid", po::value<long long>(&gid), "its GID (with --dst; default: the UID)")
        ("redirect-port", po::value<int>(&redirect_port)->default_value(15001),
         "the sidecar's outbound capture port")
        ("format", po::value<std::string>(&format)->default_value("text"), "text | json")
        ("help,h", "show this help");
    auto vm = parse(desc, rest);
    if (vm.count("help")) {
      return HelpRequest{helpText(
          "Usage: capturewatch explain (--pid PID | --netns PATH) [--dst IP:PORT --uid UID "
          "[--gid GID]] [--format json]\n\nExit status: 0 captured (or policy printed), 1 not "
          "captured, 2 error.",
          desc)};
    }
    if ((pid >= 0) == !netns.empty()) throw UsageError("explain needs exactly one of --pid or --netns");
    if (vm.count("pid")) {
      if (pid <= 0) throw UsageError("--pid must be a positive process id");
      opts.pid = static_cast<uint32_t>(pid);
    }
    opts.netns_path = netns;
    if (redirect_port < 1 || redirect_port > 65535) {
      throw UsageError("--redirect-port must be between 1 and 65535");
    }
    opts.redirect_port = static_cast<uint16_t>(redirect_port);
    if (format != "text" && format != "json") throw UsageError("--format must be text or json");
    opts.json = format == "json";
    if (!dst.empty()) {
      opts.dst = parseEndpoint(dst);
      if (!opts.dst) throw UsageError("--dst must be IP:PORT or [IPv6]:PORT, got '" + dst + "'");
      if (uid < 0) throw UsageError("--dst needs --uid (the UID the connection is made as)");
    } else if (uid >= 0 || gid >= 0) {
      throw UsageError("--uid and --gid describe the connection of --dst");
    }
    if (uid > 0xffffffffLL || gid > 0xffffffffLL) throw UsageError("--uid/--gid out of range");
    opts.uid = uid < 0 ? 0 : static_cast<uint32_t>(uid);
    opts.gid = gid < 0 ? opts.uid : static_cast<uint32_t>(gid);
    return opts;
  }

  throw UsageError("unknown command '" + cmd + "' (commands: run, lab, explain, version)");
}

}  // namespace cw
