// Linux capabilities the agent uses, checked once at start: a missing one ends
// the agent with a message naming the capability and what it is for ("missing
// capability CAP_NET_ADMIN: needed to read ...") instead of an EPERM from deep
// inside libbpf, setns or nsenter, or worse, an agent that runs but silently
// explains nothing.
//
// The set depends on the options (runCapabilityRequirements). The DaemonSet
// (deploy/daemonset.yaml) grants exactly what Kubernetes mode needs; the test
// tests/bpf/privileges_bpf_test.cpp runs the agent with that set and with each
// capability of it removed.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace cw {

struct RunOptions;

class CapabilityError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bit n set: capability n (linux/capability.h numbering, CAP_BPF = 39).
using CapabilitySet = uint64_t;

constexpr CapabilitySet capabilityBit(int cap) { return CapabilitySet{1} << cap; }

// "CAP_SYS_ADMIN" for 21; "CAP_<n>" for a number without a name.
std::string capabilityName(int cap);

// A capability from its name in any usual spelling: "CAP_SYS_ADMIN",
// "SYS_ADMIN" (Kubernetes), "sys_admin", "cap_sys_admin" (setpriv, capsh).
std::optional<int> capabilityFromName(std::string_view name);

// The calling thread's effective capability set (capget(2)). Throws
// CapabilityError if the kernel refuses to say.
CapabilitySet effectiveCapabilities();

// One use of privilege. Met when every capability of `all_of` is effective,
// or, when `or_instead` is not empty, every capability of `or_instead` is (the
// kernel accepts CAP_SYS_ADMIN wherever it asks for CAP_BPF or CAP_PERFMON).
struct CapabilityRequirement {
  std::vector<int> all_of;
  std::vector<int> or_instead;
  std::string purpose;  // completes "needed to ...", e.g. "load the BPF programs"
};

// One message per unmet requirement, in order:
//   "missing capability CAP_NET_ADMIN: needed to read ..."
//   "missing capabilities CAP_BPF, CAP_PERFMON (or CAP_SYS_ADMIN): needed to load ..."
std::vector<std::string> missingCapabilities(const std::vector<CapabilityRequirement>& requirements,
                                             CapabilitySet effective);

// Throws CapabilityError with every unmet requirement on one line ("; "
// between them) unless all are met by `effective`.
void requireCapabilities(const std::vector<CapabilityRequirement>& requirements,
                         CapabilitySet effective);
// The same against effectiveCapabilities().
void requireCapabilities(const std::vector<CapabilityRequirement>& requirements);

// What `capturewatch run` needs with these options:
//   - load and attach the BPF programs: CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN;
//   - enter the watched network namespaces (setns, nsenter): CAP_SYS_ADMIN;
//   - read their netfilter rules (nf_tables / iptables over netlink): CAP_NET_ADMIN;
//   - open /proc/PID/ns/net of processes of other users: CAP_SYS_PTRACE, with
//     --kubernetes (always <host-proc>/PID/ns/net) or a --netns path of that form.
std::vector<CapabilityRequirement> runCapabilityRequirements(const RunOptions& options);

}  // namespace cw
