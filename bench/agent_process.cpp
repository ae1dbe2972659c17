#include "agent_process.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace cw::bench {
namespace {

using Clock = std::chrono::steady_clock;

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string httpGet(uint16_t port, const std::string& path, int* status,
                    std::chrono::milliseconds timeout) {
  if (status != nullptr) *status = 0;
  const auto deadline = Clock::now() + timeout;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  auto waitFor = [&](short ev) {
    while (true) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd, ev, 0};
      int r = ::poll(&p, 1, static_cast<int>(left.count()));
      if (r > 0) return true;
      if (r < 0 && errno != EINTR) return false;
    }
  };
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    if (errno != EINPROGRESS || !waitFor(POLLOUT)) return "";
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) return "";
  }
  const std::string req =
      "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  size_t sent = 0;
  while (sent < req.size()) {
    if (!waitFor(POLLOUT)) return "";
    ssize_t n = ::send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return "";
    }
    sent += static_cast<size_t>(n);
  }
  std::string resp;
  char buf[16384];
  while (true) {
    if (!waitFor(POLLIN)) return "";
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      break;
    }
    resp.append(buf, static_cast<size_t>(n));
  }
  const size_t sp = resp.find(' ');
  const size_t body = resp.find("\r\n\r\n");
  if (sp == std::string::npos || body == std::string::npos) return "";
  if (status != nullptr) *status = std::atoi(resp.c_str() + sp + 1);
  std::string out = resp.substr(body + 4);
  // Chunked transfer encoding (cpp-httplib uses it for large bodies).
  const std::string headers = resp.substr(0, body);
  if (headers.find("chunked") != std::string::npos) {
    std::string dechunked;
    size_t pos = 0;
    while (pos < out.size()) {
      const size_t eol = out.find("\r\n", pos);
      if (eol == std::string::npos) break;
      const size_t len = std::stoul(out.substr(pos, eol - pos), nullptr, 16);
      if (len == 0) break;
      dechunked.append(out, eol + 2, len);
      pos = eol + 2 + len + 2;
    }
    out = std::move(dechunked);
  }
  return out;
}

uint16_t freePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  uint16_t port = 0;
  if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0) {
    port = ntohs(sa.sin_port);
  }
  if (fd >= 0) ::close(fd);
  if (port == 0) throw std::runtime_error("no free port on 127.0.0.1");
  return port;
}

std::vector<Sample> parseMetrics(const std::string& text) {
  std::vector<Sample> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    size_t pos = line.find_first_of("{ ");
    if (pos == std::string::npos) continue;
    s.name = line.substr(0, pos);
    if (line[pos] == '{') {
      ++pos;
      while (pos < line.size() && line[pos] != '}') {
        const size_t eq = line.find('=', pos);
        if (eq == std::string::npos || eq + 1 >= line.size() || line[eq + 1] != '"') break;
        std::string key = line.substr(pos, eq - pos);
        std::string value;
        size_t i = eq + 2;
        for (; i < line.size() && line[i] != '"'; ++i) {
          if (line[i] == '\\' && i + 1 < line.size()) ++i;
          value += line[i];
        }
        s.labels[key] = value;
        pos = i + 1;
        if (pos < line.size() && line[pos] == ',') ++pos;
      }
      pos = line.find(' ', pos);
      if (pos == std::string::npos) continue;
    }
    const std::string v = line.substr(pos + 1);
    if (v == "+Inf") {
      s.value = std::numeric_limits<double>::infinity();
    } else {
      s.value = std::strtod(v.c_str(), nullptr);
    }
    out.push_back(std::move(s));
  }
  return out;
}

double metricSum(const std::vector<Sample>& samples, const std::string& name,
                 const std::map<std::string, std::string>& labels) {
  double sum = 0;
  for (const auto& s : samples) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) {
        match = false;
        break;
      }
    }
    if (match) sum += s.value;
  }
  return sum;
}

std::map<double, double> histogramBuckets(const std::vector<Sample>& samples,
                                          const std::string& name) {
  std::map<double, double> out;
  for (const auto& s : samples) {
    if (s.name != name + "_bucket") continue;
    auto it = s.labels.find("le");
    if (it == s.labels.end()) continue;
    const double le = it->second == "+Inf" ? std::numeric_limits<double>::infinity()
                                           : std::strtod(it->second.c_str(), nullptr);
    out[le] += s.value;
  }
  return out;
}

