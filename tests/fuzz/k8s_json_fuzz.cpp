// libFuzzer target: the API server's JSON as the agent parses it (a pod, a
// pod list, a watch event line, a Status body, a stream split into lines).
// Any exception other than ParseError, any crash or sanitizer report is a bug.
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iagent \
//     tests/fuzz/k8s_json_fuzz.cpp agent/k8s/pod.cpp agent/k8s/line_splitter.cpp -o k8s_json_fuzz
//   ./k8s_json_fuzz -max_total_time=60 tests/fixtures/k8s
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "k8s/line_splitter.h"
#include "k8s/pod.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace cw::k8s;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const Pod pod = parsePod(text);
    (void)pod.container("istio-proxy");
  } catch (const ParseError&) {
  }
  try {
    (void)parsePodList(text);
  } catch (const ParseError&) {
  }
  (void)parseStatus(text);

  // As a watch stream: lines of at most 4 KiB, each parsed as an event.
  LineSplitter lines(4096);
  lines.feed(text, [](std::string_view line) {
    try {
      const WatchEvent ev = parseWatchEvent(line);
      (void)ev.gone();
      (void)watchEventTypeName(ev.type);
    } catch (const ParseError&) {
    }
    return true;
  });
  return 0;
}
