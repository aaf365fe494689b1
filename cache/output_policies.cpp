// MagCache and EasyCache (see output_policies.h).
#include "cache/output_policies.h"

#include <cmath>

#include "model/atomic_file.h"
#include "model/error.h"

namespace ditto {

namespace {

at::Tensor l1(const at::Tensor& t) { return t.abs().sum(at::kDouble); }  // on t's device

// MagCache4Wan2.1's calibrated ratios (magcache_generate.py): 50 steps, conditional and unconditional
// interleaved, the first pair padded with 1.0.
const std::vector<double> kWan13b = {
      1.0, 1.0, 1.0124, 1.02213, 1.00166, 1.0041, 0.99791, 1.00061, 0.99682, 0.99762, 0.99634, 0.99685,
      0.99567, 0.99586, 0.99416, 0.99422, 0.99578, 0.99575, 0.9957, 0.99563, 0.99511, 0.99506, 0.99535,
      0.99531, 0.99552, 0.99549, 0.99541, 0.99539, 0.9954, 0.99536, 0.99489, 0.99485, 0.99518, 0.99514,
      0.99484, 0.99478, 0.99481, 0.99479, 0.99415, 0.99413, 0.99419, 0.99416, 0.99396, 0.99393, 0.99388,
      0.99386, 0.99349, 0.99349, 0.99309, 0.99304, 0.9927, 0.9927, 0.99228, 0.99226, 0.99171, 0.9917,
      0.99137, 0.99135, 0.99068, 0.99063, 0.99005, 0.99003, 0.98944, 0.98942, 0.98849, 0.98849, 0.98758,
      0.98757, 0.98644, 0.98643, 0.98504, 0.98503, 0.9836, 0.98359, 0.98202, 0.98201, 0.97977, 0.97978,
      0.97717, 0.97718, 0.9741, 0.97411, 0.97003, 0.97002, 0.96538, 0.96541, 0.9593, 0.95933, 0.95086,
      0.95089, 0.94013, 0.94019, 0.92402, 0.92414, 0.90241, 0.9026, 0.86821, 0.86868, 0.81838, 0.81939};
const std::vector<double> kWan14b = {
      1.0, 1.0, 1.02504, 1.03017, 1.00025, 1.00251, 0.9985, 0.99962, 0.99779, 0.99771, 0.9966, 0.99658,
      0.99482, 0.99476, 0.99467, 0.99451, 0.99664, 0.99656, 0.99434, 0.99431, 0.99533, 0.99545, 0.99468,
      0.99465, 0.99438, 0.99434, 0.99516, 0.99517, 0.99384, 0.9938, 0.99404, 0.99401, 0.99517, 0.99516,
      0.99409, 0.99408, 0.99428, 0.99426, 0.99347, 0.99343, 0.99418, 0.99416, 0.99271, 0.99269, 0.99313,
      0.99311, 0.99215, 0.99215, 0.99218, 0.99215, 0.99216, 0.99217, 0.99163, 0.99161, 0.99138, 0.99135,
      0.98982, 0.9898, 0.98996, 0.98995, 0.9887, 0.98866, 0.98772, 0.9877, 0.98767, 0.98765, 0.98573, 0.9857,
      0.98501, 0.98498, 0.9838, 0.98376, 0.98177, 0.98173, 0.98037, 0.98035, 0.97678, 0.97677, 0.97546,
      0.97543, 0.97184, 0.97183, 0.96711, 0.96708, 0.96349, 0.96345, 0.95629, 0.95625, 0.94926, 0.94929,
      0.93964, 0.93961, 0.92511, 0.92504, 0.90693, 0.90678, 0.8796, 0.87945, 0.86111, 0.86189};

}  // namespace

nlohmann::json MagnitudeRatios::to_json() const {
  return {{"format", "ditto-magcache-ratios-1"}, {"steps", cond.size()}, {"ratios_cond", cond}, {"ratios_uncond", uncond}};
}

MagnitudeRatios MagnitudeRatios::from_json(const nlohmann::json& j, const std::string& where) {
  MagnitudeRatios r;
  r.source = where;
  if (!j.is_object() || !j.contains("ratios_cond") || !j.contains("ratios_uncond"))
    fail("'", where, "' is not a MagCache ratio file (ratios_cond and ratios_uncond, lists of numbers; made by ditto profile)");
  r.cond = required_field<std::vector<double>>(j, "ratios_cond", "'" + where + "'");
  r.uncond = required_field<std::vector<double>>(j, "ratios_uncond", "'" + where + "'");
  if (r.cond.size() < 2 || r.uncond.size() != r.cond.size())
    fail("'", where, "': ratios_cond and ratios_uncond must be lists of the same length, at least 2 steps");
  for (double v : r.cond)
    if (!(v > 0) || !std::isfinite(v)) fail("'", where, "': a magnitude ratio must be a positive number, got ", v);
  return r;
}

MagnitudeRatios MagnitudeRatios::load(const std::string& path) { return from_json(read_json_file(path, "MagCache ratios"), path); }

std::vector<std::string> MagnitudeRatios::published_names() { return {"wan2.1-t2v-1.3b", "wan2.1-t2v-14b"}; }

MagnitudeRatios MagnitudeRatios::published(const std::string& name) {
  const std::vector<double>* table = name == "wan2.1-t2v-1.3b" ? &kWan13b : name == "wan2.1-t2v-14b" ? &kWan14b : nullptr;
  if (!table) fail("magcache: no published ratios '", name, "' (published: wan2.1-t2v-1.3b, wan2.1-t2v-14b; or ratios=FILE from ditto profile)");
  MagnitudeRatios r;
  r.source = "published:" + name;
  for (size_t i = 0; i < table->size(); ++i) (i % 2 ? r.uncond : r.cond).push_back((*table)[i]);
  return r;
}

std::vector<double> MagnitudeRatios::cond_for(int steps) const {
  const int src = static_cast<int>(cond.size());
  if (steps == src) return cond;
  if (steps == 1) return {cond.back()};
  std::vector<double> out;
  const double scale = static_cast<double>(src - 1) / (steps - 1);
  for (int i = 0; i < steps; ++i) out.push_back(cond[static_cast<size_t>(std::nearbyint(i * scale))]);
  return out;
}

MagnitudeProfiler::MagnitudeProfiler(int units, int steps, int branch, const at::TensorOptions& o)
    : units_(units), branch_(branch), sums_(at::zeros({2, steps}, o.dtype(at::kDouble))), counts_(at::zeros({2, steps}, o.dtype(at::kDouble))) {}

void MagnitudeProfiler::observe(int unit, int step, const at::Tensor& r) {
  stack_ = unit == 0 ? r.detach().to(at::kDouble) : stack_ + r.detach().to(at::kDouble);
  if (unit + 1 < units_) return;
  const at::Tensor norms = stack_.norm(2, -1).reshape({stack_.size(0), -1});  // [B, tokens]
  if (previous_norms_.defined()) {
    const at::Tensor ratio = norms / previous_norms_;
    for (int64_t b = 0; b < ratio.size(0); ++b) {
      const int64_t branch = ratio.size(0) == 2 ? b : branch_;
      sums_[branch][step] += ratio[b].sum();
      counts_[branch][step] += static_cast<double>(ratio.size(1));
    }
  }
  previous_norms_ = norms;
}

MagCachePolicy::MagCachePolicy(MagnitudeRatios ratios, double threshold, int max_skips, double retention)
    : ratios_(std::move(ratios)), threshold_(threshold), retention_(retention), max_skips_(max_skips) {
  if (!(threshold > 0)) fail("magcache: threshold must be positive");
  if (max_skips < 1) fail("magcache: K (the most consecutive reused steps) must be at least 1");
  if (!(retention >= 0 && retention <= 1)) fail("magcache: retention (the share of first steps always computed) must be in [0, 1]");
}

nlohmann::json MagCachePolicy::params() const {
  return {{"threshold", threshold_}, {"K", max_skips_}, {"retention", retention_}, {"ratios", ratios_.source}};
}

void MagCachePolicy::reset(const std::vector<float>& timesteps) {
  begin_segment(0, static_cast<int>(timesteps.size()), timesteps);
}

void MagCachePolicy::begin_segment(int first_step, int run_steps, const std::vector<float>& timesteps) {
  if (static_cast<int>(run_ratios_.size()) != run_steps) run_ratios_ = ratios_.cond_for(run_steps);
  offset_ = first_step;
  steps_ = static_cast<int>(timesteps.size());
  acc_ratio_ = 1, acc_err_ = 0, acc_steps_ = 0;
}

StepPlan MagCachePolicy::plan(int step) {
  StepPlan p;
  // The first R of the (segment's) calls always compute: MagCache counts 2N calls, cond and uncond.
  if (2 * step < static_cast<int>(2 * steps_ * retention_)) return p;
  acc_ratio_ *= run_ratios_.at(offset_ + step);
  acc_steps_ += 1;
  acc_err_ += std::fabs(1 - acc_ratio_);
  if (acc_err_ < threshold_ && acc_steps_ <= max_skips_) {
    p.mode = StepMode::ReuseStack;
  } else {
    acc_ratio_ = 1, acc_err_ = 0, acc_steps_ = 0;
  }
  return p;
}

nlohmann::json MagCachePolicy::log_entry(int) const {
  return {{"accumulated_error", acc_err_}, {"accumulated_ratio", acc_ratio_}, {"reused_in_a_row", acc_steps_}};
}

EasyCachePolicy::EasyCachePolicy(double threshold, int warmup) : threshold_(threshold), warmup_(warmup) {
  if (!(threshold > 0)) fail("easycache: threshold must be positive");
  if (warmup < 1) fail("easycache: warmup must be at least 1 step");
}

void EasyCachePolicy::reset(const std::vector<float>& timesteps) {
  steps_ = static_cast<int>(timesteps.size());
  compute_ = true;
  accumulated_ = 0, k_ = NAN, predicted_ = -1;
  previous_input_ = computed_input_ = computed_output_ = pending_ = at::Tensor();
}

StepPlan EasyCachePolicy::plan(int) {
  StepPlan p;
  p.mode = StepMode::Probe;
  return p;
}

// [sum |in - in_prev|, numel(in), sum |out_last|, numel(out_last), sum |out_c - out_c'|, sum |in_c - in_c'|,
//  has in_prev, has out_last, has a k update]: exactly additive over shards.
at::Tensor EasyCachePolicy::partial_sums(const at::Tensor& in, int) {
  const auto opt = in.options().dtype(at::kDouble);
  const at::Tensor zero = at::zeros({}, opt);
  auto n = [&](const at::Tensor& t) { return at::full({}, static_cast<double>(t.numel()), opt); };
  const bool prev = previous_input_.defined(), out = computed_output_.defined(), k = pending_.defined();
  at::Tensor s = at::stack({prev ? l1(in - previous_input_) : zero, n(in), out ? l1(computed_output_) : zero,
                            out ? n(computed_output_) : zero, k ? pending_[0] : zero, k ? pending_[1] : zero,
                            at::full({}, prev ? 1.0 : 0.0, opt), at::full({}, out ? 1.0 : 0.0, opt),
                            at::full({}, k ? 1.0 : 0.0, opt)});
  previous_input_ = in.detach();  // moves every step, computed or not
  pending_ = at::Tensor();
  return s;
}

std::vector<int64_t> EasyCachePolicy::decide(const std::vector<double>& s, int step) {
  double k = k_, acc = accumulated_, pred = -1;
  // k from the last computed step: mean |out - out_last| / mean |in - in_last| (means over whole tensors).
  if (s[8] > 0 && s[5] > 0) k = (s[4] / s[3]) / (s[5] / s[1]);
  bool compute = true;
  if (step < warmup_ || step >= steps_ - 1) {
    acc = 0;
  } else if (s[6] > 0 && s[7] > 0 && !std::isnan(k) && s[2] > 0) {
    pred = k * (s[0] / s[1]) / (s[2] / s[3]);
    acc += pred;
    if (acc < threshold_) compute = false;
    else acc = 0;
  }
  return {compute ? 1 : 0, pack_double(acc), pack_double(k), pack_double(pred)};
}

void EasyCachePolicy::apply(const std::vector<int64_t>& d, int) {
  compute_ = d[0] != 0;
  accumulated_ = unpack_double(d[1]);
  k_ = unpack_double(d[2]);
  predicted_ = unpack_double(d[3]);
}

void EasyCachePolicy::observe_output(const at::Tensor& in, const at::Tensor& out, int) {
  if (computed_output_.defined()) pending_ = at::stack({l1(out - computed_output_), l1(in - computed_input_)});
  computed_input_ = in.detach();
  computed_output_ = out.detach();
}

nlohmann::json EasyCachePolicy::log_entry(int) const {
  nlohmann::json j = {{"accumulated", accumulated_}};
  if (!std::isnan(k_)) j["k"] = k_;
  if (predicted_ >= 0) j["predicted_change"] = predicted_;
  return j;
}

}  // namespace ditto
