// Reading a whole small file (a token, /proc/PID/cgroup, mountinfo).
#pragma once

#include <optional>
#include <string>

namespace cw::k8s {

// The file's content; nullopt if it cannot be opened or read.
std::optional<std::string> readFileText(const std::string& path);

}  // namespace cw::k8s
