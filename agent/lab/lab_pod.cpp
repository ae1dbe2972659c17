#include "lab/lab_pod.h"

#include <fcntl.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string_view>
#include <thread>

#include "lab/system.h"

namespace cw::lab {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int kMaxClientCount = 10000;
constexpr std::string_view kNameChars =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.";

Address v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  const uint8_t bytes[4] = {a, b, c, d};
  return Address::fromV4(bytes);
}

Address v6(const char* text) { return Address::parse(text).value(); }

void validateName(const std::string& value, const char* field) {
  const bool ok = !value.empty() && value.size() <= 64 && value.front() != '-' &&
                  value.find_first_not_of(kNameChars) == std::string::npos && value != "." &&
                  value != "..";
  if (!ok) {
    throw std::invalid_argument(std::string("PodConfig.") + field + " '" + value +
                                "': use 1-64 letters, digits, '-', '_' or '.'");
  }
}

// The components of a cgroup path relative to the cgroup2 root (a leading
// '/' allowed); throws std::invalid_argument naming `field` if it is not one.
std::vector<std::string> cgroupComponents(const std::string& path, const char* field) {
  std::string_view rest = path;
  if (!rest.empty() && rest.front() == '/') rest.remove_prefix(1);
  std::vector<std::string> parts;
  bool ok = !rest.empty() && path.size() <= 4096;
  while (ok) {
    const size_t slash = rest.find('/');
    const std::string_view part = rest.substr(0, slash);
    ok = !part.empty() && part.size() <= 255 && part != "." && part != ".." &&
         part.find_first_not_of(kNameChars) == std::string_view::npos;
    parts.emplace_back(part);
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  if (!ok) {
    throw std::invalid_argument(std::string("PodConfig.") + field + " '" + path +
                                "': use a path relative to the cgroup2 root whose components are "
                                "1-255 letters, digits, '-', '_' or '.' (not '.' or '..')");
  }
  return parts;
}

void warn(const std::string& message) {
  std::fprintf(stderr, "capturewatch lab: teardown: %s\n", message.c_str());
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// Kills every process still in a cgroup (cgroup.kill, or one by one on
// kernels before 5.14) and waits (bounded) until it is empty.
void emptyCgroup(const std::string& dir) {
  {
    UniqueFd kill_fd(::open((dir + "/cgroup.kill").c_str(), O_WRONLY | O_CLOEXEC));
    if (kill_fd) {
      [[maybe_unused]] ssize_t n = ::write(kill_fd.get(), "1", 1);
    }
  }
  const auto deadline = Clock::now() + 2s;
  while (Clock::now() < deadline) {
    std::ifstream procs(dir + "/cgroup.procs");
    if (!procs) return;  // already gone
    bool any = false;
    pid_t pid;
    while (procs >> pid) {
      any = true;
      ::kill(pid, SIGKILL);
    }
    if (!any) return;
    std::this_thread::sleep_for(5ms);
  }
  warn("processes remain in " + dir);
}

// rmdir, retried briefly: a killed process leaves its cgroup asynchronously.
bool removeCgroupDir(const std::string& dir) {
  const auto deadline = Clock::now() + 2s;
  while (true) {
    if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) return true;
    if (errno != EBUSY || Clock::now() >= deadline) {
      warn("cannot remove cgroup " + dir + ": " + std::strerror(errno));
      return false;
    }
    std::this_thread::sleep_for(5ms);
  }
}

bool deleteNetns(const std::string& name) {
  try {
    CommandResult r = runCommand({"ip", "netns", "del", name}, "", 10s);
    if (r.exit_status == 0 || !exists("/run/netns/" + name)) return true;
    warn("ip netns del " + name + " failed: " + r.err);
  } catch (const std::exception& e) {
    warn("ip netns del " + name + ": " + e.what());
  }
  return false;
}

}  // namespace

LabPod::LabPod(Key, const PodConfig& config) : config_(config) {}

LabPod::~LabPod() { teardown(); }

std::unique_ptr<LabPod> LabPod::create(const PodConfig& config) {
  validateName(config.prefix, "prefix");
  validateName(config.cgroup_prefix, "cgroup_prefix");
  if (!config.sidecar_cgroup.empty()) cgroupComponents(config.sidecar_cgroup, "sidecar_cgroup");
  if (!config.app_cgroup.empty()) cgroupComponents(config.app_cgroup, "app_cgroup");
  if (config.redirect_port == 0 || config.upstream_port == 0 || config.admin_port == 0 ||
      config.redirect_port == config.admin_port) {
    throw std::invalid_argument("PodConfig: ports must be non-zero and distinct");
  }
  // Initialise OpenSSL here, before any fork, so that no child can inherit a
  // half-done initialisation from another thread.
  OPENSSL_init_ssl(0, nullptr);

  auto pod = std::make_unique<LabPod>(Key{}, config);
  pod->build();  // on exception, ~LabPod removes what build() created
  return pod;
}

