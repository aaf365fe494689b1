// The caching-policy interface: per step, which units of the block stack to compute. Policies are
// chosen by name (--cache); each reports what it computed for the metrics JSON.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ditto {

class CachePolicy {
 public:
  virtual ~CachePolicy() = default;
  virtual std::string name() const = 0;
  // A new video of `steps` sampling steps begins: forget everything.
  virtual void reset(int steps) = 0;
  // Whether step `step` computes the block stack (false: reuse the cached residual).
  virtual bool compute(int step) = 0;
  // Units computed / total and the decision log, for the metrics JSON.
  virtual nlohmann::json report() const = 0;
};

// `none`: compute every unit of every step; the reference every other policy is measured against.
std::unique_ptr<CachePolicy> make_cache_policy(const std::string& name);
std::vector<std::string> cache_policy_names();

}  // namespace ditto
