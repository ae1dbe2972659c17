// libFuzzer target: the command line. The input is split at NUL bytes into
// arguments; parsing must either produce options or a UsageError, never
// crash or throw anything else.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cli.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args;
  std::string current;
  for (size_t i = 0; i < size && args.size() < 64; ++i) {
    if (data[i] == 0) {
      args.push_back(current);
      current.clear();
    } else {
      current.push_back(static_cast<char>(data[i]));
    }
  }
  args.push_back(current);
  try {
    cw::parseCommandLine(args);
  } catch (const cw::UsageError&) {
  }
  return 0;
}
