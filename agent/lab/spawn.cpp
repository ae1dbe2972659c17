#include "lab/spawn.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace cw::lab {

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kMaxFramePayload = 16u << 20;
constexpr int kChildReportFd = 3;

// Reads exactly `len` bytes unless EOF, error or deadline.
Frame::Status readExactly(int fd, char* out, size_t len, Clock::time_point deadline) {
  size_t got = 0;
  while (got < len) {
    const auto now = Clock::now();
    if (now >= deadline) return Frame::Status::kTimeout;
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
    pollfd p{fd, POLLIN, 0};
    int rc = ::poll(&p, 1, static_cast<int>(std::min<long long>(ms + 1, 1000)));
    if (rc < 0 && errno != EINTR) return Frame::Status::kError;
    if (rc <= 0) continue;
    ssize_t n = ::read(fd, out + got, len - got);
    if (n == 0) return Frame::Status::kEof;
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Frame::Status::kError;
    }
    got += static_cast<size_t>(n);
  }
  return Frame::Status::kOk;
}

// In the child, after fork: report a failed setup step and exit.
[[noreturn]] void childFail(const std::string& step) {
  const int err = errno;
  writeFrame(kChildReportFd, kFrameError, step + ": " + std::strerror(err));
  ::_exit(126);
}

void writeAllOrFail(int fd, const std::string& text, const std::string& step) {
  ssize_t n = ::write(fd, text.data(), text.size());
  if (n != static_cast<ssize_t>(text.size())) childFail(step);
}

[[noreturn]] void runChild(const SpawnOptions& options, const Role& role, pid_t parent) {
  // Signals: defaults everywhere (the parent may have handlers or a blocked
  // mask for a signal thread), SIGPIPE ignored (peers reset sockets).
  sigset_t all;
  sigemptyset(&all);
  ::sigprocmask(SIG_SETMASK, &all, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
  }
  struct sigaction ign {};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ign, nullptr);
  // Own process group: a terminal's Ctrl-C goes to the parent, whose teardown
  // decides when children end.
  ::setpgid(0, 0);

  auto dieWithParent = [parent] {
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) childFail("prctl(PR_SET_PDEATHSIG)");
    if (::getppid() != parent) ::_exit(125);  // the parent is already gone
  };
  dieWithParent();

  if (!options.cgroup_dir.empty()) {
    const std::string procs = options.cgroup_dir + "/cgroup.procs";
    UniqueFd fd(::open(procs.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) childFail("open " + procs);
    writeAllOrFail(fd.get(), "0", "join cgroup " + options.cgroup_dir);
  }
  if (!options.netns_path.empty()) {
    UniqueFd fd(::open(options.netns_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) childFail("open " + options.netns_path);
    if (::setns(fd.get(), CLONE_NEWNET) != 0) childFail("setns " + options.netns_path);
  }
  if (options.uid || options.gid) {
    if (::setgroups(0, nullptr) != 0) childFail("setgroups(0)");
    if (options.gid && ::setgid(*options.gid) != 0) {
      childFail("setgid " + std::to_string(*options.gid));
    }
    if (options.uid && ::setuid(*options.uid) != 0) {
      childFail("setuid " + std::to_string(*options.uid));
    }
    // A change of effective uid/gid clears the parent-death signal.
    dieWithParent();
  }
  if (!options.name.empty()) ::prctl(PR_SET_NAME, options.name.c_str(), 0, 0, 0);

  try {
    role(kChildReportFd);
  } catch (const std::exception& e) {
    writeFrame(kChildReportFd, kFrameError, e.what());
    ::_exit(1);
  } catch (...) {
    writeFrame(kChildReportFd, kFrameError, "unknown exception");
    ::_exit(1);
  }
  ::_exit(0);
}

}  // namespace

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(other.pid_), report_(std::move(other.report_)) {
  other.pid_ = -1;
}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    kill();
    pid_ = other.pid_;
    report_ = std::move(other.report_);
    other.pid_ = -1;
  }
  return *this;
}

std::optional<int> ChildProcess::wait(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return std::nullopt;
  const auto deadline = Clock::now() + timeout;
  auto pause = std::chrono::microseconds(200);
  while (true) {
    int status = 0;
    pid_t w = ::waitpid(pid_, &status, WNOHANG);
    if (w == pid_) {
      pid_ = -1;
      return status;
    }
    if (w < 0 && errno != EINTR) {  // reaped elsewhere (SIGCHLD ignored?)
      pid_ = -1;
      return std::nullopt;
    }
    if (Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(10000));
  }
}

void ChildProcess::kill() noexcept {
  if (pid_ > 0) {
    // The child leads its own process group (unless it died before setpgid):
    // kill the group, then the pid itself. The pid cannot have been reused,
    // it is not reaped yet.
    ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);
    if (pid_ > 0) {
      try {
        wait(std::chrono::seconds(5));
      } catch (...) {
      }
    }
    pid_ = -1;
  }
  report_.reset();
}

bool writeFrame(int fd, char type, std::string_view payload) {
  std::string buf(5, '\0');
  buf[0] = type;
  const uint32_t len = static_cast<uint32_t>(payload.size());
  std::memcpy(buf.data() + 1, &len, sizeof len);
  buf.append(payload);
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::write(fd, buf.data() + done, buf.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

Frame readFrame(int fd, Clock::time_point deadline) {
  Frame frame;
  char header[5];
  frame.status = readExactly(fd, header, sizeof header, deadline);
  if (frame.status != Frame::Status::kOk) return frame;
  frame.type = header[0];
  uint32_t len = 0;
  std::memcpy(&len, header + 1, sizeof len);
  if (len > kMaxFramePayload) {
    frame.status = Frame::Status::kError;
    return frame;
  }
  frame.payload.resize(len);
  frame.status = readExactly(fd, frame.payload.data(), len, deadline);
  if (frame.status == Frame::Status::kEof) frame.status = Frame::Status::kError;  // truncated
  return frame;
}

ChildProcess spawnInPod(const SpawnOptions& options, Role role) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  }
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    // Only the report pipe survives, as fd 3.
    if (write_end.get() != kChildReportFd) {
      ::dup2(write_end.get(), kChildReportFd);
    } else {
      ::fcntl(kChildReportFd, F_SETFD, 0);
    }
    ::close_range(kChildReportFd + 1, ~0U, 0);
    const int r = read_end.release();  // >= 3: closed by close_range or replaced by dup2
    if (r < kChildReportFd) ::close(r);
    (void)write_end.release();
    runChild(options, role, parent);
  }
  write_end.reset();
  return ChildProcess(pid, std::move(read_end));
}

}  // namespace cw::lab