std::map<double, double> bucketDelta(const std::map<double, double>& after,
                                     const std::map<double, double>& before) {
  std::map<double, double> out;
  for (const auto& [le, v] : after) {
    auto it = before.find(le);
    out[le] = v - (it == before.end() ? 0 : it->second);
  }
  return out;
}

double histogramQuantile(const std::map<double, double>& buckets, double q) {
  if (buckets.empty()) return -1;
  const double total = buckets.rbegin()->second;
  if (total <= 0) return -1;
  const double rank = q * total;
  double prev_le = 0, prev_count = 0;
  for (const auto& [le, count] : buckets) {
    if (count >= rank) {
      if (std::isinf(le)) return prev_le;  // above the highest finite bound
      if (count == prev_count) return le;
      return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count);
    }
    prev_le = le;
    prev_count = count;
  }
  return prev_le;
}

ProcStats procStats(pid_t pid) {
  ProcStats ps;
  const std::string base = "/proc/" + std::to_string(pid);
  const std::string stat = readFile(base + "/stat");
  // Fields after the comm, which is in parentheses and may contain spaces.
  const size_t rp = stat.rfind(')');
  if (rp != std::string::npos) {
    std::istringstream in(stat.substr(rp + 2));
    std::string field;
    std::vector<std::string> f;
    while (in >> field) f.push_back(field);
    // f[0] is field 3 (state); utime is field 14, stime field 15.
    if (f.size() > 13) {
      const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
      ps.cpu_s = (std::stod(f[11]) + std::stod(f[12])) / tick;
    }
  }
  std::istringstream status(readFile(base + "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) ps.rss_kib = std::stoull(line.substr(6));
    if (line.rfind("VmHWM:", 0) == 0) ps.hwm_kib = std::stoull(line.substr(6));
    if (line.rfind("Threads:", 0) == 0) ps.threads = std::stoi(line.substr(8));
  }
  if (DIR* d = ::opendir((base + "/task").c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::istringstream in(readFile(base + "/task/" + e->d_name + "/schedstat"));
      uint64_t run_ns = 0;
      if (in >> run_ns) ps.sched_cpu_s += static_cast<double>(run_ns) / 1e9;
    }
    ::closedir(d);
  }
  return ps;
}

AgentProcess::AgentProcess(const std::string& binary, const std::vector<std::string>& args,
                           const std::string& log_path, uint16_t metrics_port)
    : port_(metrics_port), log_path_(log_path) {
  int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log < 0) throw std::runtime_error("cannot open " + log_path + ": " + std::strerror(errno));
  std::vector<std::string> argv{binary};
  argv.insert(argv.end(), args.begin(), args.end());
  const pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ < 0) {
    ::close(log);
    throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  }
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(125);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, 0);
    ::dup2(log, 1);
    ::dup2(log, 2);
    ::close_range(3, ~0U, 0);
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    ::execv(cargv[0], cargv.data());
    ::_exit(127);
  }
  ::close(log);
}

AgentProcess::~AgentProcess() { stop(); }

void AgentProcess::waitReady(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    int status = 0;
    if (pid_ > 0 && ::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("the agent exited at start:\n" + logTail());
    }
    int code = 0;
    httpGet(port_, "/readyz", &code, std::chrono::milliseconds(500));
    if (code == 200) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  throw std::runtime_error("the agent was not ready in time:\n" + logTail());
}

std::vector<Sample> AgentProcess::scrape() const {
  int code = 0;
  std::string body = httpGet(port_, "/metrics", &code);
  if (code != 200) throw std::runtime_error("GET /metrics failed (status " + std::to_string(code) + ")");
  return parseMetrics(body);
}

int AgentProcess::stop(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  ::kill(pid_, SIGTERM);
  const auto deadline = Clock::now() + timeout;
  int status = 0;
  while (Clock::now() < deadline) {
    pid_t w = ::waitpid(pid_, &status, WNOHANG);
    if (w == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    if (w < 0 && errno != EINTR) {
      pid_ = -1;
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  return -1;
}

std::string AgentProcess::logTail(size_t bytes) const {
  std::string text = readFile(log_path_);
  return text.size() > bytes ? text.substr(text.size() - bytes) : text;
}

}  // namespace cw::bench
