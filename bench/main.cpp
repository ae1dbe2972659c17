// cw_bench: the benchmark of issue 6, in one go on this machine.
//
//   1. a pod-like netns with Istio's rules and cgroups (cw::lab::LabPod), a
//      fast epoll "sidecar" on [::]:15001 (uid 1337, sidecar cgroup) and a
//      fast epoll upstream;
//   2. connection storms (bench/storm.h) for the captured path (uid 1000 ->
//      upstream, redirected to 15001), the bypass path (uid 1337 in the app
//      cgroup, Istio lets it out) and the proxy path (uid 1337 in the sidecar
//      cgroup), with the agent (`capturewatch run`, a child process) off and
//      on, alternated, several rounds: median rates and their ratio, verdict
//      counts against what the generator made, events lost, CPU, peak RSS,
//      verdict latency;
//   3. the same storm in an unwatched pod: nothing reaches the ring buffer;
//   4. memory: 100k and 1M real concurrent connections held open (captured
//      and bypassed), and synthetic streams of up to 1M connections into the
//      correlator, plus the kernel memory of the owner map;
//   5. the micro-benchmarks (cw_bench_micro, Google Benchmark).
// It prints one table and writes the whole result as JSON.
//
// Everything it creates (netns cw-bench-<pid>-*, cgroups
// capturewatch-bench-<pid>, processes, BPF programs) is removed at the end,
// also on failure and on SIGINT/SIGTERM.
#include <poll.h>
#include <signal.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <bpf/bpf.h>

#include "agent_process.h"
#include "lab/lab_pod.h"
#include "lab/spawn.h"
#include "lab/system.h"
#include "memory.h"
#include "probe.h"
#include "report.h"
#include "servers.h"
#include "stats.h"
#include "stats_floor.h"
#include "storm.h"
#include "targets.h"

