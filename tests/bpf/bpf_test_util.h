// Helpers for the privileged tests: the agent as a child process with its
// JSON log lines, a loopback HTTP GET for /metrics, Prometheus text parsing,
// scratch network namespaces that remove themselves.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "lab/lab_pod.h"
#include "lab/spawn.h"

namespace cw::testutil {

// Privileged tests fail (never skip) when not run as root.
bool isRoot();

// The capturewatch binary under test (CW_BINARY).
std::string agentBinary();

// A free TCP port on 127.0.0.1.
uint16_t freePort();

// GET http://127.0.0.1:port/path; returns the body ("" on failure).
std::string httpGet(uint16_t port, const std::string& path, int* status = nullptr,
                    const std::string& method = "GET");

// Prometheus text exposition: "name{labels}" -> value (labels as printed).
std::map<std::string, double> parseMetrics(const std::string& text);
// Sum of every series of `name` whose label set contains all `labels`
// (each given as key="value").
double metricSum(const std::map<std::string, double>& metrics, const std::string& name,
                 const std::vector<std::string>& labels = {});

// Runs the agent binary with args; collects stdout lines (JSON logs) and
// stderr. The destructor stops it (SIGTERM, then SIGKILL) and reaps it.
class AgentProcess {
 public:
  explicit AgentProcess(const std::vector<std::string>& args);
  ~AgentProcess();
  AgentProcess(const AgentProcess&) = delete;
  AgentProcess& operator=(const AgentProcess&) = delete;

  // Waits until a stdout line satisfies pred; false on timeout or exit.
  bool waitForLine(const std::function<bool(const nlohmann::json&)>& pred,
                   std::chrono::milliseconds timeout);
  // Waits until count(lines) >= n; returns the final count.
  size_t waitForCount(const std::function<bool(const nlohmann::json&)>& pred, size_t n,
                      std::chrono::milliseconds timeout);
  std::vector<nlohmann::json> lines();
  std::string stderrText();
  std::string stdoutText();

  // SIGTERM and wait (bounded); returns the exit status, -1 if it had to be killed.
  int stop(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Waits for the process to exit by itself; -1 on timeout.
  int wait(std::chrono::milliseconds timeout);
  // SIGKILL, as the OOM killer or a node drain would: no cleanup runs in
  // the agent. Reaps it; the output read so far stays available.
  void killHard();
  pid_t pid() const { return pid_; }

 private:
  void reader(int fd, std::string* raw, bool parse);

  pid_t pid_ = -1;
  int status_ = -1;
  std::mutex mu_;
  std::vector<nlohmann::json> lines_;
  std::string stdout_raw_;
  std::string stderr_raw_;
  std::thread out_thread_;
  std::thread err_thread_;
};

// `ip netns add NAME` with lo up; removed by the destructor.
class ScopedNetns {
 public:
  explicit ScopedNetns(const std::string& name);
  ~ScopedNetns();
  ScopedNetns(const ScopedNetns&) = delete;
  ScopedNetns& operator=(const ScopedNetns&) = delete;
  std::string path() const { return "/run/netns/" + name_; }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

// In a child process inside the netns: listen on loopback (v4 or v6) and
// make n connections to it, each accepted and closed. Returns the number
// of connections that completed.
int loopbackConnections(const std::string& netns_path, int n, bool ipv6, uint16_t port = 0);

// Names of loaded BPF programs (bpftool prog show), to check nothing of
// ours is left attached.
std::vector<std::string> loadedBpfProgramNames();

// How many of the agent's programs (cw_set_state) are loaded, once the kernel
// has had up to `settle` to free those of processes that just exited (it
// frees a program after its last reference goes, not at once).
int agentProgramsLoaded(std::chrono::milliseconds settle = std::chrono::seconds(3));

// Sockets the kernel's owner tables track now: the keys in use (not 0) of
// every bucket from first_bucket on of each loaded owner_keys map
// (capture.bpf.c); -1 if there is none (a count of 0 could then not show a
// leak).
long bpfOwnerEntries(uint32_t first_bucket = 0);

// The programs' count of keys in use in the owner table's overflow area
// (overflow_keys, the only variable of capture.bpf.c's .bss), summed over
// the loaded agents; -1 if none is loaded.
long bpfOverflowKeysCounter();

// How the tests run the app: a child in the pod's netns and app cgroup, as
// uid and gid 1000 (not the proxy's), with the gateway's comm "envoy".
lab::SpawnOptions appSpawnOptions(const lab::LabPod& pod);

}  // namespace cw::testutil
