// Forked role processes of the lab: a child that joins a cgroup, enters a
// network namespace, drops to given credentials and runs a function, plus the
// small framed protocol it uses to report back to the parent over a pipe.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "lab/system.h"

namespace cw::lab {

// A forked child. Destroying (or kill()ing) it sends SIGKILL and reaps it.
// Move-only.
class ChildProcess {
 public:
  ChildProcess() = default;
  ChildProcess(pid_t pid, UniqueFd report) : pid_(pid), report_(std::move(report)) {}
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() { kill(); }

  pid_t pid() const { return pid_; }  // -1 once reaped
  bool running() const { return pid_ > 0; }
  // Read end of the child's report pipe (see readFrame).
  int reportFd() const { return report_.get(); }

  // Waits up to `timeout` for the child to exit by itself; returns its
  // waitpid() status, or nullopt if it is still running.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  // SIGKILL and reap (bounded: gives up after 5 s). Idempotent, never throws.
  void kill() noexcept;

 private:
  pid_t pid_ = -1;
  UniqueFd report_;
};

// Where and as whom a role runs. Empty/nullopt fields leave that part of the
// parent's context unchanged.
struct SpawnOptions {
  std::string name;             // comm of the child (prctl PR_SET_NAME)
  std::string cgroup_dir;       // cgroup v2 directory to join
  std::string netns_path;       // /run/netns/NAME or /proc/PID/ns/net
  std::optional<uint32_t> uid;  // setuid (after setgroups(0) and setgid)
  std::optional<uint32_t> gid;  // setgid
};

// The function a child runs; report_fd is the write end of its report pipe.
// Returning ends the child (exit 0); an exception is reported as an 'E' frame
// and ends it with exit 1.
using Role = std::function<void(int report_fd)>;

// Forks a child that: dies with its parent thread (PR_SET_PDEATHSIG SIGKILL,
// set again after the credential change, which clears it), gets default
// signal handling (SIGPIPE ignored), its own process group, closes every
// inherited descriptor but its report pipe, joins options.cgroup_dir (writes
// "0" to cgroup.procs), setns() into options.netns_path, drops to gid/uid, then
// runs role. A failing step is reported as an 'E' frame naming the step.
// Throws std::runtime_error if fork/pipe fail.
ChildProcess spawnInPod(const SpawnOptions& options, Role role);

// Report protocol: frames of [type:1][length:4, host order][payload].
// Types used by the lab: 'R' ready, 'E' error (payload = message),
// 'D' data.
inline constexpr char kFrameReady = 'R';
inline constexpr char kFrameError = 'E';
inline constexpr char kFrameData = 'D';

// Writes one frame, blocking; false on error (e.g. the reader is gone).
bool writeFrame(int fd, char type, std::string_view payload);

struct Frame {
  enum class Status { kOk, kEof, kTimeout, kError } status = Status::kError;
  char type = 0;
  std::string payload;
};
// Reads one frame; waits at most until `deadline`.
Frame readFrame(int fd, std::chrono::steady_clock::time_point deadline);

}  // namespace cw::lab
