// TeaCache and first-block-cache decisions (see threshold_policies.h).
#include "cache/threshold_policies.h"

#include <cmath>

#include "model/error.h"

namespace ditto {

namespace {
at::Tensor l1(const at::Tensor& t) { return t.abs().sum(at::kDouble); }  // on t's device
}  // namespace

TeaCachePolicy::TeaCachePolicy(double threshold, std::vector<double> coefficients)
    : threshold_(threshold), coefficients_(std::move(coefficients)) {
  if (threshold <= 0) fail("teacache: threshold must be positive");
  if (coefficients_.empty()) fail("teacache: no rescale coefficients");
}

nlohmann::json TeaCachePolicy::params() const { return {{"threshold", threshold_}, {"coefficients", coefficients_}}; }

void TeaCachePolicy::reset(const std::vector<float>& timesteps) {
  steps_ = static_cast<int>(timesteps.size());
  accumulated_ = 0;
  compute_ = true;
  previous_ = at::Tensor();
}

double TeaCachePolicy::rescale(double x) const {
  double y = 0;
  for (double c : coefficients_) y = y * x + c;
  return y;
}

StepPlan TeaCachePolicy::plan(int) {
  StepPlan p;
  p.mode = StepMode::Probe;
  return p;
}

at::Tensor TeaCachePolicy::partial_sums(const at::Tensor& ind, int) {
  at::Tensor s = previous_.defined() ? at::stack({l1(ind - previous_), l1(previous_)})
                                     : at::zeros({2}, ind.options().dtype(at::kDouble));
  previous_ = ind.detach();  // the reference moves every step, computed or not
  return s;
}

std::vector<int64_t> TeaCachePolicy::decide(const std::vector<double>& sums, int step) {
  double acc = accumulated_, rel = -1;
  bool compute = true;
  if (step == 0 || step == steps_ - 1 || sums[1] == 0) {
    acc = 0;
  } else {
    rel = sums[0] / sums[1];
    acc += rescale(rel);
    if (acc < threshold_) compute = false;
    else acc = 0;
  }
  return {compute ? 1 : 0, pack_double(acc), pack_double(rel)};
}

void TeaCachePolicy::apply(const std::vector<int64_t>& d, int) {
  compute_ = d[0] != 0;
  accumulated_ = unpack_double(d[1]);
  last_rel_ = unpack_double(d[2]);
}

nlohmann::json TeaCachePolicy::log_entry(int) const {
  nlohmann::json j = {{"accumulated", accumulated_}};
  if (last_rel_ >= 0) j["rel_l1"] = last_rel_;
  return j;
}

FirstBlockCachePolicy::FirstBlockCachePolicy(double threshold) : threshold_(threshold) {
  if (threshold <= 0) fail("fbcache: threshold must be positive");
}

void FirstBlockCachePolicy::reset(const std::vector<float>& timesteps) {
  steps_ = static_cast<int>(timesteps.size());
  compute_ = true;
  reference_ = candidate_ = at::Tensor();
}

StepPlan FirstBlockCachePolicy::plan(int) {
  StepPlan p;
  p.mode = StepMode::Probe;
  return p;
}

at::Tensor FirstBlockCachePolicy::partial_sums(const at::Tensor& r, int) {
  candidate_ = r.detach();
  if (!reference_.defined()) return at::zeros({2}, r.options().dtype(at::kDouble));
  return at::stack({l1(r - reference_), l1(reference_)});
}

std::vector<int64_t> FirstBlockCachePolicy::decide(const std::vector<double>& sums, int step) {
  double rel = -1;
  bool compute = true;
  if (step != 0 && step != steps_ - 1 && sums[1] > 0) {
    rel = sums[0] / sums[1];
    compute = rel >= threshold_;
  }
  return {compute ? 1 : 0, pack_double(rel)};
}

void FirstBlockCachePolicy::apply(const std::vector<int64_t>& d, int) {
  compute_ = d[0] != 0;
  last_rel_ = unpack_double(d[1]);
  if (compute_) reference_ = candidate_;  // the reference moves only on computed steps
}

nlohmann::json FirstBlockCachePolicy::log_entry(int) const {
  nlohmann::json j = nlohmann::json::object();
  if (last_rel_ >= 0) j["rel_l1"] = last_rel_;
  return j;
}

}  // namespace ditto
