#include "k8s/line_splitter.h"

namespace cw::k8s {

bool LineSplitter::feed(std::string_view chunk, const LineSink& sink) {
  while (!chunk.empty()) {
    const size_t newline = chunk.find('\n');
    const std::string_view part = chunk.substr(0, newline);
    if (!discarding_ && buffer_.size() + part.size() > max_line_) {
      discarding_ = true;
      ++oversize_;
      buffer_.clear();
      buffer_.shrink_to_fit();
    }
    if (!discarding_) buffer_.append(part);
    if (newline == std::string_view::npos) return true;
    chunk.remove_prefix(newline + 1);
    if (discarding_) {
      discarding_ = false;
      continue;
    }
    std::string line;
    line.swap(buffer_);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (!sink(line)) return false;
  }
  return true;
}

void LineSplitter::reset() {
  buffer_.clear();
  discarding_ = false;
}

}  // namespace cw::k8s
