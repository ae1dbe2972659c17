#include "bpf_test_util.h"

#include <bpf/bpf.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <iterator>
#include <regex>
#include <sstream>
#include <stdexcept>

#include "capture.h"

namespace cw::testutil {
namespace {

int runArgv(const std::vector<std::string>& argv, std::string* out = nullptr) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(pipefd[1], 1);
    int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 2);
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    execvp(cargv[0], cargv.data());
    _exit(127);
  }
  close(pipefd[1]);
  std::string buf;
  char chunk[4096];
  ssize_t n;
  while ((n = read(pipefd[0], chunk, sizeof chunk)) > 0) buf.append(chunk, static_cast<size_t>(n));
  close(pipefd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (out) *out = buf;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

bool isRoot() { return geteuid() == 0; }

std::string agentBinary() { return CW_BINARY; }

uint16_t freePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  socklen_t len = sizeof sa;
  getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  close(fd);
  return ntohs(sa.sin_port);
}

std::string httpGet(uint16_t port, const std::string& path, int* status, const std::string& method) {
  if (status) *status = 0;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    close(fd);
    return "";
  }
  std::string req = method + " " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n" +
                    (method == "GET" ? "" : "Content-Length: 0\r\n") + "\r\n";
  if (send(fd, req.data(), req.size(), MSG_NOSIGNAL) < 0) {
    close(fd);
    return "";
  }
  std::string resp;
  char buf[8192];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof buf, 0)) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  auto header_end = resp.find("\r\n\r\n");
  if (header_end == std::string::npos) return "";
  if (status) *status = std::atoi(resp.c_str() + resp.find(' ') + 1);
  return resp.substr(header_end + 4);
}

std::map<std::string, double> parseMetrics(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    auto space = line.rfind(' ');
    if (space == std::string::npos) continue;
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

double metricSum(const std::map<std::string, double>& metrics, const std::string& name,
                 const std::vector<std::string>& labels) {
  double sum = 0;
  for (const auto& [series, value] : metrics) {
    if (series != name && series.rfind(name + "{", 0) != 0) continue;
    bool all = std::all_of(labels.begin(), labels.end(), [&](const std::string& l) {
      return series.find(l) != std::string::npos;
    });
    if (all) sum += value;
  }
  return sum;
}

AgentProcess::AgentProcess(const std::vector<std::string>& args) {
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  std::vector<std::string> argv{agentBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  pid_ = fork();
  if (pid_ == 0) {
    dup2(out[1], 1);
    dup2(err[1], 2);
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  out_thread_ = std::thread([this, fd = out[0]] { reader(fd, &stdout_raw_, true); });
  err_thread_ = std::thread([this, fd = err[0]] { reader(fd, &stderr_raw_, false); });
}

AgentProcess::~AgentProcess() {
  stop(std::chrono::seconds(5));
  if (out_thread_.joinable()) out_thread_.join();
  if (err_thread_.joinable()) err_thread_.join();
}

void AgentProcess::reader(int fd, std::string* raw, bool parse) {
  char buf[8192];
  std::string pending;
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) {
    std::lock_guard lock(mu_);
    raw->append(buf, static_cast<size_t>(n));
    if (!parse) continue;
    pending.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
      std::string line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_discarded()) lines_.push_back(std::move(j));
    }
  }
  close(fd);
}

bool AgentProcess::waitForLine(const std::function<bool(const nlohmann::json&)>& pred,
                               std::chrono::milliseconds timeout) {
  return waitForCount(pred, 1, timeout) >= 1;
}