namespace cw::bench {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::ordered_json;
using namespace std::chrono_literals;

std::atomic<bool> g_interrupted{false};
void onSignal(int) { g_interrupted.store(true); }

void checkInterrupted() {
  if (g_interrupted.load()) throw std::runtime_error("interrupted");
}

void sleepFor(std::chrono::milliseconds d) {
  const auto end = Clock::now() + d;
  while (Clock::now() < end) {
    checkInterrupted();
    std::this_thread::sleep_for(std::min<Clock::duration>(end - Clock::now(), 50ms));
  }
}

// The largest --hold level: 1M concurrent connections took about 6 GiB of
// the machine (the app's socket, the server's, conntrack) and 40 source
// addresses (holdPart).
constexpr uint64_t kMaxHold = 1'000'000;

struct Options {
  std::string agent = CW_BENCH_AGENT;
  std::string micro = CW_BENCH_MICRO;
  std::string out;       // JSON path; default bench/results/<date>.json
  std::string work_dir;  // agent logs; default a temporary directory, removed at the end
  bool keep_logs = false;
  int rounds = 5;
  double duration_s = 3.0;
  // Idle time before every storm, after its agent is ready (--rest): see
  // restBeforeStorm().
  double rest_s = 1.0;
  int threads = 0;        // storm threads; 0: nproc
  int concurrency = 64;   // per storm thread
  int server_workers = 0;  // 0: nproc
  int grace_ms = 200;
  // Concurrent connections held in the memory test, one level after the
  // other (empty: skip).
  std::vector<uint64_t> holds = {100'000, 1'000'000};
  // The agent is stopped this long as the held connections start opening
  // (--stall-agent): it then reads their records as one backlog.
  double stall_agent_s = 0;
  uint64_t synthetic = 1'000'000;
  std::vector<std::string> paths = {"captured", "bypassed", "proxy"};
  bool unwatched = true;
  bool kernel_cost = true;
  int cost_pairs = 3;  // off/on storm pairs per path of the kernel-cost part
  bool memory = true;
  bool run_micro = true;
  std::string micro_filter;
  std::vector<std::string> agent_args;  // extra `capturewatch run` flags
  bool with_off = true, with_on = true;  // --modes (profiling: one of them only)
  int nice = -15;  // of the bench and all it starts (servers, storms, the agent)
  // Profiling aid: in "on" phases run this shell command instead of the
  // agent ({netns} is replaced by the pod's netns path); no verdict checks.
  std::string raw_attach;
  // Only read these results and pool their same-round ratios (--pool).
  std::vector<std::string> pool;
  // Only hold an empty program on the agent's tracepoint this long
  // (--empty-program; for --raw-attach).
  double empty_program_s = 0;
};

// The help text keeps its columns (clang-format would break its long lines).
// clang-format off
[[noreturn]] void usage(int status) {
  std::fprintf(status == 0 ? stdout : stderr,
               "usage: cw_bench [options]\n"
               "  --out PATH            JSON result (default bench/results/<date>.json)\n"
               "  --agent PATH          capturewatch binary (default: the one built with it)\n"
               "  --micro PATH          cw_bench_micro binary\n"
               "  --rounds N            off/on rounds per path (5)\n"
               "  --duration S          seconds per storm (3)\n"
               "  --rest S              idle seconds before every storm, the agent ready (1; 0: none)\n"
               "  --threads N           storm threads (nproc)\n"
               "  --concurrency N       connections in flight per storm thread (64)\n"
               "  --server-workers N    threads of each bench server (nproc)\n"
               "  --paths LIST          of captured,bypassed,proxy (all)\n"
               "  --hold LIST           concurrent connections held in the memory test, one level\n"
               "                        after the other, each at most 1000000 (100000,1000000; 0 skips)\n"
               "  --stall-agent S       memory test: the agent is stopped (SIGSTOP) for S seconds, at most\n"
               "                        30, as the connections start opening, so that it reads their\n"
               "                        records as one backlog (0: never; with --agent-arg\n"
               "                        --ring-buffer-kb for rings that hold them)\n"
               "  --synthetic N         connections of the synthetic correlator memory test (1000000)\n"
               "  --no-unwatched --no-memory --no-micro --no-kernel-cost   skip a part\n"
               "  --cost-pairs N        off/on storm pairs per path measuring the cost share (3)\n"
               "  --micro-filter REGEX  --benchmark_filter for the micro-benchmarks\n"
               "  --quick               1 round of 2 s, 1 cost pair, hold 20000, synthetic 200000\n"
               "  --agent-arg ARG       extra flag for `capturewatch run` (repeatable)\n"
               "  --work-dir DIR        where the agent logs go (default: a temporary directory,\n"
               "                        removed at the end unless --keep-logs)\n"
               "  --modes off|on|both   storms with the agent off, on, or both (both; one is for profiling)\n"
               "  --nice N              priority of the bench, its servers, storms and the agent (-15):\n"
               "                        other work on the machine perturbs the rates less\n"
               "  --pool FILE           run nothing: pool the same-round on/off ratios of these results\n"
               "                        (repeatable; runs of the same agent) and print each path's\n"
               "                        geometric mean, 95%% interval and budget decision\n"
               "  --raw-attach CMD      profiling: in \"on\" phases run `sh -c CMD` ({netns}: the pod's\n"
               "                        netns path, {sidecar_cgroup}) instead of the agent, e.g. a loader\n"
               "                        of a BPF variant\n"
               "  --empty-program S     run nothing else: hold an empty program (cwb_stats_floor) on the\n"
               "                        agent's tracepoint for S seconds, then print its runs; with\n"
               "                        --raw-attach '/abs/path/cw_bench --empty-program 600' the storms\n"
               "                        show what the programs' runs alone cost\n");
  std::exit(status);
}
// clang-format on

Options parseArgs(int argc, char** argv) {
  Options o;
  auto need = [&](int& i) -> std::string {
    if (i + 1 >= argc) usage(2);
    return argv[++i];
  };
  // An option's value as a number (conv: std::stoi and the like, which throw
  // on text that is not one): a usage error, not an abort.
  auto number = [](const std::string& opt, const std::string& text, auto conv) {
    try {
      return conv(text);
    } catch (const std::logic_error&) {  // std::invalid_argument, std::out_of_range
      std::fprintf(stderr, "cw_bench: %s needs a number, got '%s'\n", opt.c_str(), text.c_str());
      usage(2);
    }
  };
  const auto toInt = [](const std::string& t) { return std::stoi(t); };
  const auto toDouble = [](const std::string& t) { return std::stod(t); };
  const auto toU64 = [](const std::string& t) { return static_cast<uint64_t>(std::stoull(t)); };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") usage(0);
    else if (a == "--out") o.out = need(i);
    else if (a == "--agent") o.agent = need(i);
    else if (a == "--micro") o.micro = need(i);
    else if (a == "--rounds")
      o.rounds = number(a, need(i), toInt);
    else if (a == "--duration")
      o.duration_s = number(a, need(i), toDouble);
    else if (a == "--rest")
      o.rest_s = number(a, need(i), toDouble);
    else if (a == "--threads")
      o.threads = number(a, need(i), toInt);
    else if (a == "--concurrency")
      o.concurrency = number(a, need(i), toInt);
    else if (a == "--server-workers")
      o.server_workers = number(a, need(i), toInt);
    else if (a == "--hold") {
      o.holds.clear();
      std::stringstream ss(need(i));
      std::string n;
      while (std::getline(ss, n, ',')) {
        if (const uint64_t v = number(a, n, toU64); v > 0) o.holds.push_back(v);
      }
    } else if (a == "--stall-agent")
      o.stall_agent_s = number(a, need(i), toDouble);
    else if (a == "--synthetic")
      o.synthetic = number(a, need(i), toU64);
    else if (a == "--no-unwatched") o.unwatched = false;
    else if (a == "--no-memory") o.memory = false;
    else if (a == "--no-kernel-cost") o.kernel_cost = false;
    else if (a == "--cost-pairs")
      o.cost_pairs = number(a, need(i), toInt);
    else if (a == "--no-micro") o.run_micro = false;
    else if (a == "--micro-filter") o.micro_filter = need(i);
    else if (a == "--agent-arg") o.agent_args.push_back(need(i));
    else if (a == "--work-dir") o.work_dir = need(i);
    else if (a == "--nice")
      o.nice = number(a, need(i), toInt);
    else if (a == "--keep-logs") o.keep_logs = true;
    else if (a == "--raw-attach") o.raw_attach = need(i);
    else if (a == "--pool")
      o.pool.push_back(need(i));
    else if (a == "--empty-program")
      o.empty_program_s = number(a, need(i), toDouble);
    else if (a == "--modes") {
      const std::string m = need(i);
      o.with_off = m == "off" || m == "both";
      o.with_on = m == "on" || m == "both";
      if (!o.with_off && !o.with_on) usage(2);
    }
    else if (a == "--quick") {
      o.rounds = 1;
      o.cost_pairs = 1;
      o.duration_s = 2;
      o.holds = {20'000};
      o.synthetic = 200'000;
    } else if (a == "--paths") {
      o.paths.clear();
      std::stringstream ss(need(i));
      std::string p;
      while (std::getline(ss, p, ',')) {
        if (p != "captured" && p != "bypassed" && p != "proxy") usage(2);
        o.paths.push_back(p);
      }
    } else {
      std::fprintf(stderr, "cw_bench: unknown option %s\n", a.c_str());
      usage(2);
    }
  }
  if (o.rounds < 1 || o.rounds > 50 || o.cost_pairs < 1 || o.cost_pairs > 20 || o.duration_s <= 0 ||
      o.duration_s > 60 || !(o.rest_s >= 0 && o.rest_s <= 60) || o.concurrency < 1 ||
      o.concurrency > 4096 || o.synthetic > 4'000'000 ||
      !(o.empty_program_s >= 0 && o.empty_program_s <= 86400) ||
      !(o.stall_agent_s >= 0 && o.stall_agent_s <= 30) ||
      std::any_of(o.holds.begin(), o.holds.end(), [](uint64_t n) { return n > kMaxHold; })) {
    std::fprintf(stderr, "cw_bench: option out of range\n");
    usage(2);
  }
  const int n = static_cast<int>(std::thread::hardware_concurrency());
  if (o.threads <= 0) o.threads = std::max(1, n);
  if (o.server_workers <= 0) o.server_workers = std::max(1, n);
  return o;
}

std::string today() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H%M%SZ", &tm);
  return buf;
}

std::string firstLine(const std::string& path, const std::string& prefix) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0) {
      auto p = line.find(':');
      std::string v = p == std::string::npos ? line : line.substr(p + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "";
}

json machineInfo() {
  json m;
  utsname u{};
  ::uname(&u);
  m["nproc"] = std::thread::hardware_concurrency();
  m["cpu_model"] = firstLine("/proc/cpuinfo", "model name");
  m["kernel"] = std::string(u.release);
  m["memory"] = firstLine("/proc/meminfo", "MemTotal");
  m["os"] = firstLine("/etc/os-release", "PRETTY_NAME");
  if (!m["os"].get<std::string>().empty()) {
    std::string os = m["os"];
    os.erase(std::remove(os.begin(), os.end(), '"'), os.end());
    os.erase(0, os.find('=') + 1);
    m["os"] = os;
  }
  return m;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// sysctl -w inside a netns (nsenter --net switches only the network namespace).
void netnsSysctl(const std::string& netns_path, const std::vector<std::string>& settings) {
  std::vector<std::string> argv = {"nsenter", "--net=" + netns_path, "sysctl", "-q", "-w"};
  argv.insert(argv.end(), settings.begin(), settings.end());
  lab::runChecked(argv, "sysctl in " + netns_path);
}

// Per-netns tuning of a bench pod: deep accept queues so the sidecar's
// accept never waits (and, in the memory test, 1M connections can wait in
// them), a wide ephemeral range, and conntrack TIME_WAIT entries that do not
// fill the table at tens of thousands of connections a second.
void tunePod(const lab::LabPod& pod) {
  netnsSysctl(pod.podNetnsPath(), {"net.core.somaxconn=2097152", "net.ipv4.tcp_max_syn_backlog=65535",
                                   "net.ipv4.ip_local_port_range=10000 65000",
                                   "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1"});
  netnsSysctl(pod.upstreamNetnsPath(),
              {"net.core.somaxconn=2097152", "net.ipv4.tcp_max_syn_backlog=65535"});
}

lab::ChildProcess startServer(const lab::SpawnOptions& where, const ServerConfig& config,
                              const std::string& what) {
  lab::ChildProcess child =
      lab::spawnInPod(where, [config](int fd) { serverRole(config, fd); });
  const lab::Frame f = lab::readFrame(child.reportFd(), Clock::now() + 5s);
  if (f.status != lab::Frame::Status::kOk || f.type != lab::kFrameReady) {
    throw std::runtime_error(what + " failed to start" +
                             (f.type == lab::kFrameError ? ": " + f.payload : std::string()));
  }
  return child;
}

// True while the process exists and has not exited (a zombie has).
bool processAlive(pid_t pid) {
  if (pid <= 0) return false;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return false;
  const auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z' &&
         stat[paren + 2] != 'X';
}

// One bench pod: LabPod (netns, rules, cgroups) + the fast servers.
struct BenchPod {
  std::unique_ptr<lab::LabPod> pod;
  lab::ChildProcess sidecar, upstream;
  std::vector<uint16_t> upstream_ports = {32000, 32001, 32002, 32003};

  BenchPod(const std::string& prefix, const Options& o) {
    lab::PodConfig config;
    config.prefix = prefix;
    config.cgroup_prefix = "capturewatch-" + prefix.substr(3);  // cw-bench -> capturewatch-bench
    pod = lab::LabPod::create(config);
    tunePod(*pod);
    startServers(ServerConfig::Mode::kClose, o);
  }

  void startServers(ServerConfig::Mode mode, const Options& o) {
    sidecar.kill();
    upstream.kill();
    ServerConfig sc;
    sc.mode = mode;
    sc.lifetime = serverLifetime(o);
    sc.ports = {pod->config().redirect_port};
    sc.workers = o.server_workers;
    lab::SpawnOptions s;
    s.name = "envoy";
    s.cgroup_dir = pod->sidecarCgroup();
    s.netns_path = pod->podNetnsPath();
    s.uid = pod->config().proxy_uid;
    s.gid = pod->config().proxy_gid;
    sidecar = startServer(s, sc, "bench sidecar");
    ServerConfig uc = sc;
    uc.ports = upstream_ports;
    lab::SpawnOptions u;
    u.name = "upstream";
    u.netns_path = pod->upstreamNetnsPath();
    upstream = startServer(u, uc, "bench upstream");
  }

  // A storm against a server that is gone measures nothing: the run stops
  // with the reason instead of reporting empty storms.
  void requireServing() const {
    for (const auto& [child, what] :
         {std::pair{&sidecar, "sidecar"}, std::pair{&upstream, "upstream"}}) {
      if (!processAlive(child->pid())) {
        throw std::runtime_error(std::string("the bench pod's ") + what + " server (pid " +
                                 std::to_string(child->pid()) + ") has exited");
      }
    }
  }

 private:
  // The servers die with the bench (PR_SET_PDEATHSIG); their own lifetime,
  // a bound should that fail, covers the longest run these options can make
  // (every storm at its limit, an agent start and a settle each; the memory
  // levels and the other parts an hour more).
  static std::chrono::seconds serverLifetime(const Options& o) {
    const double storms = 2.0 * static_cast<double>(o.paths.size()) * (o.rounds + o.cost_pairs) + 4;
    const double per_storm = o.duration_s + o.rest_s + 20 + 15 + (o.grace_ms / 1000.0) + 7;
    return std::chrono::seconds(static_cast<int64_t>(storms * per_storm) + 3600);
  }
};

// The machine's CPU seconds from /proc/stat: those its tasks used (user,
// nice, system; irq and softirq time is not charged to tasks, so it is left
// out on both sides), and those the hypervisor gave to others while a CPU
// wanted to run (steal): the machine's slow spells.
struct MachineCpuS {
  double busy = 0, steal = 0, idle = 0;
};
MachineCpuS machineCpuS() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  uint64_t v[10] = {};
  in >> cpu;
  for (auto& x : v) in >> x;
  const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  // user nice system idle iowait irq softirq steal guest guest_nice
  return {static_cast<double>(v[0] + v[1] + v[2]) / tick, static_cast<double>(v[7]) / tick,
          static_cast<double>(v[3] + v[4]) / tick};
}

double cgroupCpuS(const std::string& dir) {
  std::ifstream in(dir + "/cpu.stat");
  std::string key;
  uint64_t value = 0;
  while (in >> key >> value) {
    if (key == "usage_usec") return static_cast<double>(value) / 1e6;
  }
  return 0;
}

// CPU used by this benchmark's processes (the pod's cgroups: storms and the
// sidecar; the upstream; the agent) against the whole machine: what else ran
// (other users' builds, ...) during a phase is noise the result must show.
struct CpuMeter {
  double busy = 0, steal = 0, idle = 0, ours = 0;
  Clock::time_point at;
  static CpuMeter read(const BenchPod& bp, pid_t agent) {
    CpuMeter m;
    m.at = Clock::now();
    const MachineCpuS machine = machineCpuS();
    m.busy = machine.busy;
    m.steal = machine.steal;
    m.idle = machine.idle;
    m.ours = cgroupCpuS(std::filesystem::path(bp.pod->sidecarCgroup()).parent_path().string()) +
             procStats(bp.upstream.pid()).sched_cpu_s + (agent > 0 ? procStats(agent).sched_cpu_s : 0) +
             procStats(::getpid()).sched_cpu_s;
    return m;
  }
  // Share of the machine (all CPUs) used by others between two readings, %.
  static double otherPct(const CpuMeter& a, const CpuMeter& b) {
    return pctOfMachine(a, b, std::max(0.0, (b.busy - a.busy) - (b.ours - a.ours)));
  }
  // Share of the machine's CPU time the hypervisor stole between them, %.
  static double stealPct(const CpuMeter& a, const CpuMeter& b) {
    return pctOfMachine(a, b, b.steal - a.steal);
  }
  // Share of the machine's CPU time left idle between them, %: a storm that
  // leaves some is not at the machine's limit (its closed loop waits).
  static double idlePct(const CpuMeter& a, const CpuMeter& b) {
    return pctOfMachine(a, b, b.idle - a.idle);
  }
  static double pctOfMachine(const CpuMeter& a, const CpuMeter& b, double cpu_s) {
    const double wall = std::chrono::duration<double>(b.at - a.at).count();
    const double n = std::max(1u, std::thread::hardware_concurrency());
    return wall > 0 ? cpu_s / (wall * n) * 100 : 0;
  }
};

// Run time of the loaded BPF programs named cw_* (kernel.bpf_stats_enabled
// must be 1 for the kernel to count).
struct ProgStats {
  uint64_t run_ns = 0, runs = 0;
};
std::set<uint32_t> progIdsOf(pid_t pid) {
  // Each BPF program descriptor's fdinfo names its program id: the agent's
  // own programs, not those of any other agent running on the machine.
  std::set<uint32_t> ids;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fdinfo";
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::ifstream in(dir + "/" + e->d_name);
      std::string line;
      while (std::getline(in, line)) {
        if (line.rfind("prog_id:", 0) == 0) ids.insert(static_cast<uint32_t>(std::stoul(line.substr(8))));
      }
    }
    ::closedir(d);
  }
  return ids;
}

