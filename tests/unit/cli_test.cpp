#include "cli.h"

#include <gtest/gtest.h>

#include "targets.h"

namespace cw {
namespace {

Command parse(std::vector<std::string> args) { return parseCommandLine(args); }

TEST(Cli, RunCollectsRepeatedFlags) {
  auto cmd = parse({"run", "--netns", "/run/netns/a", "--netns", "/proc/42/ns/net",
                    "--proxy-cgroup", "/sys/fs/cgroup/x", "--redirect-port", "15002",
                    "--grace-ms", "50", "--log-format", "json", "--log-level", "debug",
                    "--metrics-address", "127.0.0.1:9464", "--max-tracked-sockets", "262144"});
  auto& run = std::get<RunOptions>(cmd);
  EXPECT_EQ(run.common.max_tracked_sockets, 262144u);
  EXPECT_EQ(run.netns_paths, (std::vector<std::string>{"/run/netns/a", "/proc/42/ns/net"}));
  EXPECT_EQ(run.proxy_cgroups, (std::vector<std::string>{"/sys/fs/cgroup/x"}));
  EXPECT_EQ(run.common.redirect_port, 15002);
  EXPECT_EQ(run.common.grace_ms, 50u);
  EXPECT_EQ(run.common.log_format, logging::Format::Json);
  EXPECT_EQ(run.common.log_level, spdlog::level::debug);
  EXPECT_EQ(run.common.metrics_address, "127.0.0.1:9464");
}

TEST(Cli, RunDefaults) {
  auto cmd = parse({"run", "--netns", "/run/netns/a"});
  auto& run = std::get<RunOptions>(cmd);
  EXPECT_EQ(run.common.redirect_port, 15001);
  EXPECT_EQ(run.common.grace_ms, 200u);
  EXPECT_EQ(run.common.log_format, logging::Format::Text);
  EXPECT_EQ(run.common.log_level, spdlog::level::info);
  EXPECT_TRUE(run.common.metrics_address.empty());
  EXPECT_EQ(run.common.max_tracked_sockets, 131072u);
}

TEST(Cli, BadInputIsAUsageErrorNamingTheProblem) {
  auto expectError = [](std::vector<std::string> args, const std::string& needle) {
    try {
      parseCommandLine(args);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expectError({"run", "--netns", "/x", "--bogus"}, "bogus");
  expectError({"run"}, "--netns");
  expectError({"run", "--netns", "/x", "--redirect-port", "0"}, "--redirect-port");
  expectError({"run", "--netns", "/x", "--redirect-port", "70000"}, "--redirect-port");
  expectError({"run", "--netns", "/x", "--redirect-port", "abc"}, "redirect-port");
  expectError({"run", "--netns", "/x", "--log-format", "xml"}, "--log-format");
  expectError({"run", "--netns", "/x", "--log-level", "loud"}, "--log-level");
  expectError({"run", "--netns", "/x", "--metrics-address", "9090"}, "--metrics-address");
  expectError({"run", "--netns", "/x", "--metrics-address", "h:99999"}, "--metrics-address");
  expectError({"run", "--netns", "/x", "--grace-ms", "0"}, "--grace-ms");
  expectError({"run", "--netns", "/x", "--ring-buffer-kb", "1000"}, "--ring-buffer-kb");
  expectError({"run", "--netns", "/x", "--max-tracked-sockets", "10"}, "--max-tracked-sockets");
  expectError({"frobnicate"}, "unknown command");
  expectError({"lab", "--duration", "0"}, "--duration");
  expectError({"lab", "--redirect-port", "15001"}, "redirect-port");
  // Found by the fuzzer: Boost loops forever formatting this error.
  expectError({"run", "-%%original_token%", "-x"}, "%...%");
}

TEST(Cli, HelpAndVersion) {
  EXPECT_TRUE(std::holds_alternative<HelpRequest>(parse({})));
  EXPECT_TRUE(std::holds_alternative<HelpRequest>(parse({"--help"})));
  EXPECT_TRUE(std::holds_alternative<VersionRequest>(parse({"version"})));
  auto help = std::get<HelpRequest>(parse({"run", "--help"}));
  EXPECT_NE(help.text.find("--netns"), std::string::npos);
  EXPECT_NE(help.text.find("--proxy-cgroup"), std::string::npos);
}

TEST(Targets, NameFromPath) {
  EXPECT_EQ(targetNameFromPath("/run/netns/gateway"), "gateway");
  EXPECT_EQ(targetNameFromPath("/var/run/netns/gw"), "gw");
  EXPECT_EQ(targetNameFromPath("/proc/1234/ns/net"), "pid-1234");
  EXPECT_EQ(targetNameFromPath("/some/dir/ns/"), "ns");
}

TEST(Targets, BadPathsAreClearErrors) {
  EXPECT_THROW(netnsInode("/nonexistent/capturewatch"), TargetError);
  // A regular file is not a namespace.
  EXPECT_THROW(netnsInode("/proc/self/status"), TargetError);
  // The mount namespace is a namespace, but not a network one.
  try {
    netnsInode("/proc/self/ns/mnt");
    ADD_FAILURE();
  } catch (const TargetError& e) {
    EXPECT_NE(std::string(e.what()).find("not a network namespace"), std::string::npos);
  }
  EXPECT_THROW(proxyCgroupId("/nonexistent/capturewatch"), TargetError);
  EXPECT_THROW(proxyCgroupId("/proc"), TargetError);  // not cgroup2
}

}  // namespace
}  // namespace cw
