// libFuzzer target: the nft JSON parser, then evaluation and the explainer
// on whatever it accepted. Build:
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iagent -Ibpf \
//     agent/rules/*.cpp agent/event.cpp tests/fuzz/nft_parser_fuzz.cpp
// Seed corpus: tests/fixtures/rules/nft.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "rules/evaluator.h"
#include "rules/explain.h"
#include "rules/nft_parser.h"

namespace {

using namespace cw::rules;

Connection connection(const char* dst, uint16_t port, uint32_t uid, const char* oif) {
  Connection c;
  c.uid = uid;
  c.gid = uid;
  c.dst.addr = *cw::Address::parse(dst);
  c.dst.port = port;
  c.src.addr = *cw::Address::parse(c.dst.addr.isV4() ? "198.18.0.10" : "fd00::10");
  c.src.port = 40000;
  c.out_interface = oif;
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const ParseResult r = parseNftJson(text);
  if (!r.ok()) {
    (void)r.error.str();
    return 0;
  }
  const Evaluator evaluator(*r.rules);
  const Policy policy = summarise(*r.rules);
  (void)policy.str();
  for (const Connection& c :
       {connection("203.0.113.5", 443, 1000, "eth0"), connection("127.0.0.1", 15001, 1337, "lo"),
        connection("10.1.2.3", 53, 0, "eth1"), connection("2001:db8::1", 443, 1000, "eth0"),
        connection("::1", 8080, 1337, "lo")}) {
    const Explanation x = explain(evaluator, policy, c, 15001);
    (void)x.evaluation.decision.str();
    for (const Rule& rule : x.evaluation.path) (void)rule.describe();
  }
  return 0;
}