std::map<std::string, ProgStats> bpfProgStats(const std::set<uint32_t>& only) {
  std::map<std::string, ProgStats> out;
  for (uint32_t id : only) {
    int fd = ::bpf_prog_get_fd_by_id(id);
    if (fd < 0) continue;
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (::bpf_obj_get_info_by_fd(fd, &info, &len) == 0) {
      auto& ps = out[info.name];
      ps.run_ns += info.run_time_ns;
      ps.runs += info.run_cnt;
    }
    ::close(fd);
  }
  return out;
}

// Other capturewatch-like programs loaded on the machine (another agent, a
// test, the kernel-cost part's stats floor, cwb_*, not yet freed): they run
// on every TCP state change too and disturb the rates.
size_t foreignBpfPrograms(const std::set<uint32_t>& ours) {
  size_t n = 0;
  uint32_t id = 0;
  while (::bpf_prog_get_next_id(id, &id) == 0) {
    if (ours.count(id)) continue;
    int fd = ::bpf_prog_get_fd_by_id(id);
    if (fd < 0) continue;
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (::bpf_obj_get_info_by_fd(fd, &info, &len) == 0 &&
        (std::strncmp(info.name, "cw_", 3) == 0 || std::strncmp(info.name, "cwb_", 4) == 0)) {
      ++n;
    }
    ::close(fd);
  }
  return n;
}

// A global sysctl (/proc/sys/...) set while it lives, restored on
// destruction (also when the bench fails or is interrupted). A sysctl the
// kernel does not have is left alone, and so is one already at least
// `value` when only raising.
class SysctlWhile {
 public:
  enum class Mode { kSet, kRaise };
  SysctlWhile(std::string path, uint64_t value, Mode mode = Mode::kSet) : path_(std::move(path)) {
    std::ifstream in(path_);
    if (!(in >> previous_) || (mode == Mode::kRaise && previous_ >= value)) {
      path_.clear();
      return;
    }
    std::ofstream(path_) << value;
  }
  ~SysctlWhile() {
    if (!path_.empty()) std::ofstream(path_) << previous_;
  }
  SysctlWhile(const SysctlWhile&) = delete;
  SysctlWhile& operator=(const SysctlWhile&) = delete;

 private:
  std::string path_;
  uint64_t previous_ = 0;
};

struct PathSpec {
  std::string name;      // captured, bypassed, proxy
  uint32_t uid = 1000;
  bool sidecar_cgroup = false;
};

PathSpec pathSpec(const std::string& name) {
  if (name == "captured") return {name, 1000, false};
  if (name == "bypassed") return {name, 1337, false};
  return {name, 1337, true};  // proxy
}

lab::ChildProcess spawnStorm(const BenchPod& bp, const PathSpec& path, const StormConfig& config) {
  lab::SpawnOptions where;
  where.name = "storm";
  where.netns_path = bp.pod->podNetnsPath();
  where.cgroup_dir = path.sidecar_cgroup ? bp.pod->sidecarCgroup() : bp.pod->appCgroup();
  where.uid = path.uid;
  where.gid = path.uid;
  return lab::spawnInPod(where, [config](int fd) { stormRole(config, fd); });
}

// The next report of a storm generator (read in slices so that SIGINT is
// noticed).
StormResult readStormReport(lab::ChildProcess& child, const std::string& what,
                            Clock::time_point limit) {
  // Wait for the pipe to be readable in slices (SIGINT is noticed), then
  // read the whole frame with the full deadline: a frame is never split
  // between two reads.
  while (Clock::now() < limit) {
    pollfd p{child.reportFd(), POLLIN, 0};
    if (::poll(&p, 1, 200) > 0) break;
    checkInterrupted();
  }
  const lab::Frame f = lab::readFrame(child.reportFd(), limit);
  if (f.status != lab::Frame::Status::kOk) {
    std::string why = "no report in time";
    if (f.status != lab::Frame::Status::kTimeout) {
      why = "exited without a report";
      if (auto st = child.wait(2s)) {
        why += WIFSIGNALED(*st) ? " (signal " + std::to_string(WTERMSIG(*st)) + ")"
                                : " (status " + std::to_string(WEXITSTATUS(*st)) + ")";
      }
    }
    throw std::runtime_error("storm generator (" + what + "): " + why);
  }
  if (f.type == lab::kFrameError) throw std::runtime_error("storm generator: " + f.payload);
  return StormResult::fromJson(f.payload);
}

Clock::time_point stormLimit(const StormConfig& c) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                            c.duration_s + c.drain_timeout_s + 15 + (c.hold ? c.hold_timeout_s : 0)));
}

// Runs a storm generator in the pod and returns its final report.
StormResult runStorm(const BenchPod& bp, const PathSpec& path, const StormConfig& config) {
  bp.requireServing();
  lab::ChildProcess child = spawnStorm(bp, path, config);
  StormResult r = readStormReport(child, path.name, stormLimit(config));
  child.wait(5s);
  bp.requireServing();
  return r;
}

