#include "lab/system.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace cw::lab {

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMaxCapture = 16u << 20;  // bytes kept per stream

std::string errnoText(int err) { return std::strerror(err); }

void setNonBlocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

// "a b\040c" in mountinfo -> "a b c": mount points escape space, tab, newline
// and backslash as octal.
std::string unescapeMountField(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      const std::string oct = s.substr(i + 1, 3);
      if (oct.find_first_not_of("01234567") == std::string::npos) {
        out += static_cast<char>(std::stoi(oct, nullptr, 8));
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) reset(other.release());
  return *this;
}

int UniqueFd::release() noexcept {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

std::string findExecutable(const std::string& name) {
  if (name.empty()) return "";
  if (name.find('/') != std::string::npos) return name;
  std::string dirs;
  if (const char* path = std::getenv("PATH")) dirs = path;
  dirs += ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  std::stringstream ss(dirs);
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    if (dir.empty()) continue;
    std::string candidate = dir + "/" + name;
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return "";
}

CommandResult runCommand(const std::vector<std::string>& argv, const std::string& stdin_text,
                         std::chrono::milliseconds timeout) {
  CommandResult result;
  if (argv.empty()) throw std::invalid_argument("runCommand: empty argv");
  const std::string exe = findExecutable(argv[0]);
  if (exe.empty()) {
    result.exit_status = 127;
    result.err = argv[0] + ": command not found";
    return result;
  }

  // Everything the child needs is prepared before fork: between fork and
  // execv only async-signal-safe calls are made.
  std::vector<char*> cargv;
  cargv.reserve(argv.size() + 1);
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);

  // stdin is a socket so that writing to a command that exited early gives
  // EPIPE (MSG_NOSIGNAL) instead of a SIGPIPE to this process.
  int in_pair[2], out_pipe[2], err_pipe[2], exec_pipe[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in_pair) != 0) {
    throw std::runtime_error("socketpair: " + errnoText(errno));
  }
  UniqueFd in_parent(in_pair[0]), in_child(in_pair[1]);
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) throw std::runtime_error("pipe: " + errnoText(errno));
  UniqueFd out_parent(out_pipe[0]), out_child(out_pipe[1]);
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) throw std::runtime_error("pipe: " + errnoText(errno));
  UniqueFd err_parent(err_pipe[0]), err_child(err_pipe[1]);
  if (::pipe2(exec_pipe, O_CLOEXEC) != 0) throw std::runtime_error("pipe: " + errnoText(errno));
  UniqueFd exec_parent(exec_pipe[0]), exec_child(exec_pipe[1]);

  sigset_t empty_mask;
  sigemptyset(&empty_mask);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;

  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork: " + errnoText(errno));
  if (pid == 0) {
    ::dup2(in_child.get(), STDIN_FILENO);
    ::dup2(out_child.get(), STDOUT_FILENO);
    ::dup2(err_child.get(), STDERR_FILENO);
    // The exec-status pipe (close-on-exec) goes to fd 3, all others close.
    ::dup2(exec_child.get(), 3);
    ::fcntl(3, F_SETFD, FD_CLOEXEC);
    ::close_range(4, ~0U, 0);
    ::sigprocmask(SIG_SETMASK, &empty_mask, nullptr);
    for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD}) {
      ::sigaction(sig, &dfl, nullptr);
    }
    ::execv(exe.c_str(), cargv.data());
    int err = errno;
    [[maybe_unused]] ssize_t n = ::write(3, &err, sizeof err);
    ::_exit(127);
  }
  in_child.reset();
  out_child.reset();
  err_child.reset();
  exec_child.reset();

  setNonBlocking(in_parent.get());
  setNonBlocking(out_parent.get());
  setNonBlocking(err_parent.get());
  size_t written = 0;
  if (stdin_text.empty()) in_parent.reset();

  const auto deadline = Clock::now() + timeout;
  char buf[8192];
  while (out_parent || err_parent) {
    const auto now = Clock::now();
    if (now >= deadline) {
      result.timed_out = true;
      break;
    }
    pollfd fds[3];
    int n = 0;
    int in_idx = -1, out_idx = -1, err_idx = -1;
    if (in_parent) {
      fds[n] = {in_parent.get(), POLLOUT, 0};
      in_idx = n++;
    }
    if (out_parent) {
      fds[n] = {out_parent.get(), POLLIN, 0};
      out_idx = n++;
    }
    if (err_parent) {
      fds[n] = {err_parent.get(), POLLIN, 0};
      err_idx = n++;
    }
    const auto wait_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1;
    int rc = ::poll(fds, n, static_cast<int>(std::min<long long>(wait_ms, 1000)));
    if (rc < 0 && errno != EINTR) break;
    if (rc <= 0) continue;
    if (in_idx >= 0 && fds[in_idx].revents) {
      ssize_t w = ::send(in_parent.get(), stdin_text.data() + written, stdin_text.size() - written,
                         MSG_NOSIGNAL);
      if (w > 0) written += static_cast<size_t>(w);
      if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == stdin_text.size()) {
        in_parent.reset();  // EOF for the command (or it stopped reading)
      }
    }
    auto drain = [&](int idx, UniqueFd& fd, std::string& into) {
      if (idx < 0 || !fds[idx].revents) return;
      ssize_t r = ::read(fd.get(), buf, sizeof buf);
      if (r > 0) {
        if (into.size() < kMaxCapture) into.append(buf, static_cast<size_t>(r));
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        fd.reset();
      }
    };
    drain(out_idx, out_parent, result.out);
    drain(err_idx, err_parent, result.err);
  }
  in_parent.reset();

  // Reap: the streams are closed (or the deadline passed); the command exits
  // by itself in the first case, is killed in the second.
  int status = 0;
  bool reaped = false;
  while (!reaped && !result.timed_out) {
    pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) {
      reaped = true;
    } else if (w < 0 && errno != EINTR) {
      break;
    } else if (Clock::now() >= deadline) {
      result.timed_out = true;
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  if (!reaped) {
    ::kill(pid, SIGKILL);
    pid_t w;
    while ((w = ::waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
    }
    reaped = (w == pid);
  }
  if (reaped) {
    if (WIFEXITED(status)) result.exit_status = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) result.exit_status = 128 + WTERMSIG(status);
  }

  int exec_errno = 0;
  if (::read(exec_parent.get(), &exec_errno, sizeof exec_errno) ==
      static_cast<ssize_t>(sizeof exec_errno)) {
    result.exit_status = 127;
    result.err += "cannot execute " + exe + ": " + errnoText(exec_errno);
  }
  return result;
}

