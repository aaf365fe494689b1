// Cache policy registry and the `none` reference policy.
#include "cache/policy.h"

#include "model/error.h"

namespace ditto {

namespace {

class NonePolicy : public CachePolicy {
 public:
  std::string name() const override { return "none"; }
  void reset(int steps) override {
    steps_ = steps;
    computed_ = 0;
  }
  bool compute(int) override {
    ++computed_;
    return true;
  }
  nlohmann::json report() const override {
    return {{"policy", "none"}, {"steps_computed", computed_}, {"steps_total", steps_}};
  }

 private:
  int steps_ = 0, computed_ = 0;
};

}  // namespace

std::vector<std::string> cache_policy_names() { return {"none"}; }

std::unique_ptr<CachePolicy> make_cache_policy(const std::string& name) {
  if (name == "none") return std::make_unique<NonePolicy>();
  std::string known;
  for (const auto& n : cache_policy_names()) known += (known.empty() ? "" : ", ") + n;
  fail("unknown cache policy '", name, "' (available: ", known, ")");
}

}  // namespace ditto