// Hold mode: `total` connections held open at once by several generators (a
// process may not have more than RLIMIT_NOFILE descriptors, and raising it
// needs CAP_SYS_RESOURCE). on_holding runs once all of them hold their
// connections; then they are released (SIGUSR1). Returns the summed reports.
StormResult holdStorms(const BenchPod& bp, const PathSpec& path, StormConfig config, uint64_t total,
                       const std::function<void(uint64_t held)>& on_holding) {
  bp.requireServing();
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  // At most 262,144 each: a level of 1M is opened by four, on every CPU.
  const uint64_t per_child =
      std::clamp<uint64_t>(rl.rlim_cur > 1000 ? rl.rlim_cur - 500 : 1000, 1000, 262'144);
  std::vector<lab::ChildProcess> children;
  const auto limit = stormLimit(config);
  for (uint64_t left = total; left > 0;) {
    config.max_connections = std::min(left, per_child);
    left -= config.max_connections;
    children.push_back(spawnStorm(bp, path, config));
  }
  auto release = [&] {
    for (auto& c : children) {
      if (c.running()) ::kill(c.pid(), SIGUSR1);
    }
  };
  StormResult sum;
  try {
    uint64_t held = 0;
    for (auto& c : children) held += readStormReport(c, path.name, limit).established;
    on_holding(held);
    sum.holding = true;
    sum.window_established = held;
  } catch (...) {
    release();
    throw;
  }
  release();
  for (auto& c : children) {
    const StormResult r = readStormReport(c, path.name, limit);
    sum.attempted += r.attempted;
    sum.established += r.established;
    sum.failed += r.failed;
    sum.sync_errors += r.sync_errors;
    sum.elapsed_s = std::max(sum.elapsed_s, r.elapsed_s);
    for (const auto& [k, v] : r.errors) sum.errors[k] += v;
    c.wait(5s);
  }
  return sum;
}

StormConfig stormConfig(const BenchPod& bp, const Options& o) {
  StormConfig c;
  c.destinations = {bp.pod->upstreamV4()};
  c.threads = o.threads;
  c.concurrency = o.concurrency;
  c.duration_s = o.duration_s;
  c.max_connections = 2'000'000;
  return c;
}

// ---- the agent --------------------------------------------------------------

std::vector<std::string> agentArgs(const BenchPod& bp, const Options& o, uint16_t port) {
  std::vector<std::string> args = {"run",
                                   "--netns", bp.pod->podNetnsPath(),
                                   "--proxy-cgroup", bp.pod->sidecarCgroup(),
                                   "--metrics-address", "127.0.0.1:" + std::to_string(port),
                                   "--grace-ms", std::to_string(o.grace_ms),
                                   "--log-format", "json",
                                   "--summary-interval", "3600"};
  args.insert(args.end(), o.agent_args.begin(), o.agent_args.end());
  return args;
}

struct Snapshot {
  std::vector<Sample> samples;
  ProcStats proc;
  Clock::time_point at;
};

Snapshot snapshot(const AgentProcess& agent) {
  Snapshot s;
  s.proc = procStats(agent.pid());
  s.samples = agent.scrape();
  s.at = Clock::now();
  return s;
}

const std::vector<std::string> kVerdicts = {"captured", "bypassed", "proxy", "local", "unknown"};

double verdictCount(const std::vector<Sample>& s, const std::string& verdict) {
  return metricSum(s, "capturewatch_connections_total", {{"verdict", verdict}});
}

double verdictTotal(const std::vector<Sample>& s) {
  double t = 0;
  for (const auto& v : kVerdicts) t += verdictCount(s, v);
  return t;
}

// What one storm phase with the agent on shows, from two snapshots.
json agentDelta(const Snapshot& before, const Snapshot& after) {
  json j;
  json verdicts;
  for (const auto& v : kVerdicts) {
    verdicts[v] = verdictCount(after.samples, v) - verdictCount(before.samples, v);
  }
  j["verdicts"] = verdicts;
  auto delta = [&](const std::string& name) {
    return metricSum(after.samples, name) - metricSum(before.samples, name);
  };
  j["events_read"] = delta("capturewatch_events_read_total");
  j["events_lost"] = delta("capturewatch_events_lost_total");
  j["bpf_runs_skipped"] = delta("capturewatch_bpf_runs_skipped_total");
  j["owner_insert_failed"] = delta("capturewatch_owner_insert_failed_total");
  j["correlator_evictions"] = delta("capturewatch_correlator_evictions_total");
  j["orphan_accepts"] = delta("capturewatch_orphan_accepts_total");
  j["duplicates"] =
      metricSum(after.samples, "capturewatch_events_dropped_total", {{"reason", "duplicate"}}) -
      metricSum(before.samples, "capturewatch_events_dropped_total", {{"reason", "duplicate"}});
  j["malformed"] = delta("capturewatch_events_malformed_total") +
                   metricSum(after.samples, "capturewatch_events_dropped_total", {{"reason", "malformed"}}) -
                   metricSum(before.samples, "capturewatch_events_dropped_total", {{"reason", "malformed"}});
  j["cpu_s"] = after.proc.cpu_s - before.proc.cpu_s;
  j["sched_cpu_s"] = after.proc.sched_cpu_s - before.proc.sched_cpu_s;
  j["rss_kib"] = after.proc.rss_kib;
  j["hwm_kib"] = after.proc.hwm_kib;
  const auto buckets = bucketDelta(histogramBuckets(after.samples, "capturewatch_verdict_latency_seconds"),
                                   histogramBuckets(before.samples, "capturewatch_verdict_latency_seconds"));
  json b = json::object();
  for (const auto& [le, count] : buckets) {
    b[std::isinf(le) ? std::string("+Inf") : (std::ostringstream() << le).str()] = count;
  }
  j["latency_buckets"] = b;
  return j;
}

// Waits until the agent has reported `expected` verdicts since `before`
// (bypassed ones wait for the grace window), then one counter sync more (the
// agent copies kernel and read counters to /metrics once a second).
Snapshot settle(const AgentProcess& agent, const Snapshot& before, double expected,
                const Options& o, std::chrono::milliseconds patience = 5s) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(o.grace_ms) + patience;
  while (Clock::now() < deadline) {
    checkInterrupted();
    auto s = agent.scrape();
    if (verdictTotal(s) - verdictTotal(before.samples) >= expected) break;
    std::this_thread::sleep_for(50ms);
  }
  sleepFor(1100ms);
  return snapshot(agent);
}

// Expected verdicts of a path: every connection that reached SYN_SENT gets
// exactly one. Captured path: established ones are captured, failed connects
// are bypassed (failed/refused). Bypass path: all bypassed. Proxy: all proxy.
json expectedVerdicts(const std::string& path, const StormResult& r) {
  json e;
  for (const auto& v : kVerdicts) e[v] = 0;
  if (path == "captured") {
    e["captured"] = r.established;
    e["bypassed"] = r.failed;
  } else if (path == "bypassed") {
    e["bypassed"] = r.attempted;
  } else {
    e["proxy"] = r.attempted;
  }
  return e;
}

// Misclassified: verdicts that are not where expected; missing: expected
// verdicts never reported.
void compareVerdicts(json& phase) {
  const json& exp = phase["expected"];
  const json& got = phase["agent"]["verdicts"];
  double matched = 0, expected = 0, observed = 0;
  for (const auto& v : kVerdicts) {
    matched += std::min(exp[v].get<double>(), got[v].get<double>());
    expected += exp[v].get<double>();
    observed += got[v].get<double>();
  }
  phase["missing_verdicts"] = std::max(0.0, expected - observed);
  phase["misclassified_verdicts"] = observed - matched;
  phase["exact"] = matched == expected && observed == expected;
}

json stormJson(const StormResult& r) {
  json j;
  j["rate"] = r.rate();
  j["attempted"] = r.attempted;
  j["established"] = r.established;
  j["failed"] = r.failed;
  j["sync_errors"] = r.sync_errors;
  j["window_s"] = r.window_s;
  j["elapsed_s"] = r.elapsed_s;
  j["errors"] = r.errors;
  return j;
}

void progress(const std::string& text) {
  std::fprintf(stderr, "cw_bench: %s\n", text.c_str());
}

// ---- the parts ----------------------------------------------------------------

// The kernel frees a stopped agent's programs a little later: a storm with
// the agent off measured meanwhile would still pay for them.
void waitForAgentProgramsFreed() {
  const auto until = Clock::now() + 5s;
  while (foreignBpfPrograms({}) > 0 && Clock::now() < until) sleepFor(50ms);
}