void LabPod::build() {
  const std::string pid = std::to_string(::getpid());
  gw_name_ = config_.prefix + "-" + pid + "-gw";
  up_name_ = config_.prefix + "-" + pid + "-up";
  gw_path_ = "/run/netns/" + gw_name_;
  up_path_ = "/run/netns/" + up_name_;

  cg_root_ = findCgroup2Root();
  const std::string own_cg = config_.cgroup_prefix + "-" + pid;
  sidecar_cg_ =
      makeCgroupPath(config_.sidecar_cgroup.empty() ? own_cg + "/sidecar" : config_.sidecar_cgroup);
  app_cg_ = makeCgroupPath(config_.app_cgroup.empty() ? own_cg + "/app" : config_.app_cgroup);

  runChecked({"ip", "netns", "add", gw_name_}, "ip netns add " + gw_name_);
  gw_created_ = true;
  runChecked({"ip", "netns", "add", up_name_}, "ip netns add " + up_name_);
  up_created_ = true;

  // The veth pair is created directly inside the two namespaces (both ends
  // named eth0, like a pod's interface): nothing appears in the host netns
  // and deleting a netns deletes the pair. The ends get distinct ifindexes on
  // purpose: in two fresh namespaces both would be 2, and a veth whose ifindex
  // equals its peer's (its iflink) has its carrier change treated as
  // non-urgent by linkwatch (rate-limited to one run per second); until then
  // IPv6 on the upstream side drops the first neighbour solicitation and the
  // first IPv6 connection waits ~1 s for a SYN retransmit.
  runChecked({"ip", "-n", gw_name_, "-batch", "-"},
             "ip link/addr setup failed in netns " + gw_name_,
             "link set lo up\n"
             "link add eth0 index 2 type veth peer name eth0 netns " +
                 up_name_ +
                 " index 3\n"
                 "addr add 198.18.0.2/24 dev eth0\n"
                 "addr add 2001:2::2/64 dev eth0 nodad\n"
                 "link set eth0 up\n");
  runChecked({"ip", "-n", up_name_, "-batch", "-"},
             "ip link/addr setup failed in netns " + up_name_,
             "link set lo up\n"
             "addr add 198.18.0.1/24 dev eth0\n"
             "addr add 2001:2::1/64 dev eth0 nodad\n"
             "link set eth0 up\n");

  // nsenter --net switches only the network namespace (ip netns exec would
  // also remount /sys).
  const std::pair<const char*, const std::string*> loads[] = {
      {"iptables-restore", &config_.rules_v4}, {"ip6tables-restore", &config_.rules_v6}};
  for (const auto& [tool, rules] : loads) {
    if (rules->empty()) continue;
    const std::string exe = findExecutable(tool);
    if (exe.empty()) throw std::runtime_error(std::string(tool) + " not found (install iptables)");
    runChecked({"nsenter", "--net=" + gw_path_, exe},
               std::string(tool) + " failed in netns " + gw_name_, *rules);
  }
}

std::string LabPod::makeCgroupPath(const std::string& relative) {
  const std::vector<std::string> parts = cgroupComponents(relative, "cgroup path");
  cg_created_.reserve(cg_created_.size() + parts.size());  // push_back below cannot throw
  std::string dir = cg_root_;
  for (size_t i = 0; i < parts.size(); ++i) {
    dir += "/" + parts[i];
    if (std::find(cg_created_.begin(), cg_created_.end(), dir) != cg_created_.end()) continue;
    if (::mkdir(dir.c_str(), 0755) == 0) {
      cg_created_.push_back(dir);
      continue;
    }
    const int err = errno;
    // A parent that exists already is used (and left alone by teardown); the
    // directory itself must be new: teardown kills what is in it.
    struct stat st {};
    const bool leaf = i + 1 == parts.size();
    if (err == EEXIST && !leaf && ::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) continue;
    throw std::runtime_error("cannot create cgroup " + dir + ": " + std::strerror(err));
  }
  return dir;
}

