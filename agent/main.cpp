#include <malloc.h>

#include <cstdio>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "cli.h"
#include "commands.h"

int main(int argc, char** argv) {
  // The agent starts short-lived threads (one per setns into a pod's network
  // namespace); glibc would give each new one an arena of its own, up to 8 per
  // core, each keeping its freed memory: RSS grew by ~1.4 MiB per pod until
  // that cap (found by the soak test). Two arenas keep memory bounded; the
  // threads rarely allocate at the same time.
  mallopt(M_ARENA_MAX, 2);
  std::vector<std::string> args(argv + 1, argv + argc);
  cw::Command command;
  try {
    command = cw::parseCommandLine(args);
  } catch (const cw::UsageError& e) {
    std::cerr << "capturewatch: " << e.what() << " (see 'capturewatch --help')\n";
    return 2;
  }
  try {
    if (auto* help = std::get_if<cw::HelpRequest>(&command)) {
      std::cout << help->text;
      return 0;
    }
    if (std::holds_alternative<cw::VersionRequest>(command)) {
      std::cout << "capturewatch " << CW_VERSION << "\n";
      return 0;
    }
    if (auto* run = std::get_if<cw::RunOptions>(&command)) return cw::runCommand(*run);
    if (auto* ex = std::get_if<cw::ExplainOptions>(&command)) return cw::explainCommand(*ex);
    return cw::labCommand(std::get<cw::LabOptions>(command));
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::cerr << "capturewatch: error: " << e.what() << "\n";
    return 1;
  }
}