std::string runChecked(const std::vector<std::string>& argv, const std::string& failure,
                       const std::string& stdin_text, std::chrono::milliseconds timeout) {
  CommandResult r = runCommand(argv, stdin_text, timeout);
  if (r.exit_status == 0 && !r.timed_out) return std::move(r.out);
  std::string why = trim(r.err);
  if (r.timed_out) {
    why = "timed out after " + std::to_string(timeout.count()) + " ms" +
          (why.empty() ? "" : " (" + why + ")");
  } else if (why.empty()) {
    why = "exit status " + std::to_string(r.exit_status);
  }
  throw std::runtime_error(failure + ": " + why);
}

std::string findCgroup2Root() {
  std::ifstream in("/proc/self/mountinfo");
  if (!in) throw std::runtime_error("cannot read /proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
    std::istringstream fields(line);
    std::vector<std::string> f;
    std::string tok;
    while (fields >> tok) f.push_back(tok);
    size_t sep = 6;
    while (sep < f.size() && f[sep] != "-") ++sep;
    if (f.size() < 5 || sep + 1 >= f.size()) continue;
    if (f[sep + 1] == "cgroup2") return unescapeMountField(f[4]);
  }
  throw std::runtime_error("no cgroup2 mount in /proc/self/mountinfo (cgroup v2 is required)");
}

uint64_t cgroupId(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    throw std::runtime_error("cannot stat cgroup " + dir + ": " + errnoText(errno));
  }
  if (!S_ISDIR(st.st_mode)) throw std::runtime_error("not a cgroup directory: " + dir);
  return static_cast<uint64_t>(st.st_ino);
}

}  // namespace cw::lab
