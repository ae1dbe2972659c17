#include "k8s/label_selector.h"

#include <gtest/gtest.h>

namespace cw::k8s {
namespace {

const Labels kGateway = {
    {"app", "envoy-gateway"}, {"security.istio.io/tlsMode", "istio"}, {"tier", "edge"}};

bool matches(const char* selector, const Labels& labels = kGateway) {
  return LabelSelector::parse(selector).matches(labels);
}

TEST(LabelSelectorTest, EmptySelectsEverything) {
  const LabelSelector s = LabelSelector::parse("");
  EXPECT_TRUE(s.empty());
  EXPECT_TRUE(s.matches({}));
  EXPECT_TRUE(s.matches(kGateway));
  EXPECT_EQ(s.str(), "");
  EXPECT_TRUE(LabelSelector::parse("   ").empty());
}

TEST(LabelSelectorTest, Equality) {
  EXPECT_TRUE(matches("app=envoy-gateway"));
  EXPECT_TRUE(matches("app==envoy-gateway"));
  EXPECT_FALSE(matches("app=other"));
  EXPECT_FALSE(matches("missing=x"));
  EXPECT_TRUE(matches("app!=other"));
  EXPECT_FALSE(matches("app!=envoy-gateway"));
  EXPECT_TRUE(matches("missing!=x"));  // absent labels satisfy !=
  EXPECT_TRUE(matches("security.istio.io/tlsMode=istio"));
}

TEST(LabelSelectorTest, SetBased) {
  EXPECT_TRUE(matches("tier in (edge,core)"));
  EXPECT_FALSE(matches("tier in (core)"));
  EXPECT_FALSE(matches("missing in (edge)"));
  EXPECT_TRUE(matches("tier notin (core)"));
  EXPECT_FALSE(matches("tier notin (core, edge)"));
  EXPECT_TRUE(matches("missing notin (edge)"));
  EXPECT_TRUE(matches("app"));
  EXPECT_FALSE(matches("missing"));
  EXPECT_TRUE(matches("!missing"));
  EXPECT_FALSE(matches("!app"));
}

TEST(LabelSelectorTest, AllRequirementsMustHold) {
  EXPECT_TRUE(matches("app=envoy-gateway,tier in (edge),!canary"));
  EXPECT_FALSE(matches("app=envoy-gateway,tier in (core)"));
  EXPECT_TRUE(matches(" app = envoy-gateway , tier notin ( core ) "));
}

TEST(LabelSelectorTest, EmptyValueIsAValue) {
  EXPECT_TRUE(matches("flag=", {{"flag", ""}}));
  EXPECT_FALSE(matches("flag=", {{"flag", "x"}}));
  EXPECT_FALSE(matches("flag=", {}));
}

TEST(LabelSelectorTest, CanonicalText) {
  EXPECT_EQ(LabelSelector::parse("app==envoy-gateway").str(), "app=envoy-gateway");
  EXPECT_EQ(LabelSelector::parse(" tier in ( edge , core, edge ) ,  !canary ").str(),
            "tier in (core,edge),!canary");
  EXPECT_EQ(LabelSelector::parse("a!=b,c notin (d),e").str(), "a!=b,c notin (d),e");
  // The canonical text parses back to the same selector.
  const std::string text = LabelSelector::parse("x in (b,a),y,!z,w!=v").str();
  EXPECT_EQ(LabelSelector::parse(text).str(), text);
}

TEST(LabelSelectorTest, RequirementsAreExposed) {
  const LabelSelector s = LabelSelector::parse("app=gw,tier notin (a,b)");
  ASSERT_EQ(s.requirements().size(), 2u);
  EXPECT_EQ(s.requirements()[0].key, "app");
  EXPECT_EQ(s.requirements()[0].op, LabelRequirement::Op::Equals);
  EXPECT_EQ(s.requirements()[1].op, LabelRequirement::Op::NotIn);
  EXPECT_EQ(s.requirements()[1].values, (std::vector<std::string>{"a", "b"}));
}

TEST(LabelSelectorTest, RejectsBadSelectorsWithAClearMessage) {
  struct Case {
    const char* text;
    const char* message_part;
  };
  for (const Case& c : {
           Case{"app in edge", "expected '(' after 'in'"},
           Case{"app in ()", "value set of 'in' is empty"},
           Case{"app in (a", "expected ',' or ')'"},
           Case{"app=a=b", "expected ',' or the end"},
           Case{"app=gw,", "expected a requirement after ','"},
           Case{",app", "expected a label key"},
           Case{"app !x", "expected '=' after '!'"},
           Case{"app > 3", "'<' and '>' are not supported"},
           Case{"app within (a)", "expected an operator"},
           Case{"-app=x", "invalid label key \"-app\""},
           Case{"Example.COM/app=x", "invalid label key"},
           Case{"app=bad value", "expected ',' or the end"},
           Case{"app=-x", "invalid label value \"-x\""},
           Case{"app=x_", "invalid label value"},
       }) {
    try {
      LabelSelector::parse(c.text);
      ADD_FAILURE() << "accepted: " << c.text;
    } catch (const SelectorError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(c.message_part), std::string::npos) << c.text << " -> " << what;
      EXPECT_NE(what.find(std::string("\"") + c.text + "\""), std::string::npos) << what;
      EXPECT_NE(what.find("at position"), std::string::npos) << what;
    }
  }
  EXPECT_THROW(LabelSelector::parse(std::string(64, 'a') + "=x"), SelectorError);
  EXPECT_THROW(LabelSelector::parse("app=" + std::string(64, 'a')), SelectorError);
  EXPECT_NO_THROW(LabelSelector::parse(std::string(63, 'a') + "=" + std::string(63, 'b')));
}

}  // namespace
}  // namespace cw::k8s