// The same idle time before every storm, once its agent (if any) is ready.
// Without it, a storm with the agent off that followed another one started at
// once, in the wake of the first (its sockets still being freed), while every
// storm with the agent on started after the agent's start: a null control
// (--raw-attach 'sleep 900', nothing attached) measured on/off 101.0%
// [100.2-101.8%] over 50 rounds; with a second of rest before each storm,
// 100.0% [99.1-101.0%] (README Performance, session 19).
void restBeforeStorm(const Options& o) {
  if (o.rest_s > 0) sleepFor(std::chrono::milliseconds(static_cast<int64_t>(o.rest_s * 1000)));
  checkInterrupted();
}

// Rounds of every path with the agent off and on, alternated (off,on then
// on,off, ...), each path's two storms back to back (an agent is started for
// each "on" storm): the machine's drift, which moves the rate by 10-20% over
// tens of seconds on this guest, hits both alike.
json stormRounds(const BenchPod& bp, const Options& o, const std::string& work_dir) {
  json phases = json::array();
  for (int round = 0; round < o.rounds; ++round) {
    const bool on_first = round % 2 == 1;
    for (const auto& name : o.paths) {
      for (int k = 0; k < 2; ++k) {
        const bool on = (k == 0) == on_first;
        if ((on && !o.with_on) || (!on && !o.with_off)) continue;
        std::optional<AgentProcess> agent;
        std::optional<lab::ChildProcess> raw;
        if (on && !o.raw_attach.empty()) {
          std::string cmd = o.raw_attach;
          for (size_t at; (at = cmd.find("{netns}")) != std::string::npos;) {
            cmd.replace(at, 7, bp.pod->podNetnsPath());
          }
          for (size_t at; (at = cmd.find("{sidecar_cgroup}")) != std::string::npos;) {
            cmd.replace(at, 16, bp.pod->sidecarCgroup());
          }
          lab::SpawnOptions nowhere;
          raw.emplace(lab::spawnInPod(nowhere, [cmd](int fd) {
            lab::writeFrame(fd, lab::kFrameReady, "");
            ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
          }));
          lab::readFrame(raw->reportFd(), Clock::now() + 5s);
          sleepFor(500ms);  // let it load and attach
        } else if (on) {
          const uint16_t port = freePort();
          agent.emplace(o.agent, agentArgs(bp, o, port),
                        work_dir + "/agent-round" + std::to_string(round) + "-" + name + ".log",
                        port);
          agent->waitReady(20s);
        } else {
          waitForAgentProgramsFreed();
        }
        checkInterrupted();
        const PathSpec path = pathSpec(name);
        restBeforeStorm(o);
        std::optional<Snapshot> before;
        if (agent) before = snapshot(*agent);
        const CpuMeter cpu0 = CpuMeter::read(bp, agent ? agent->pid() : -1);
        const std::set<uint32_t> our_progs = agent ? progIdsOf(agent->pid()) : std::set<uint32_t>{};
        const size_t foreign0 = foreignBpfPrograms(our_progs);
        const StormResult r = runStorm(bp, path, stormConfig(bp, o));
        const CpuMeter cpu1 = CpuMeter::read(bp, agent ? agent->pid() : -1);
        json phase;
        phase["round"] = round;
        phase["path"] = name;
        phase["agent"] = on;
        phase["storm"] = stormJson(r);
        phase["storm"]["other_cpu_pct"] = CpuMeter::otherPct(cpu0, cpu1);
        phase["storm"]["steal_pct"] = CpuMeter::stealPct(cpu0, cpu1);
        phase["storm"]["idle_pct"] = CpuMeter::idlePct(cpu0, cpu1);
        phase["storm"]["foreign_bpf_programs"] = std::max(foreign0, foreignBpfPrograms(our_progs));
        if (agent) {
          const Snapshot after = settle(*agent, *before, static_cast<double>(r.attempted), o);
          phase["expected"] = expectedVerdicts(name, r);
          phase["agent"] = agentDelta(*before, after);
          phase["agent"]["on"] = true;
          compareVerdicts(phase);
        } else if (raw) {
          phase["agent"] = json{{"on", true}, {"raw_attach", o.raw_attach}};
          phase["exact"] = true;
        } else {
          phase["agent"] = json{{"on", false}};
        }
        char line[256];
        std::snprintf(
            line, sizeof line,
            "round %d %-8s agent %-3s %9.0f conn/s  (others: %4.1f%% CPU, steal %4.1f%%, idle "
            "%4.1f%%, %zu cw_ programs)%s",
            round + 1, name.c_str(), on ? "on" : "off", r.rate(),
            phase["storm"]["other_cpu_pct"].get<double>(),
            phase["storm"]["steal_pct"].get<double>(), phase["storm"]["idle_pct"].get<double>(),
            phase["storm"]["foreign_bpf_programs"].get<size_t>(),
            on ? (phase["exact"].get<bool>() ? "  verdicts exact" : "  VERDICTS DIFFER") : "");
        progress(line);
        phases.push_back(std::move(phase));
        if (agent) {
          const int status = agent->stop();
          if (status != 0)
            progress("warning: the agent exited with status " + std::to_string(status));
        }
      }
    }
  }
  return phases;
}

json summarize(const json& phases, const Options& o) {
  json out = json::object();
  for (const auto& name : o.paths) {
    std::vector<double> off, on;
    double conns = 0, cpu = 0, sched_cpu = 0, lost = 0, skipped = 0, missing = 0, mis = 0, read = 0;
    double hwm = 0, other_max = 0, steal_max = 0;
    uint64_t failed = 0, sync_errors = 0;
    std::map<double, double> buckets;
    for (const auto& p : phases) {
      if (p["path"] != name) continue;
      const bool is_on = p["agent"]["on"].get<bool>();
      (is_on ? on : off).push_back(p["storm"]["rate"].get<double>());
      failed += p["storm"]["failed"].get<uint64_t>();
      other_max = std::max(other_max, p["storm"].value("other_cpu_pct", 0.0));
      steal_max = std::max(steal_max, p["storm"].value("steal_pct", 0.0));
      sync_errors += p["storm"]["sync_errors"].get<uint64_t>();
      if (!is_on || p["agent"].contains("raw_attach")) continue;
      conns += p["storm"]["attempted"].get<double>();
      cpu += p["agent"]["cpu_s"].get<double>();
      sched_cpu += p["agent"]["sched_cpu_s"].get<double>();
      lost += p["agent"]["events_lost"].get<double>();
      skipped += p["agent"].value("bpf_runs_skipped", 0.0);
      read += p["agent"]["events_read"].get<double>();
      missing += p["missing_verdicts"].get<double>();
      mis += p["misclassified_verdicts"].get<double>();
      hwm = std::max(hwm, p["agent"]["hwm_kib"].get<double>());
      for (const auto& [le, count] : p["agent"]["latency_buckets"].items()) {
        const double l = le == "+Inf" ? INFINITY : std::stod(le);
        buckets[l] += count.get<double>();
      }
    }
    json s;
    s["rate_off_median"] = median(off);
    s["rate_on_median"] = median(on);
    s["rate_off"] = off;
    s["rate_on"] = on;
    s["ratio"] = median(off) > 0 ? median(on) / median(off) : 0;
    // The same round's on/off pair (they ran back to back): less exposed to
    // the machine's drift between rounds than the ratio of the medians.
    std::map<int, std::pair<double, double>> by_round;  // round -> (off, on)
    for (const auto& p : phases) {
      if (p["path"] != name) continue;
      auto& pair = by_round[p["round"].get<int>()];
      (p["agent"]["on"].get<bool>() ? pair.second : pair.first) = p["storm"]["rate"].get<double>();
    }
    std::vector<double> paired;
    for (const auto& [round, pair] : by_round) {
      if (pair.first > 0 && pair.second > 0) paired.push_back(pair.second / pair.first);
    }
    s["ratio_per_round"] = paired;
    s["ratio_paired_median"] = median(paired);
    const RatioInterval ci = pairedRatioInterval(paired);
    s["ratio_paired_geomean"] = ci.geomean;
    s["ratio_paired_ci95"] = {ci.lo, ci.hi};
    s["ratio_paired_rounds"] = ci.n;
    s["connections_agent_on"] = conns;
    s["events_read"] = read;
    s["events_per_connection"] = conns > 0 ? read / conns : 0;
    s["events_lost"] = lost;
    s["bpf_runs_skipped"] = skipped;
    s["missing_verdicts"] = missing;
    s["misclassified_verdicts"] = mis;
    s["connect_failures"] = failed;
    s["other_cpu_pct_max"] = other_max;
    s["steal_pct_max"] = steal_max;
    s["sync_errors"] = sync_errors;
    s["agent_cpu_s"] = cpu;
    s["agent_sched_cpu_s"] = sched_cpu;
    s["agent_cpu_s_per_million"] = conns > 0 ? sched_cpu / conns * 1e6 : 0;
    s["agent_cpu_s_per_million_stat"] = conns > 0 ? cpu / conns * 1e6 : 0;
    // seconds per connection * 10k connections/s = fraction of one core.
    s["agent_core_pct_per_10k_per_s"] = conns > 0 ? sched_cpu / conns * 1e4 * 100 : 0;
    s["agent_peak_rss_mib"] = hwm / 1024;
    s["latency_p50_s"] = histogramQuantile(buckets, 0.5);
    s["latency_p99_s"] = histogramQuantile(buckets, 0.99);
    double total = buckets.empty() ? 0 : buckets.rbegin()->second;
    double within = 0;
    for (const auto& [le, c] : buckets) {
      if (le <= (o.grace_ms + 50) / 1000.0 + 1e-9) within = c;
    }
    s["latency_within_grace_plus_50ms"] = total > 0 ? within / total : 1;
    out[name] = s;
  }
  return out;
}

