// A simulated Envoy gateway pod with an Istio sidecar, built on this machine
// from real parts: two network namespaces joined by a veth pair, Istio's own
// capture rules loaded with iptables-restore/ip6tables-restore, cgroup v2
// directories for the sidecar and the app, a sidecar process that forwards
// redirected connections over TLS and an upstream that accepts only TLS (it
// resets plaintext, as a STRICT mTLS sidecar does).
//
//   pod netns <prefix>-<pid>-gw            upstream netns <prefix>-<pid>-up
//   eth0 198.18.0.2/24, 2001:2::2/64  <-->  eth0 198.18.0.1/24, 2001:2::1/64
//   sidecar: [::]:15001, lo:15000           upstream: [::]:32000 (strict mTLS)
//
// Requires root (CAP_SYS_ADMIN, CAP_NET_ADMIN), iproute2, nsenter,
// iptables-restore/ip6tables-restore and a cgroup v2 mount. Everything
// created is removed by the destructor (also after a failed create()); a
// process killed without unwinding (SIGKILL, an unhandled SIGTERM) takes its
// children with it (PR_SET_PDEATHSIG) but leaves the two netns and the cgroup
// directories behind.
//
// The role processes are fork()ed, not exec()ed: create the pod and start its
// servers before the process starts other threads when possible. A server dies
// when the *thread* that started it exits (PR_SET_PDEATHSIG is per thread).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "event.h"
#include "istio_rules.h"
#include "lab/roles.h"
#include "lab/spawn.h"

namespace cw::lab {

struct PodConfig {
  // Names: netns "<prefix>-<pid>-gw" and "<prefix>-<pid>-up"; cgroup
  // "<cgroup2 root>/<cgroup_prefix>-<pid>/{sidecar,app}". Letters, digits,
  // '-', '_' and '.' only.
  std::string prefix = "cw-lab";
  std::string cgroup_prefix = "capturewatch-lab";
  // The sidecar's and the app's cgroup directories as paths relative to the
  // cgroup2 root (a leading '/' is allowed), e.g. a kubelet layout:
  // "capturewatch-test-42/kubepods/burstable/pod<uid>/<container id>". Empty:
  // "<cgroup_prefix>-<pid>/sidecar" and "<cgroup_prefix>-<pid>/app". Missing
  // parent directories are created (and removed again, deepest first); the
  // directories themselves must not exist yet. Components: 1-255 letters,
  // digits, '-', '_' or '.', not "." or "..". The two may be the same
  // directory.
  std::string sidecar_cgroup;
  std::string app_cgroup;
  uint16_t upstream_port = 32000;
  uint16_t redirect_port = 15001;
  uint16_t admin_port = 15000;
  uint32_t proxy_uid = 1337, proxy_gid = 1337;
  // iptables-restore / ip6tables-restore input for the pod netns, Istio's
  // own rules by default. An empty string loads no rules at all (a pod whose
  // capture was never set up).
  std::string rules_v4 = kIstioRulesV4;
  std::string rules_v6 = kIstioRulesV6;
  // Servers exit by themselves after this long (they also die with the
  // thread that created the pod).
  std::chrono::seconds server_lifetime = std::chrono::hours(24);
};

class LabPod {
 public:
  // Builds the pod (cgroups, netns, veth, addresses, rules). On failure,
  // removes what it had created and throws std::runtime_error naming the step
  // (e.g. "ip6tables-restore failed in netns cw-lab-42-gw: <stderr>"), or
  // std::invalid_argument for a bad config.
  static std::unique_ptr<LabPod> create(const PodConfig& config);

 private:
  struct Key {
    explicit Key() = default;
  };

 public:
  // Use create(); the key keeps this constructor private to it.
  LabPod(Key, const PodConfig& config);
  ~LabPod();  // teardown()
  LabPod(const LabPod&) = delete;
  LabPod& operator=(const LabPod&) = delete;

  // Kills the children (SIGKILL, reaped), then anything left in the pod's
  // cgroups, deletes both netns (the veth pair and the rules go with them),
  // removes the cgroup directories. Idempotent, never throws; problems are
  // reported on stderr.
  void teardown() noexcept;

  const PodConfig& config() const { return config_; }
  const std::string& podNetnsPath() const { return gw_path_; }       // /run/netns/<prefix>-<pid>-gw
  const std::string& upstreamNetnsPath() const { return up_path_; }  // /run/netns/<prefix>-<pid>-up
  const std::string& cgroup2Root() const { return cg_root_; }
  const std::string& sidecarCgroup() const { return sidecar_cg_; }  // absolute directory
  const std::string& appCgroup() const { return app_cg_; }          // absolute directory

  Address podAddressV4() const;  // 198.18.0.2
  Address podAddressV6() const;  // 2001:2::2
  Endpoint upstreamV4() const;   // 198.18.0.1:upstream_port
  Endpoint upstreamV6() const;   // [2001:2::1]:upstream_port
  Endpoint adminV4() const;      // 127.0.0.1:admin_port (loopback: never captured)
  Endpoint adminV6() const;      // [::1]:admin_port

  // Start the servers (each at most once); return once they listen (up to
  // 5 s), throw std::runtime_error if they could not start.
  void startUpstream();  // upstream netns, root, parent's cgroup
  void startSidecar();   // pod netns, proxy_uid/proxy_gid, sidecarCgroup(), comm "envoy"
  pid_t upstreamPid() const { return upstream_.pid(); }  // -1 if not running
  pid_t sidecarPid() const { return sidecar_.pid(); }

  struct ClientResult {
    int ok = 0, reset = 0, refused = 0, other = 0;
    std::vector<uint16_t> local_ports;    // per connection, in order
    std::vector<ClientOutcome> outcomes;  // per connection, in order
  };
  // Runs `count` (1..10000) sequential HTTP GETs to dst from a child in the
  // pod netns, in `cgroup` (a directory; empty: the parent's), as uid/gid,
  // with comm "envoy". Waits for it (count * 3 s + 5 s at most, then kills
  // it). Throws std::runtime_error if the child cannot run. Safe to call from
  // several threads at once.
  ClientResult runClient(uint32_t uid, uint32_t gid, const std::string& cgroup, const Endpoint& dst,
                         int count) const;

 private:
  void build();
  void startServer(ChildProcess& slot, const SpawnOptions& options, Role role,
                   const std::string& what);

  // Creates root/relative and its missing parents; the leaf must be new
  // (or one this pod created already). Returns the absolute directory.
  std::string makeCgroupPath(const std::string& relative);

  PodConfig config_;
  std::string gw_name_, up_name_, gw_path_, up_path_;
  std::string cg_root_, sidecar_cg_, app_cg_;
  // What exists and must be removed.
  bool gw_created_ = false, up_created_ = false;
  std::vector<std::string> cg_created_;  // cgroup directories made, in creation order
  ChildProcess upstream_, sidecar_;
};

}  // namespace cw::lab