void LabPod::teardown() noexcept {
  sidecar_.kill();
  upstream_.kill();
  // Deepest first: cgroup.kill of a directory also kills its descendants.
  for (auto it = cg_created_.rbegin(); it != cg_created_.rend(); ++it) emptyCgroup(*it);
  if (gw_created_ && deleteNetns(gw_name_)) gw_created_ = false;
  if (up_created_ && deleteNetns(up_name_)) up_created_ = false;
  // Deepest first (the reverse of creation); a directory with a descendant
  // that could not be removed is kept (and warned about once, through it).
  for (size_t i = cg_created_.size(); i-- > 0;) {
    const std::string below = cg_created_[i] + "/";
    const bool descendant_left =
        std::any_of(cg_created_.begin() + static_cast<std::ptrdiff_t>(i) + 1, cg_created_.end(),
                    [&](const std::string& d) { return d.compare(0, below.size(), below) == 0; });
    if (descendant_left) continue;
    if (removeCgroupDir(cg_created_[i])) {
      cg_created_.erase(cg_created_.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
}

Address LabPod::podAddressV4() const { return v4(198, 18, 0, 2); }
Address LabPod::podAddressV6() const { return v6("2001:2::2"); }
Endpoint LabPod::upstreamV4() const { return {v4(198, 18, 0, 1), config_.upstream_port}; }
Endpoint LabPod::upstreamV6() const { return {v6("2001:2::1"), config_.upstream_port}; }
Endpoint LabPod::adminV4() const { return {v4(127, 0, 0, 1), config_.admin_port}; }
Endpoint LabPod::adminV6() const { return {v6("::1"), config_.admin_port}; }

void LabPod::startServer(ChildProcess& slot, const SpawnOptions& options, Role role,
                         const std::string& what) {
  if (slot.running()) throw std::logic_error(what + " is already running");
  if (!gw_created_ || !up_created_) throw std::logic_error("the lab pod was torn down");
  slot = spawnInPod(options, std::move(role));
  const Frame f = readFrame(slot.reportFd(), Clock::now() + 5s);
  if (f.status == Frame::Status::kOk && f.type == kFrameReady) return;
  std::string why;
  if (f.status == Frame::Status::kOk && f.type == kFrameError) {
    why = f.payload;
  } else if (f.status == Frame::Status::kTimeout) {
    why = "not listening after 5 s";
  } else {
    why = "exited before listening";
  }
  slot.kill();
  throw std::runtime_error(what + " failed to start: " + why);
}

void LabPod::startUpstream() {
  SpawnOptions options;
  options.name = "upstream";
  options.netns_path = up_path_;
  const uint16_t port = config_.upstream_port;
  const auto lifetime = config_.server_lifetime;
  startServer(
      upstream_, options, [port, lifetime](int fd) { upstreamRole(port, lifetime, fd); },
      "upstream (netns " + up_name_ + ")");
}

void LabPod::startSidecar() {
  SpawnOptions options;
  options.name = "envoy";
  options.cgroup_dir = sidecar_cg_;
  options.netns_path = gw_path_;
  options.uid = config_.proxy_uid;
  options.gid = config_.proxy_gid;
  const uint16_t redirect = config_.redirect_port, admin = config_.admin_port;
  const auto lifetime = config_.server_lifetime;
  startServer(
      sidecar_, options,
      [redirect, admin, lifetime](int fd) { sidecarRole(redirect, admin, lifetime, fd); },
      "sidecar (netns " + gw_name_ + ")");
}

LabPod::ClientResult LabPod::runClient(uint32_t uid, uint32_t gid, const std::string& cgroup,
                                       const Endpoint& dst, int count) const {
  if (count < 1 || count > kMaxClientCount) {
    throw std::invalid_argument("runClient: count must be 1.." + std::to_string(kMaxClientCount));
  }
  if (!gw_created_) throw std::logic_error("the lab pod was torn down");
  SpawnOptions options;
  options.name = "envoy";
  options.cgroup_dir = cgroup;
  options.netns_path = gw_path_;
  options.uid = uid;
  options.gid = gid;
  ChildProcess child = spawnInPod(options, [dst, count](int fd) { clientRole(dst, count, fd); });

  const auto deadline = Clock::now() + count * 3s + 5s;
  const Frame f = readFrame(child.reportFd(), deadline);
  const std::string what = "app client (uid " + std::to_string(uid) + ", to " + dst.str() + ")";
  if (f.status != Frame::Status::kOk) {
    throw std::runtime_error(what + (f.status == Frame::Status::kTimeout
                                         ? ": no report in time (killed)"
                                         : ": exited without a report"));
  }
  if (f.type == kFrameError) throw std::runtime_error(what + " failed: " + f.payload);
  if (f.type != kFrameData) throw std::runtime_error(what + ": unexpected report");
  const auto records = decodeClientRecords(f.payload);
  if (!child.wait(2s)) child.kill();

  ClientResult result;
  for (const auto& r : records) {
    result.local_ports.push_back(r.local_port);
    result.outcomes.push_back(r.outcome);
    switch (r.outcome) {
      case ClientOutcome::kOk:
        ++result.ok;
        break;
      case ClientOutcome::kReset:
        ++result.reset;
        break;
      case ClientOutcome::kRefused:
        ++result.refused;
        break;
      case ClientOutcome::kOther:
        ++result.other;
        break;
    }
  }
  return result;
}

}  // namespace cw::lab