size_t AgentProcess::waitForCount(const std::function<bool(const nlohmann::json&)>& pred,
                                  size_t n, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  size_t count = 0;
  while (true) {
    {
      std::lock_guard lock(mu_);
      count = static_cast<size_t>(std::count_if(lines_.begin(), lines_.end(), pred));
    }
    if (count >= n || std::chrono::steady_clock::now() >= deadline) return count;
    if (pid_ > 0 && waitpid(pid_, &status_, WNOHANG) == pid_) {
      pid_ = -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let readers drain
      std::lock_guard lock(mu_);
      return static_cast<size_t>(std::count_if(lines_.begin(), lines_.end(), pred));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::vector<nlohmann::json> AgentProcess::lines() {
  std::lock_guard lock(mu_);
  return lines_;
}

std::string AgentProcess::stderrText() {
  std::lock_guard lock(mu_);
  return stderr_raw_;
}

std::string AgentProcess::stdoutText() {
  std::lock_guard lock(mu_);
  return stdout_raw_;
}

int AgentProcess::wait(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (pid_ > 0) {
    if (waitpid(pid_, &status_, WNOHANG) == pid_) {
      pid_ = -1;
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (out_thread_.joinable()) out_thread_.join();
  if (err_thread_.joinable()) err_thread_.join();
  return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
}

int AgentProcess::stop(std::chrono::milliseconds timeout) {
  if (pid_ > 0) kill(pid_, SIGTERM);
  int rc = wait(timeout);
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, &status_, 0);
    pid_ = -1;
    return -1;
  }
  return rc;
}

void AgentProcess::killHard() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, &status_, 0);
  pid_ = -1;
}

int agentProgramsLoaded(std::chrono::milliseconds settle) {
  const auto deadline = std::chrono::steady_clock::now() + settle;
  while (true) {
    auto progs = loadedBpfProgramNames();
    const int n = static_cast<int>(std::count(progs.begin(), progs.end(), "cw_set_state"));
    if (n == 0 || std::chrono::steady_clock::now() >= deadline) return n;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

namespace {

// Sums count(fd, info) over the loaded BPF maps named `name` with values of
// `value_size` bytes; -1 if there is none.
long sumOverMaps(const char* name, uint32_t value_size,
                 const std::function<long(int, const bpf_map_info&)>& count) {
  long total = 0;
  bool found = false;
  uint32_t id = 0;
  while (bpf_map_get_next_id(id, &id) == 0) {
    int fd = bpf_map_get_fd_by_id(id);
    if (fd < 0) continue;
    bpf_map_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0 && std::string(name) == info.name &&
        info.value_size == value_size) {
      found = true;
      total += count(fd, info);
    }
    ::close(fd);
  }
  return found ? total : -1;
}

}  // namespace

long bpfOwnerEntries(uint32_t first_bucket) {
  return sumOverMaps("owner_keys", CW_OWNER_BUCKET_SLOTS * sizeof(uint64_t),
                     [first_bucket](int fd, const bpf_map_info& info) {
                       long n = 0;
                       uint64_t keys[CW_OWNER_BUCKET_SLOTS];
                       for (uint32_t b = first_bucket; b < info.max_entries; ++b) {
                         if (bpf_map_lookup_elem(fd, &b, keys) != 0) continue;
                         n += std::count_if(std::begin(keys), std::end(keys),
                                            [](uint64_t k) { return k != 0; });
                       }
                       return n;
                     });
}

long bpfOverflowKeysCounter() {
  return sumOverMaps("capture_.bss", sizeof(int64_t), [](int fd, const bpf_map_info&) {
    int64_t value = 0;
    const uint32_t zero = 0;
    return bpf_map_lookup_elem(fd, &zero, &value) == 0 ? static_cast<long>(value) : 0L;
  });
}

ScopedNetns::ScopedNetns(const std::string& name) : name_(name) {
  runArgv({"ip", "netns", "del", name_});  // a leftover of an interrupted run
  if (runArgv({"ip", "netns", "add", name_}) != 0) {
    throw std::runtime_error("ip netns add " + name_ + " failed");
  }
  runArgv({"ip", "-n", name_, "link", "set", "lo", "up"});
}

ScopedNetns::~ScopedNetns() { runArgv({"ip", "netns", "del", name_}); }

int loopbackConnections(const std::string& netns_path, int n, bool ipv6, uint16_t port) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    int done = 0;
    int ns = open(netns_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns >= 0 && setns(ns, CLONE_NEWNET) == 0) {
      int family = ipv6 ? AF_INET6 : AF_INET;
      sockaddr_storage ss{};
      socklen_t len;
      if (ipv6) {
        auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
        s6->sin6_family = AF_INET6;
        s6->sin6_addr = in6addr_loopback;
        s6->sin6_port = htons(port);
        len = sizeof *s6;
      } else {
        auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
        s4->sin_family = AF_INET;
        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        s4->sin_port = htons(port);
        len = sizeof *s4;
      }
      int l = socket(family, SOCK_STREAM, 0);
      int one = 1;
      setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (bind(l, reinterpret_cast<sockaddr*>(&ss), len) == 0 && listen(l, 64) == 0 &&
          getsockname(l, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
        for (int i = 0; i < n; ++i) {
          int c = socket(family, SOCK_STREAM, 0);
          if (connect(c, reinterpret_cast<sockaddr*>(&ss), len) == 0) {
            int a = accept(l, nullptr, nullptr);
            if (a >= 0) {
              ++done;
              close(a);
            }
          }
          close(c);
        }
      }
    }
    ssize_t w = write(pipefd[1], &done, sizeof done);
    _exit(w == sizeof done ? 0 : 1);
  }
  close(pipefd[1]);
  int done = -1;
  if (read(pipefd[0], &done, sizeof done) != sizeof done) done = -1;
  close(pipefd[0]);
  waitpid(pid, nullptr, 0);
  return done;
}

std::vector<std::string> loadedBpfProgramNames() {
  std::string out;
  runArgv({"bpftool", "-j", "prog", "show"}, &out);
  std::vector<std::string> names;
  auto j = nlohmann::json::parse(out, nullptr, false);
  if (!j.is_array()) return names;
  for (const auto& p : j) {
    if (p.contains("name")) names.push_back(p["name"].get<std::string>());
  }
  return names;
}

lab::SpawnOptions appSpawnOptions(const lab::LabPod& pod) {
  lab::SpawnOptions options;
  options.name = "envoy";
  options.cgroup_dir = pod.appCgroup();
  options.netns_path = pod.podNetnsPath();
  options.uid = 1000;
  options.gid = 1000;
  return options;
}

}  // namespace cw::testutil
