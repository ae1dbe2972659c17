// Splits a byte stream (a watch response, chunk by chunk) into
// newline-terminated lines, with a bound on the length of one line. Pure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace cw::k8s {

class LineSplitter {
 public:
  // Receives each complete line without its '\n'; false stops feeding.
  using LineSink = std::function<bool(std::string_view line)>;

  explicit LineSplitter(size_t max_line_bytes) : max_line_(max_line_bytes) {}

  // Feeds a chunk; calls sink for every line it completes. A line longer
  // than max_line_bytes is dropped (counted in oversize()) up to its '\n'.
  // Returns false if the sink did.
  bool feed(std::string_view chunk, const LineSink& sink);

  // Bytes of an unfinished line held back (a stream that ended mid-line).
  size_t pending() const { return buffer_.size(); }
  uint64_t oversize() const { return oversize_; }
  void reset();

 private:
  size_t max_line_;
  std::string buffer_;
  bool discarding_ = false;
  uint64_t oversize_ = 0;
};

}  // namespace cw::k8s
