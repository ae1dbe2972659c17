// Small system helpers shared by the lab and the agent: file descriptors,
// external commands (fork/execv, never a shell) and cgroup v2 lookups.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace cw::lab {

// Owns one file descriptor; closes it on destruction. Move-only.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() noexcept;
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

// Outcome of an external command.
struct CommandResult {
  int exit_status = -1;  // exit code; 128 + signal number if it was killed
  bool timed_out = false;
  std::string out;  // captured stdout
  std::string err;  // captured stderr
};

// Runs argv[0] (looked up in PATH, then in the usual sbin/bin directories)
// with fork/execv: no shell, arguments passed as they are. stdin_text is fed
// on stdin (then EOF); stdout and stderr are captured. A command still running
// after `timeout` is killed (SIGKILL) and reported as timed_out. Never throws
// for a failing command (a command that cannot be executed exits 127 with a
// message in err); throws std::runtime_error only if fork or pipe fail.
CommandResult runCommand(const std::vector<std::string>& argv, const std::string& stdin_text = "",
                         std::chrono::milliseconds timeout = std::chrono::seconds(30));

// Like runCommand, but throws std::runtime_error("<failure>: <stderr or
// exit status>") unless the command exits 0. Returns its stdout.
// Example: runChecked({"ip", "netns", "add", name}, "ip netns add " + name).
std::string runChecked(const std::vector<std::string>& argv, const std::string& failure,
                       const std::string& stdin_text = "",
                       std::chrono::milliseconds timeout = std::chrono::seconds(30));

// Absolute path of an executable: `name` itself if it contains '/', else the
// first match in $PATH, /usr/local/sbin, /usr/local/bin, /usr/sbin, /usr/bin,
// /sbin, /bin. Empty if not found.
std::string findExecutable(const std::string& name);

// Mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo (the first
// mount of fstype cgroup2): /sys/fs/cgroup on unified hosts,
// /sys/fs/cgroup/unified on hybrid ones. Throws std::runtime_error if none.
std::string findCgroup2Root();

// cgroup v2 id of a cgroup directory: its inode number (kernfs node id, the
// value bpf_get_current_cgroup_id() returns on 64-bit kernels). Throws
// std::runtime_error if the directory cannot be stat()ed.
uint64_t cgroupId(const std::string& dir);

}  // namespace cw::lab
