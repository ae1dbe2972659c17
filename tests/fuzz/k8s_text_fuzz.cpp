// libFuzzer target: the other text the agent parses: --pod-selector label
// selectors, cgroup paths, /proc/PID/cgroup and mountinfo. Any exception
// other than SelectorError, any crash or sanitizer report is a bug; a
// selector's canonical text must parse back to itself.
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iagent \
//     tests/fuzz/k8s_text_fuzz.cpp agent/k8s/label_selector.cpp agent/k8s/cgroup_path.cpp \
//     -o k8s_text_fuzz
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "k8s/cgroup_path.h"
#include "k8s/label_selector.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace cw::k8s;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const LabelSelector selector = LabelSelector::parse(text);
    const std::string canonical = selector.str();
    if (LabelSelector::parse(canonical).str() != canonical) std::abort();
    (void)selector.matches({{"app", "envoy-gateway"}, {"tier", ""}});
  } catch (const SelectorError&) {
  }

  if (auto id = parseCgroupPath(text)) {
    if (id->pod_uid.empty()) std::abort();
  }
  (void)cgroupV2Path(text);
  if (auto mount = findCgroup2Mount(text)) {
    (void)cgroupDirectory(*mount, "/kubepods/pod1/abc");
  }
  (void)cgroupDirectory(CgroupMount{"/sys/fs/cgroup", "/kubepods"}, text);
  return 0;
}
