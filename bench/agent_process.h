// The real agent (`capturewatch run`) as a child process, its /metrics, and
// what /proc says about its cost.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace cw::bench {

// GET http://127.0.0.1:port/path with a timeout; "" and status 0 on failure.
std::string httpGet(uint16_t port, const std::string& path, int* status = nullptr,
                    std::chrono::milliseconds timeout = std::chrono::seconds(3));

// A free TCP port on 127.0.0.1 (bound and released).
uint16_t freePort();

// Prometheus text exposition, parsed: one entry per sample.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
std::vector<Sample> parseMetrics(const std::string& text);

// Sum of the samples of `name` whose labels include every given pair.
double metricSum(const std::vector<Sample>& samples, const std::string& name,
                 const std::map<std::string, std::string>& labels = {});

// A histogram's cumulative buckets (le -> count), le = +Inf included.
std::map<double, double> histogramBuckets(const std::vector<Sample>& samples,
                                          const std::string& name);
// Quantile from cumulative buckets, interpolated linearly inside the bucket
// (what PromQL's histogram_quantile does); q in [0,1]. -1 if empty.
double histogramQuantile(const std::map<double, double>& buckets, double q);
// Difference of two cumulative bucket sets (after - before).
std::map<double, double> bucketDelta(const std::map<double, double>& after,
                                     const std::map<double, double>& before);

// /proc figures of a process.
struct ProcStats {
  double cpu_s = 0;        // utime + stime of every thread, /proc/PID/stat (10 ms ticks)
  double sched_cpu_s = 0;  // sum of /proc/PID/task/*/schedstat run time (ns resolution)
  uint64_t rss_kib = 0;    // VmRSS
  uint64_t hwm_kib = 0;    // VmHWM: peak RSS
  int threads = 0;
};
ProcStats procStats(pid_t pid);

// capturewatch run as a child: stdout/stderr go to log_path. The
// destructor stops it (SIGTERM, then SIGKILL after 10 s) and reaps it.
class AgentProcess {
 public:
  AgentProcess(const std::string& binary, const std::vector<std::string>& args,
               const std::string& log_path, uint16_t metrics_port);
  ~AgentProcess();
  AgentProcess(const AgentProcess&) = delete;
  AgentProcess& operator=(const AgentProcess&) = delete;

  // Waits until /readyz answers 200; throws with the log tail if the agent
  // exits or is not ready in time.
  void waitReady(std::chrono::milliseconds timeout);
  std::vector<Sample> scrape() const;
  pid_t pid() const { return pid_; }
  uint16_t port() const { return port_; }
  // SIGTERM and wait; returns the exit status (-1 if killed).
  int stop(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  std::string logTail(size_t bytes = 4000) const;

 private:
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  std::string log_path_;
};

}  // namespace cw::bench