// What the BPF programs and the agent cost per connection, set against what
// the machine spends on one, all in the same minute: the machine goes
// through slower and quicker spells, in which every kernel path, the
// programs' included, takes longer, so a share whose parts come from
// different parts of a run reads high or low (README Performance). For each
// path, o.cost_pairs pairs of storms back to back, in alternating order: one
// with no agent (the machine's CPU per connection: its cores / the rate), one
// with the agent and kernel.bpf_stats_enabled (on only for this part: it adds
// two clock reads per run), which gives the programs' run time and the
// agent's CPU until its verdicts are in. Each pair gives a share; the medians
// are reported.
json kernelCostPart(const BenchPod& bp, const Options& o, const std::string& work_dir) {
  json j = json::object();
  SysctlWhile stats_on("/proc/sys/kernel/bpf_stats_enabled", 1);
  const double nproc = std::max(1u, std::thread::hardware_concurrency());
  for (const auto& name : o.paths) {
    const PathSpec path = pathSpec(name);
    json pairs = json::array();
    std::vector<double> bpf, agent_ns, machine, shares, runs, floors, bpf_less, shares_less;
    for (int pair = 0; pair < o.cost_pairs; ++pair) {
      json p;
      double rate_off = 0, bpf_ns = 0, agent_cpu_ns = 0, runs_per_conn = 0;
      double floor_ns = -1, bpf_less_floor_ns = -1;
      for (int k = 0; k < 2; ++k) {
        if ((k == 0) == (pair % 2 == 0)) {
          waitForAgentProgramsFreed();
          restBeforeStorm(o);
          rate_off = runStorm(bp, path, stormConfig(bp, o)).rate();
          continue;
        }
        const uint16_t port = freePort();
        AgentProcess agent(o.agent, agentArgs(bp, o, port),
                           work_dir + "/agent-kcost-" + name + "-" + std::to_string(pair) + ".log",
                           port);
        agent.waitReady(20s);
        checkInterrupted();
        const auto ids = progIdsOf(agent.pid());
        // The empty program runs on the same tracepoint, in the same storm.
        std::optional<StatsFloor> stats_floor;
        try {
          stats_floor.emplace();
        } catch (const std::exception& e) {
          if (pair == 0) progress(std::string(e.what()) + ": BPF run times are given without it");
        }
        restBeforeStorm(o);
        const Snapshot before = snapshot(agent);
        const auto stats0 = bpfProgStats(ids);
        const StatsFloor::Reading floor0 =
            stats_floor ? stats_floor->read() : StatsFloor::Reading{};
        const StormResult r = runStorm(bp, path, stormConfig(bp, o));
        const auto stats1 = bpfProgStats(ids);
        const StatsFloor::Reading floor1 =
            stats_floor ? stats_floor->read() : StatsFloor::Reading{};
        stats_floor.reset();
        const Snapshot after = settle(agent, before, static_cast<double>(r.attempted), o);
        agent.stop();
        double ns = 0, n = 0;
        json progs = json::object();
        for (const auto& [prog, a] : stats1) {
          ProgStats b;
          if (auto it = stats0.find(prog); it != stats0.end()) b = it->second;
          const double dns = static_cast<double>(a.run_ns - b.run_ns);
          const double druns = static_cast<double>(a.runs - b.runs);
          progs[prog] = {{"runs", druns}, {"ns_per_run", druns > 0 ? dns / druns : 0}};
          ns += dns;
          n += druns;
        }
        const double conns = std::max<double>(1, static_cast<double>(r.attempted));
        bpf_ns = ns / conns;
        if (floor1.runs > floor0.runs) {
          floor_ns = static_cast<double>(floor1.run_ns - floor0.run_ns) /
                     static_cast<double>(floor1.runs - floor0.runs);
          bpf_less_floor_ns = std::max(0.0, ns - n * floor_ns) / conns;
        }
        agent_cpu_ns = (after.proc.sched_cpu_s - before.proc.sched_cpu_s) * 1e9 / conns;
        runs_per_conn = n / conns;
        p["connections"] = r.attempted;
        p["rate_on"] = r.rate();
        p["programs"] = progs;
      }
      const double machine_ns = rate_off > 0 ? nproc * 1e9 / rate_off : 0;
      const double share = machine_ns > 0 ? (bpf_ns + agent_cpu_ns) / machine_ns : 0;
      p.update(json{{"rate_off", rate_off},
                    {"runs_per_connection", runs_per_conn},
                    {"bpf_ns_per_connection", bpf_ns},
                    {"agent_ns_per_connection", agent_cpu_ns},
                    {"machine_ns_per_connection", machine_ns},
                    {"share", share}});
      std::string less_floor;
      if (floor_ns >= 0 && machine_ns > 0) {
        const double share_less = (bpf_less_floor_ns + agent_cpu_ns) / machine_ns;
        p.update(json{{"stats_floor_ns_per_run", floor_ns},
                      {"bpf_ns_per_connection_less_floor", bpf_less_floor_ns},
                      {"share_less_floor", share_less}});
        floors.push_back(floor_ns);
        bpf_less.push_back(bpf_less_floor_ns);
        shares_less.push_back(share_less);
        less_floor = "; less bpf_stats' floor of " + std::to_string(static_cast<int>(floor_ns)) +
                     " ns per run: " + std::to_string(static_cast<int>(bpf_less_floor_ns)) +
                     " ns of BPF, " + std::to_string(share_less * 100).substr(0, 4) + "%";
      }
      bpf.push_back(bpf_ns);
      agent_ns.push_back(agent_cpu_ns);
      machine.push_back(machine_ns);
      shares.push_back(share);
      runs.push_back(runs_per_conn);
      progress("kernel cost " + name + ": " + std::to_string(static_cast<int>(bpf_ns)) +
               " ns of BPF + " + std::to_string(static_cast<int>(agent_cpu_ns)) +
               " ns of agent of " + std::to_string(static_cast<int>(machine_ns)) +
               " ns per connection (" + std::to_string(share * 100).substr(0, 4) + "%" +
               less_floor + ")");
      pairs.push_back(std::move(p));
    }
    j[name] = {{"pairs", pairs},
               {"runs_per_connection", median(runs)},
               {"bpf_ns_per_connection", median(bpf)},
               {"agent_ns_per_connection", median(agent_ns)},
               {"machine_ns_per_connection", median(machine)},
               {"share", median(shares)}};
    if (!floors.empty()) {
      j[name].update(json{{"stats_floor_ns_per_run", median(floors)},
                          {"bpf_ns_per_connection_less_floor", median(bpf_less)},
                          {"share_less_floor", median(shares_less)}});
    }
  }
  return j;
}

