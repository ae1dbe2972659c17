#include "capabilities.h"

#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>

#include "cli.h"

namespace cw {
namespace {

// linux/capability.h, in number order (CAP_CHOWN = 0 ... CAP_CHECKPOINT_RESTORE = 40).
constexpr std::array<std::string_view, 41> kNames = {"CAP_CHOWN",
                                                     "CAP_DAC_OVERRIDE",
                                                     "CAP_DAC_READ_SEARCH",
                                                     "CAP_FOWNER",
                                                     "CAP_FSETID",
                                                     "CAP_KILL",
                                                     "CAP_SETGID",
                                                     "CAP_SETUID",
                                                     "CAP_SETPCAP",
                                                     "CAP_LINUX_IMMUTABLE",
                                                     "CAP_NET_BIND_SERVICE",
                                                     "CAP_NET_BROADCAST",
                                                     "CAP_NET_ADMIN",
                                                     "CAP_NET_RAW",
                                                     "CAP_IPC_LOCK",
                                                     "CAP_IPC_OWNER",
                                                     "CAP_SYS_MODULE",
                                                     "CAP_SYS_RAWIO",
                                                     "CAP_SYS_CHROOT",
                                                     "CAP_SYS_PTRACE",
                                                     "CAP_SYS_PACCT",
                                                     "CAP_SYS_ADMIN",
                                                     "CAP_SYS_BOOT",
                                                     "CAP_SYS_NICE",
                                                     "CAP_SYS_RESOURCE",
                                                     "CAP_SYS_TIME",
                                                     "CAP_SYS_TTY_CONFIG",
                                                     "CAP_MKNOD",
                                                     "CAP_LEASE",
                                                     "CAP_AUDIT_WRITE",
                                                     "CAP_AUDIT_CONTROL",
                                                     "CAP_SETFCAP",
                                                     "CAP_MAC_OVERRIDE",
                                                     "CAP_MAC_ADMIN",
                                                     "CAP_SYSLOG",
                                                     "CAP_WAKE_ALARM",
                                                     "CAP_BLOCK_SUSPEND",
                                                     "CAP_AUDIT_READ",
                                                     "CAP_PERFMON",
                                                     "CAP_BPF",
                                                     "CAP_CHECKPOINT_RESTORE"};
static_assert(CAP_SYS_ADMIN == 21 && CAP_PERFMON == 38 && CAP_BPF == 39);
static_assert(kNames.size() == CAP_CHECKPOINT_RESTORE + 1);

bool hasAll(const std::vector<int>& caps, CapabilitySet effective) {
  return std::all_of(caps.begin(), caps.end(),
                     [&](int c) { return (effective & capabilityBit(c)) != 0; });
}

std::string joinNames(const std::vector<int>& caps, const char* separator) {
  std::string out;
  for (int c : caps) {
    if (!out.empty()) out += separator;
    out += capabilityName(c);
  }
  return out;
}

// "/proc/1234/ns/net", "/host/proc/1234/ns/net": another process's namespace,
// which the kernel lets us open only if we may ptrace-read that process.
bool isProcessNetnsPath(std::string_view path) {
  constexpr std::string_view kSuffix = "/ns/net";
  if (path.size() <= kSuffix.size() || path.substr(path.size() - kSuffix.size()) != kSuffix) {
    return false;
  }
  path.remove_suffix(kSuffix.size());
  const size_t slash = path.rfind('/');
  const std::string_view pid = slash == std::string_view::npos ? path : path.substr(slash + 1);
  return !pid.empty() &&
         std::all_of(pid.begin(), pid.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

std::string capabilityName(int cap) {
  if (cap >= 0 && static_cast<size_t>(cap) < kNames.size()) return std::string(kNames[cap]);
  return "CAP_" + std::to_string(cap);
}

std::optional<int> capabilityFromName(std::string_view name) {
  std::string upper;
  for (char c : name)
    upper.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  if (upper.rfind("CAP_", 0) != 0) upper = "CAP_" + upper;
  for (size_t i = 0; i < kNames.size(); ++i) {
    if (kNames[i] == upper) return static_cast<int>(i);
  }
  return std::nullopt;
}

CapabilitySet effectiveCapabilities() {
  __user_cap_header_struct header{};
  header.version = _LINUX_CAPABILITY_VERSION_3;
  header.pid = 0;  // this thread
  std::array<__user_cap_data_struct, _LINUX_CAPABILITY_U32S_3> data{};
  if (::syscall(SYS_capget, &header, data.data()) != 0) {
    throw CapabilityError(std::string("cannot read this process's capabilities (capget): ") +
                          std::strerror(errno));
  }
  return CapabilitySet{data[0].effective} | (CapabilitySet{data[1].effective} << 32);
}

std::vector<std::string> missingCapabilities(const std::vector<CapabilityRequirement>& requirements,
                                             CapabilitySet effective) {
  std::vector<std::string> messages;
  for (const auto& r : requirements) {
    if (hasAll(r.all_of, effective)) continue;
    if (!r.or_instead.empty() && hasAll(r.or_instead, effective)) continue;
    std::vector<int> missing;
    std::copy_if(r.all_of.begin(), r.all_of.end(), std::back_inserter(missing),
                 [&](int c) { return (effective & capabilityBit(c)) == 0; });
    std::string m = missing.size() == 1 ? "missing capability " : "missing capabilities ";
    m += joinNames(missing, ", ");
    if (!r.or_instead.empty()) m += " (or " + joinNames(r.or_instead, " and ") + ")";
    m += ": needed to " + r.purpose;
    messages.push_back(std::move(m));
  }
  return messages;
}

void requireCapabilities(const std::vector<CapabilityRequirement>& requirements,
                         CapabilitySet effective) {
  const std::vector<std::string> missing = missingCapabilities(requirements, effective);
  if (missing.empty()) return;
  std::string text;
  for (const auto& m : missing) {
    if (!text.empty()) text += "; ";
    text += m;
  }
  throw CapabilityError(text);
}

void requireCapabilities(const std::vector<CapabilityRequirement>& requirements) {
  requireCapabilities(requirements, effectiveCapabilities());
}

std::vector<CapabilityRequirement> runCapabilityRequirements(const RunOptions& options) {
  std::vector<CapabilityRequirement> r;
  // bpf(2): maps (ring buffer, hash) need CAP_BPF; tracing programs
  // (BTF-typed raw tracepoints) and their reads of kernel memory need CAP_PERFMON too.
  // The kernel's bpf_capable() / perfmon_capable() also accept CAP_SYS_ADMIN.
  r.push_back({{CAP_BPF, CAP_PERFMON},
               {CAP_SYS_ADMIN},
               "load and attach the BPF programs (tracepoints, ring buffer, maps)"});
  // setns(CLONE_NEWNET) on the rules thread and in `nsenter --net`: the rules
  // and routes are read from inside each watched network namespace.
  r.push_back({{CAP_SYS_ADMIN},
               {},
               "enter the watched network namespaces (setns, nsenter --net) to read their capture "
               "rules and routes"});
  // nfnetlink (nf_tables, iptables-nft-save) answers only CAP_NET_ADMIN, even
  // to read; so do the legacy iptables get-sockopts.
  r.push_back({{CAP_NET_ADMIN},
               {},
               "read the watched namespaces' netfilter rules (nf_tables and iptables) that "
               "explain a bypassed connection"});
  bool process_netns = options.kubernetes;
  for (const auto& path : options.netns_paths)
    process_netns = process_netns || isProcessNetnsPath(path);
  if (process_netns) {
    // Opening /proc/PID/ns/net is a ptrace read-access check: a process of
    // another user (a pod's processes: the app, uid 1337 for the sidecar) is
    // readable only with CAP_SYS_PTRACE.
    r.push_back(
        {{CAP_SYS_PTRACE}, {}, "open /proc/PID/ns/net of pod processes that run as other users"});
  }
  return r;
}

}  // namespace cw
