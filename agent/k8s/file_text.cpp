#include "k8s/file_text.h"

#include <fstream>
#include <sstream>

namespace cw::k8s {

std::optional<std::string> readFileText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return text.str();
}

}  // namespace cw::k8s
