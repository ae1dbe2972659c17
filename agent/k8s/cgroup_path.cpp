#include "k8s/cgroup_path.h"

#include <algorithm>
#include <vector>

namespace cw::k8s {
namespace {

bool isHex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

bool startsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.substr(0, prefix.size()) == prefix;
}

bool endsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// A pod UID: a UUID (8-4-4-4-12 lower-case hex), or 32 hex digits (the
// config hash kubelet uses as the UID of a static pod).
bool isPodUid(std::string_view uid) {
  if (uid.size() == 32) return std::all_of(uid.begin(), uid.end(), isHex);
  if (uid.size() != 36) return false;
  for (size_t i = 0; i < uid.size(); ++i) {
    const bool dash_position = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash_position ? uid[i] != '-' : !isHex(uid[i])) return false;
  }
  return true;
}

// "pod<uid>" (cgroupfs) or "kubepods[-<qos>]-pod<uid with '_'>.slice"
// (systemd); the UID normalised with '-', or empty.
std::string podUidOf(std::string_view component) {
  std::string uid;
  if (startsWith(component, "pod")) {
    uid = component.substr(3);
  } else if (startsWith(component, "kubepods") && endsWith(component, ".slice")) {
    const std::string_view stem = component.substr(0, component.size() - 6);
    const auto at = stem.rfind("-pod");
    if (at == std::string_view::npos) return {};
    uid = stem.substr(at + 4);
    std::replace(uid.begin(), uid.end(), '_', '-');
  } else {
    return {};
  }
  return isPodUid(uid) ? uid : std::string();
}

// "cri-containerd-<id>.scope", "crio-<id>.scope", "docker-<id>.scope"
// (systemd) or "<id>" (cgroupfs); the ID (hex), or empty.
std::string containerIdOf(std::string_view component) {
  if (endsWith(component, ".scope")) component.remove_suffix(6);
  for (std::string_view prefix : {"cri-containerd-", "crio-", "docker-"}) {
    if (startsWith(component, prefix)) {
      component.remove_prefix(prefix.size());
      break;
    }
  }
  if (component.size() < 12 || component.size() > 128) return {};
  if (!std::all_of(component.begin(), component.end(), isHex)) return {};
  return std::string(component);
}

std::vector<std::string_view> splitPath(std::string_view path) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (start <= path.size()) {
    const size_t slash = std::min(path.find('/', start), path.size());
    if (slash > start) parts.push_back(path.substr(start, slash - start));
    start = slash + 1;
  }
  return parts;
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescapeMountField(std::string_view field) {
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size()) {
      const std::string_view digits = field.substr(i + 1, 3);
      if (std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '7'; })) {
        out.push_back(
            static_cast<char>((digits[0] - '0') * 64 + (digits[1] - '0') * 8 + (digits[2] - '0')));
        i += 3;
        continue;
      }
    }
    out.push_back(field[i]);
  }
  return out;
}

std::vector<std::string_view> splitFields(std::string_view line) {
  std::vector<std::string_view> fields;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && line[i] == ' ') ++i;
    const size_t start = i;
    while (i < line.size() && line[i] != ' ') ++i;
    if (i > start) fields.push_back(line.substr(start, i - start));
  }
  return fields;
}

template <typename Fn>
void forEachLine(std::string_view text, Fn&& fn) {
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = std::min(text.find('\n', start), text.size());
    fn(text.substr(start, end - start));
    start = end + 1;
  }
}

}  // namespace

std::optional<CgroupIdentity> parseCgroupPath(std::string_view path) {
  const std::vector<std::string_view> parts = splitPath(path);
  for (size_t i = 0; i < parts.size(); ++i) {
    std::string uid = podUidOf(parts[i]);
    if (uid.empty()) continue;
    CgroupIdentity id;
    id.pod_uid = std::move(uid);
    if (i + 1 < parts.size()) id.container_id = containerIdOf(parts[i + 1]);
    return id;
  }
  return std::nullopt;
}

std::optional<std::string> cgroupV2Path(std::string_view proc_cgroup) {
  std::optional<std::string> path;
  forEachLine(proc_cgroup, [&](std::string_view line) {
    if (!path && startsWith(line, "0::")) path = std::string(line.substr(3));
  });
  return path;
}

std::optional<CgroupMount> findCgroup2Mount(std::string_view mountinfo) {
  std::optional<CgroupMount> mount;
  forEachLine(mountinfo, [&](std::string_view line) {
    if (mount) return;
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
    const std::vector<std::string_view> f = splitFields(line);
    size_t sep = 6;
    while (sep < f.size() && f[sep] != "-") ++sep;
    if (sep + 1 >= f.size() || f[sep + 1] != "cgroup2") return;
    mount = CgroupMount{unescapeMountField(f[4]), unescapeMountField(f[3])};
  });
  return mount;
}

std::optional<std::string> cgroupDirectory(const CgroupMount& mount, std::string_view path) {
  if (path.empty() || path.front() != '/') return std::nullopt;
  for (std::string_view part : splitPath(path)) {
    if (part == "..") return std::nullopt;
  }
  std::string_view root = mount.root;
  while (root.size() > 1 && root.back() == '/') root.remove_suffix(1);
  std::string_view rest = path;
  if (root != "/") {
    if (!startsWith(path, root) || (path.size() > root.size() && path[root.size()] != '/')) {
      return std::nullopt;
    }
    rest = path.substr(root.size());
  }
  std::string dir = mount.mount_point;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (rest.empty() || rest == "/") return dir;
  return dir + std::string(rest);
}

}  // namespace cw::k8s
