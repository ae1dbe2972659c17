// libFuzzer target: kubeconfig YAML (yaml-cpp underneath). Any exception
// other than KubeconfigError, any crash or sanitizer report is a bug.
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iagent \
//     tests/fuzz/k8s_kubeconfig_fuzz.cpp agent/k8s/kubeconfig.cpp agent/k8s/file_text.cpp \
//     -lyaml-cpp -o k8s_kubeconfig_fuzz
//   ./k8s_kubeconfig_fuzz -max_total_time=60 tests/fixtures/k8s
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "k8s/kubeconfig.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    // Relative paths resolve against the base directory; nothing is read.
    const cw::k8s::ClusterConfig config = cw::k8s::parseKubeconfig(text, "/nonexistent");
    (void)config.server.size();
  } catch (const cw::k8s::KubeconfigError&) {
  }
  return 0;
}
