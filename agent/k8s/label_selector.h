// Kubernetes label selectors, the syntax of ?labelSelector= and of
// `kubectl get -l`: equality (a=b, a==b, a!=b) and set-based (a in (x,y),
// a notin (x), a, !a) requirements separated by commas, all of which must
// hold. Parsed to validate --pod-selector with a clear message, sent to the
// API server in canonical form, and matched locally against a pod's labels.
#pragma once

#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace cw::k8s {

class SelectorError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

using Labels = std::map<std::string, std::string>;

struct LabelRequirement {
  enum class Op { Equals, NotEquals, In, NotIn, Exists, DoesNotExist };
  std::string key;
  Op op = Op::Exists;
  std::vector<std::string> values;  // one for Equals/NotEquals, >= 1 for In/NotIn, sorted

  bool matches(const Labels& labels) const;
  std::string str() const;  // "a=b", "a!=b", "a in (x,y)", "a notin (x)", "a", "!a"
};

class LabelSelector {
 public:
  // The empty selector: selects everything.
  LabelSelector() = default;

  // Throws SelectorError naming the problem and its position, e.g.
  //   label selector "app in x": expected '(' after 'in' at position 7
  // Keys are Kubernetes qualified names ([prefix/]name), values label values.
  static LabelSelector parse(std::string_view text);

  bool matches(const Labels& labels) const;
  bool empty() const { return requirements_.empty(); }
  // Canonical text, e.g. "app=envoy-gateway,tier in (edge,gw)"; "" if empty.
  std::string str() const;
  const std::vector<LabelRequirement>& requirements() const { return requirements_; }

 private:
  std::vector<LabelRequirement> requirements_;
};

}  // namespace cw::k8s