// The storm in a pod the agent does not watch: the ring buffer must get
// nothing. Checked twice: through the agent's events_read counter, and with a
// Probe in this process that watches only the bench pod.
json unwatchedPart(const BenchPod& watched, const BenchPod& other, const Options& o,
                   const std::string& work_dir) {
  json j;
  // The bypass path (in a watched pod every connection ships its records;
  // here none may).
  const PathSpec path = pathSpec("bypassed");
  j["path"] = path.name;
  std::vector<double> off, on;
  double events_read = 0, verdicts = 0, conns = 0;
  const int rounds = std::max(1, std::min(o.rounds, 3));
  for (int round = 0; round < rounds; ++round) {
    off.push_back(runStorm(other, path, stormConfig(other, o)).rate());
    const uint16_t port = freePort();
    AgentProcess agent(o.agent, agentArgs(watched, o, port),
                       work_dir + "/agent-unwatched" + std::to_string(round) + ".log", port);
    agent.waitReady(20s);
    const Snapshot before = snapshot(agent);
    const StormResult r = runStorm(other, path, stormConfig(other, o));
    on.push_back(r.rate());
    conns += static_cast<double>(r.attempted);
    sleepFor(std::chrono::milliseconds(o.grace_ms) + 1100ms);
    const Snapshot after = snapshot(agent);
    events_read += metricSum(after.samples, "capturewatch_events_read_total") -
                   metricSum(before.samples, "capturewatch_events_read_total");
    verdicts += verdictTotal(after.samples) - verdictTotal(before.samples);
    agent.stop();
    progress("unwatched round " + std::to_string(round + 1) + ": " + std::to_string(static_cast<int>(r.rate())) +
             " conn/s, agent read " + std::to_string(static_cast<int>(events_read)) + " events");
  }
  j["connections"] = conns;
  j["rate_off_median"] = median(off);
  j["rate_on_median"] = median(on);
  j["ratio"] = median(off) > 0 ? median(on) / median(off) : 0;
  j["agent_events_read"] = events_read;
  j["agent_verdicts"] = verdicts;

  // The probe itself: records submitted by the kernel for the unwatched pod.
  uint64_t handled = 0;
  ProbeOptions po;
  auto probe = Probe::open(po, [&handled](std::span<const uint8_t>) { ++handled; });
  probe->watchNetns(netnsInode(watched.pod->podNetnsPath()), 1);
  StormConfig c = stormConfig(other, o);
  const StormResult r = runStorm(other, path, c);
  for (int i = 0; i < 5; ++i) probe->poll(20);
  probe->flush();
  const ProbeCounters pc = probe->counters();
  j["probe_connections"] = r.attempted;
  j["probe_records_submitted"] = pc.submitted;
  j["probe_records_read"] = handled;
  j["probe_ringbuf_lost"] = pc.ringbuf_lost;
  j["nothing_shipped"] = events_read == 0 && pc.submitted == 0 && handled == 0 && pc.ringbuf_lost == 0;
  return j;
}

// MemAvailable of /proc/meminfo, in KiB: what the kernel and every process
// together take from the machine.
uint64_t memAvailableKib() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t value = 0;
  std::string unit;
  while (in >> key >> value >> unit) {
    if (key == "MemAvailable:") return value;
  }
  return 0;
}

// TCP sockets in use in the netns of process `pid` (IPv4 and IPv6,
// /proc/PID/net/sockstat*).
uint64_t tcpSocketsInUse(pid_t pid) {
  uint64_t total = 0;
  for (const char* file : {"sockstat", "sockstat6"}) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + file);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("TCP: ", 0) != 0 && line.rfind("TCP6: ", 0) != 0) continue;
      std::istringstream words(line);
      std::string word;
      while (words >> word) {
        if (word == "inuse" && words >> word) total += std::stoull(word);
      }
    }
  }
  return total;
}

// Stops a process (SIGSTOP) for `seconds`, or until destroyed if sooner.
class Stall {
 public:
  Stall(pid_t pid, double seconds) : pid_(pid) {
    if (::kill(pid_, SIGSTOP) != 0)
      throw std::runtime_error("SIGSTOP: " + std::string(strerror(errno)));
    thread_ = std::jthread([this, seconds](const std::stop_token& stop) {
      const auto until = Clock::now() + std::chrono::duration<double>(seconds);
      while (!stop.stop_requested() && Clock::now() < until) std::this_thread::sleep_for(20ms);
      ::kill(pid_, SIGCONT);
    });
  }
  Stall(const Stall&) = delete;
  Stall& operator=(const Stall&) = delete;
  ~Stall() {
    thread_.request_stop();
    thread_.join();
  }

 private:
  pid_t pid_;
  std::jthread thread_;
};

