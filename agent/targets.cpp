#include "targets.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <regex>

namespace cw {
namespace {

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

std::string errnoText(int err) { return std::strerror(err); }

}  // namespace

std::string targetNameFromPath(const std::string& path) {
  static const std::regex kRunNetns("^/(var/)?run/netns/([^/]+)$");
  static const std::regex kProcNs("^/proc/([0-9]+)/ns/net$");
  std::smatch m;
  if (std::regex_match(path, m, kRunNetns)) return m[2].str();
  if (std::regex_match(path, m, kProcNs)) return "pid-" + m[1].str();
  std::string trimmed = path;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  auto slash = trimmed.rfind('/');
  return slash == std::string::npos ? trimmed : trimmed.substr(slash + 1);
}

uint32_t netnsInode(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.fd < 0) {
    throw TargetError("--netns " + path + ": cannot open: " + errnoText(errno));
  }
  int type = ::ioctl(fd.fd, NS_GET_NSTYPE);
  if (type < 0) {
    throw TargetError("--netns " + path + ": not a namespace file (expected /proc/PID/ns/net or " +
                      "/run/netns/NAME)");
  }
  if (type != CLONE_NEWNET) {
    throw TargetError("--netns " + path + ": a namespace, but not a network namespace");
  }
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) {
    throw TargetError("--netns " + path + ": cannot stat: " + errnoText(errno));
  }
  return static_cast<uint32_t>(st.st_ino);
}

uint64_t proxyCgroupId(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.fd < 0) {
    throw TargetError("--proxy-cgroup " + path + ": cannot open: " + errnoText(errno));
  }
  struct statfs sfs {};
  if (::fstatfs(fd.fd, &sfs) != 0) {
    throw TargetError("--proxy-cgroup " + path + ": cannot statfs: " + errnoText(errno));
  }
  if (sfs.f_type != CGROUP2_SUPER_MAGIC) {
    throw TargetError("--proxy-cgroup " + path +
                      ": not a cgroup v2 directory (find the cgroup2 mount in /proc/self/mountinfo)");
  }
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) {
    throw TargetError("--proxy-cgroup " + path + ": cannot stat: " + errnoText(errno));
  }
  // On 64-bit kernels the cgroup v2 id is the kernfs inode number.
  return static_cast<uint64_t>(st.st_ino);
}

}  // namespace cw
