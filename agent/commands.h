// The subcommands behind main(): each returns the process exit status.
#pragma once

#include <atomic>

#include "cli.h"

namespace cw {

int runCommand(const RunOptions& options);
int labCommand(const LabOptions& options);
int explainCommand(const ExplainOptions& options);

// SIGINT/SIGTERM set the returned flag (installed without SA_RESTART so a
// blocking poll returns at once).
const std::atomic<bool>& installStopSignals();

// Agent options shared by run and lab.
struct AgentOptions;
AgentOptions agentOptionsFrom(const CommonOptions& common, uint32_t summary_interval_s);

}  // namespace cw