// `n` real concurrent connections, held open, with the agent on: captured
// (uid 1000 -> sidecar) then bypassed (uid 1337 -> upstream). The servers do
// not accept in hold mode: the connections wait, established, in their
// accept queues (the kernel's socket is as real; no descriptor is needed for
// it). Restarted before each path, which resets the last one's connections.
json holdPart(BenchPod& bp, const Options& o, uint64_t n, const std::string& work_dir) {
  json j = json::object();
  // REDIRECT maps every captured connection to 127.0.0.1:15001, so the
  // app's (address, port) must be unique on its own. Of the 55,000
  // ephemeral ports (tunePod) connect() tries the even ones first, and once
  // they are taken it walks all of them before each odd one: 25,000 used
  // per source address keeps it to the even half (with 50,000 a level of 1M
  // opened at 4,000/s instead of tens of thousands). At least four
  // addresses, as before there were levels.
  const uint64_t addresses = std::max<uint64_t>(4, (n + 24'999) / 25'000);
  std::vector<std::string> extra;
  for (uint64_t i = 1; i < addresses; ++i) extra.push_back("198.18.0." + std::to_string(2 + i));
  const std::string netns = std::filesystem::path(bp.pod->podNetnsPath()).filename().string();
  struct Cleanup {
    std::function<void()> fn;
    ~Cleanup() { fn(); }
  } cleanup{[&] {
    for (const auto& a : extra) lab::runCommand({"ip", "-n", netns, "addr", "del", a + "/24", "dev", "eth0"});
  }};
  for (const auto& a : extra) {
    lab::runChecked({"ip", "-n", netns, "addr", "add", a + "/24", "dev", "eth0"}, "ip addr add " + a);
  }
  // The pod's iptables rules put every connection in conntrack, whose table
  // is global (262,144 entries on this machine): a full table drops SYNs.
  // Room for this level, the last path's connections while they time out,
  // and the rest of the machine.
  const SysctlWhile conntrack("/proc/sys/net/netfilter/nf_conntrack_max", 3 * n + 262'144,
                               SysctlWhile::Mode::kRaise);
  for (const std::string name : {"captured", "bypassed"}) {
    bp.startServers(ServerConfig::Mode::kHold, o);
    // The last path's connections go as its servers do (their accept
    // queues are reset): wait for them, or the agent's startup scan would
    // find them and this path's memory figures would include them.
    const auto gone_by = Clock::now() + 60s;
    while (tcpSocketsInUse(bp.sidecar.pid()) > 1000 && Clock::now() < gone_by) {
      checkInterrupted();
      std::this_thread::sleep_for(200ms);
    }
    const PathSpec path = pathSpec(name);
    const uint16_t port = freePort();
    std::vector<std::string> args = agentArgs(bp, o, port);
    // Every held app socket has an owner-map entry until it closes: the
    // default bound (131,072) would refuse (and count) the rest.
    if (n + 65'536 > 131'072) {
      args.push_back("--max-tracked-sockets");
      args.push_back(std::to_string(n + 65'536));
    }
    const uint64_t available_before = memAvailableKib();
    AgentProcess agent(o.agent, args,
                       work_dir + "/agent-hold-" + std::to_string(n) + "-" + name + ".log", port);
    agent.waitReady(20s);
    const Snapshot before = snapshot(agent);
    StormConfig c;
    c.destinations = {bp.pod->upstreamV4()};
    c.sources.push_back(bp.pod->podAddressV4());
    for (const auto& a : extra) c.sources.push_back(*Address::parse(a));
    c.threads = 1;
    c.concurrency = 256;
    c.duration_s = std::max<double>(60, static_cast<double>(n) / 5'000);
    c.hold = true;
    c.hold_timeout_s = 60;
    json phase;
    std::optional<Stall> stall;
    if (o.stall_agent_s > 0) stall.emplace(agent.pid(), o.stall_agent_s);
    const StormResult r = holdStorms(bp, path, c, n, [&](uint64_t held) {
      stall.reset();  // if they all opened before its end
      // Every verdict of the held connections reported (bypassed after the
      // grace window), counters synced: measure while they are all open.
      const Snapshot s = settle(agent, before, static_cast<double>(held), o, 20s);
      phase["held"] = held;
      phase["agent_while_held"] = agentDelta(before, s);
      phase["agent_while_held"].erase("latency_buckets");
      phase["agent_bpf_maps_while_held"] = bpfMapsOf(agent.pid());
      const uint64_t available = memAvailableKib();
      phase["machine_memory_used_while_held_mib"] =
          available_before > available ? static_cast<double>(available_before - available) / 1024 : 0.0;
    });
    // Every connection's verdict (a slow agent gets 20 s to catch up).
    const auto released = Clock::now();
    const Snapshot after = settle(agent, before, static_cast<double>(r.attempted), o, 20s);
    phase["settled_after_release_s"] =
        std::chrono::duration<double>(after.at - released).count() - 1.1;
    phase["storm"] = stormJson(r);
    phase["expected"] = expectedVerdicts(name, r);
    phase["agent"] = agentDelta(before, after);
    phase["agent"].erase("latency_buckets");
    compareVerdicts(phase);
    phase["agent_peak_rss_mib"] = after.proc.hwm_kib / 1024.0;
    phase["agent_stalled_s"] = o.stall_agent_s;
    agent.stop();
    progress("hold " + name + ": " + std::to_string(phase.value("held", 0)) +
             " concurrent connections, agent peak RSS " +
             std::to_string(after.proc.hwm_kib / 1024) + " MiB, machine memory used " +
             std::to_string(static_cast<int>(phase.value("machine_memory_used_while_held_mib", 0.0))) +
             " MiB");
    j[name] = phase;
  }
  bp.startServers(ServerConfig::Mode::kClose, o);
  return j;
}

json microPart(const Options& o) {
  std::vector<std::string> argv = {o.micro, "--benchmark_format=json",
                                   "--benchmark_min_time=0.3"};
  if (!o.micro_filter.empty()) argv.push_back("--benchmark_filter=" + o.micro_filter);
  const lab::CommandResult r = lab::runCommand(argv, "", std::chrono::seconds(300));
  if (r.exit_status != 0) throw std::runtime_error("cw_bench_micro failed: " + r.err);
  const auto doc = nlohmann::json::parse(r.out);
  json out = json::array();
  for (const auto& b : doc.at("benchmarks")) {
    json e;
    e["name"] = b.at("name");
    e["ns_per_iteration"] = b.value("cpu_time", 0.0);
    e["items_per_second"] = b.value("items_per_second", 0.0);
    if (b.contains("label")) e["label"] = b["label"];
    out.push_back(e);
  }
  return out;
}

// --pool: the results' same-round ratios pooled per path.
int pool(const Options& o) {
  std::vector<json> results;
  for (const auto& f : o.pool) {
    std::ifstream in(f);
    if (!in) throw std::runtime_error("cannot read " + f);
    try {
      results.push_back(json::parse(in));
    } catch (const json::exception& e) {
      throw std::runtime_error(f + " is not a bench result: " + e.what());
    }
  }
  const json pooled = poolRuns(results);
  if (pooled.empty()) throw std::runtime_error("no same-round ratios in these results");
  for (const auto& [path, p] : pooled.items()) {
    std::printf("%-9s %zu pairs from %zu runs: geometric mean %.1f%% [%.1f-%.1f%%], %s\n",
                path.c_str(), p["pairs"].get<size_t>(), p["runs"].get<size_t>(),
                p["geomean"].get<double>() * 100, p["ci95"][0].get<double>() * 100,
                p["ci95"][1].get<double>() * 100, p["decision"].get<std::string>().c_str());
  }
  return 0;
}

// --empty-program: an empty program on the agent's tracepoint, held until
// the time is up or a signal comes (the end of a --raw-attach phase).
int emptyProgram(const Options& o) {
  const StatsFloor program;
  const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(o.empty_program_s));
  while (!g_interrupted.load() && Clock::now() < until) sleepFor(100ms);
  const StatsFloor::Reading r = program.read();
  std::printf("cwb_stats_floor: %llu runs", static_cast<unsigned long long>(r.runs));
  if (r.runs > 0)
    std::printf(", %.1f ns per run (kernel.bpf_stats_enabled)",
                static_cast<double>(r.run_ns) / r.runs);
  std::printf("\n");
  return 0;
}

int run(const Options& o) {
  if (!o.pool.empty()) return pool(o);
  if (::geteuid() != 0) {
    std::fprintf(stderr, "cw_bench: run as root (BPF, network namespaces, iptables, cgroups)\n");
    return 2;
  }
  if (o.empty_program_s > 0) return emptyProgram(o);
  for (const auto& bin : {o.agent}) {
    if (::access(bin.c_str(), X_OK) != 0) throw std::runtime_error("not executable: " + bin);
  }
  // As many descriptors as allowed (children inherit it); without
  // CAP_SYS_RESOURCE the hard limit stays.
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rlimit want{1 << 20, 1 << 20};
  if (::setrlimit(RLIMIT_NOFILE, &want) != 0) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }

  // One priority for everything the bench starts (children inherit it): the
  // agent competes with the storm as it would with the workload, and other
  // work on the machine gets little of the CPU while it runs.
  if (::setpriority(PRIO_PROCESS, 0, o.nice) != 0) progress("warning: cannot set nice " + std::to_string(o.nice));
  // With autogroup scheduling (kernel.sched_autogroup_enabled) nice only
  // orders tasks of one session; the session's group has its own nice.
  if (std::ofstream ag("/proc/self/autogroup"); ag) ag << o.nice;

  std::string work_dir = o.work_dir;
  struct RemoveDir {
    std::string dir;
    ~RemoveDir() {
      std::error_code ec;
      if (!dir.empty()) std::filesystem::remove_all(dir, ec);
    }
  } remove_work_dir;
  if (work_dir.empty()) {
    char tmpl[] = "/tmp/cw-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp");
    work_dir = tmpl;
    if (!o.keep_logs) remove_work_dir.dir = work_dir;
  } else {
    std::filesystem::create_directories(work_dir);
  }

  json result;
  result["machine"] = machineInfo();
  result["started"] = today();
  result["options"] = {{"rounds", o.rounds},
                       {"duration_s", o.duration_s},
                       {"rest_s", o.rest_s},
                       {"threads", o.threads},
                       {"concurrency", o.concurrency},
                       {"server_workers", o.server_workers},
                       {"grace_ms", o.grace_ms},
                       {"paths", o.paths},
                       {"hold", o.holds},
                       {"stall_agent_s", o.stall_agent_s},
                       {"cost_pairs", o.cost_pairs},
                       {"synthetic", o.synthetic},
                       {"agent", o.agent},
                       {"nice", o.nice},
                       {"agent_args", o.agent_args}};

  // The pods first, before this process has other threads (their servers
  // are forked).
  progress("building the bench pods");
  BenchPod pod("cw-bench", o);
  std::optional<BenchPod> other;
  if (o.unwatched) other.emplace("cw-bench-u", o);

  progress("storms: " + std::to_string(o.rounds) + " rounds, agent off and on");
  const json phases = stormRounds(pod, o, work_dir);
  result["phases"] = phases;
  result["summary"] = summarize(phases, o);

  if (o.kernel_cost) {
    progress("kernel cost of the BPF programs");
    result["kernel_cost"] = kernelCostPart(pod, o, work_dir);
    result["cost_share"] = costShare(result);
  }
  if (o.unwatched) {
    progress("storm in an unwatched pod");
    result["unwatched"] = unwatchedPart(pod, *other, o, work_dir);
    other.reset();
  }
  if (o.memory) {
    json mem;
    if (!o.holds.empty()) {
      json levels = json::array();
      for (const uint64_t n : o.holds) {
        progress("memory: " + std::to_string(n) + " concurrent connections held open");
        json level = holdPart(pod, o, n, work_dir);
        level["connections"] = n;
        levels.push_back(std::move(level));
      }
      mem["real"] = std::move(levels);
    }
    progress("memory: synthetic streams into the correlator");
    json synth = json::array();
    const uint64_t n_small = std::min<uint64_t>(100'000, o.synthetic);
    synth.push_back(correlatorMemory(n_small, n_small));
    synth.push_back(correlatorMemory(o.synthetic, o.synthetic));
    synth.push_back(correlatorMemory(o.synthetic, 65536));  // the agent's bound
    mem["synthetic_correlator"] = synth;
    progress("memory: kernel maps");
    json kernel = json::array();
    for (uint32_t n : {65536u, 131072u, 1u << 20}) kernel.push_back(bpfMapMemory(n));
    mem["kernel_maps"] = kernel;
    result["memory"] = mem;
  }
  if (o.run_micro) {
    progress("micro-benchmarks");
    result["micro"] = microPart(o);
  }
  result["budgets"] = budgets(result, o.grace_ms);
  result["finished"] = today();

  std::string out = o.out;
  if (out.empty()) {
    std::filesystem::path dir = std::filesystem::path(CW_BENCH_SOURCE_DIR) / "results";
    std::filesystem::create_directories(dir);
    out = (dir / (result["started"].get<std::string>() + ".json")).string();
  }
  // The table first: a JSON path that cannot be written loses nothing.
  printTable(result, std::cout);
  {
    std::error_code ec;
    const auto parent = std::filesystem::path(out).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    std::ofstream f(out);
    f << result.dump(2) << "\n";
    if (!f) throw std::runtime_error("cannot write " + out);
  }
  std::cout << "\nJSON: " << out << "\n";
  if (remove_work_dir.dir.empty()) std::cout << "agent logs: " << work_dir << "\n";
  return 0;
}

}  // namespace
}  // namespace cw::bench

int main(int argc, char** argv) {
  const auto options = cw::bench::parseArgs(argc, argv);
  struct sigaction sa {};
  sa.sa_handler = cw::bench::onSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  try {
    return cw::bench::run(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cw_bench: %s\n", e.what());
    return 1;
  }
}
