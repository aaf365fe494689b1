// AdaCache's codebook, MoReg and compute-rate state machine (see adacache.h).
#include "cache/adacache.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "model/error.h"

namespace ditto {

int Codebook::lookup(double d) const {
  for (size_t i = 0; i + 1 < rates.size(); ++i)
    if (d < thresholds[i]) return rates[i];
  return rates.back();
}

Codebook Codebook::parse(const std::string& text) {
  Codebook c;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, '/')) {
    double t = 0;
    int r = 0;
    char colon = 0;
    std::stringstream is(item);
    if (!(is >> t >> colon >> r) || colon != ':' || r < 1)
      fail("codebook entry '", item, "' is not THRESHOLD:RATE with RATE >= 1 (e.g. 0.08:6/0.16:5/1.00:1)");
    if (!c.thresholds.empty() && t <= c.thresholds.back())
      fail("codebook thresholds must increase, got ", t, " after ", c.thresholds.back());
    c.thresholds.push_back(t);
    c.rates.push_back(r);
  }
  if (c.rates.empty()) fail("empty codebook");
  return c;
}

std::string Codebook::str() const {
  std::ostringstream os;
  for (size_t i = 0; i < rates.size(); ++i) os << (i ? "/" : "") << thresholds[i] << ":" << rates[i];
  return os.str();
}

Codebook adacache_preset(const std::string& name) {
  if (name == "100-fast") return Codebook::parse("0.03:12/0.05:10/0.07:8/0.09:6/0.11:4/1.00:3");
  if (name == "30-fast") return Codebook::parse("0.08:6/0.16:5/0.24:4/0.32:3/0.40:2/1.00:1");
  if (name == "30-slow") return Codebook::parse("0.08:3/0.16:2/0.24:1/0.32:1/0.40:1/1.00:1");
  fail("unknown adacache preset '", name, "' (100-fast, 30-fast, 30-slow)");
}

double moreg_score(double diff, double next, double prev, const MoRegParams& p) {
  const double m = diff / (next + prev);
  return std::pow(m / p.scale, p.power) / p.divisor;
}

AdaCachePolicy::AdaCachePolicy(Codebook codebook, int metric, std::string metric_name, MoRegParams moreg,
                               std::string preset)
    : codebook_(std::move(codebook)), metric_(metric), metric_name_(std::move(metric_name)), moreg_(moreg),
      preset_(std::move(preset)) {}

nlohmann::json AdaCachePolicy::params() const {
  nlohmann::json j = {{"codebook", codebook_.str()}, {"preset", preset_}, {"metric_unit", metric_name_},
                      {"moreg", moreg_.enabled}};
  if (moreg_.enabled) j["moreg_window"] = {moreg_.first, moreg_.last};
  return j;
}

void AdaCachePolicy::reset(const std::vector<float>& timesteps) {
  steps_ = static_cast<int>(timesteps.size());
  rate_ = 1;
  prev_compute_ = 0;
  moreg_prev_ = 1.0;
  have_prev_ = false;
  prev_residual_ = at::Tensor();
  last_log_ = nlohmann::json::object();
}

StepPlan AdaCachePolicy::plan(int step) {
  const int s = step + 1;
  const bool forced = s <= 2 || s >= steps_ - 1;
  StepPlan p;
  p.mode = forced || s == prev_compute_ + rate_ ? StepMode::Compute : StepMode::ReuseStack;
  return p;
}

at::Tensor AdaCachePolicy::partial_sums(const at::Tensor& r, int step) {
  // [|p_old - p_new|, |p_old|, sum_f |r[f+1] - r[f]|, sum_f |r[f+1]|, sum_f |r[f]|, have_prev], on r's device.
  const at::Tensor zero = at::zeros({}, r.options().dtype(at::kDouble));
  auto l1 = [](const at::Tensor& t) { return t.abs().sum(at::kDouble); };
  std::vector<at::Tensor> s(6, zero);
  if (have_prev_) {
    s[0] = l1(prev_residual_ - r);
    s[1] = l1(prev_residual_);
    s[5] = at::ones({}, zero.options());
  }
  const int64_t T = r.size(1);
  if (moreg_.enabled && T > 1) {
    at::Tensor next = r.narrow(1, 1, T - 1), prev = r.narrow(1, 0, T - 1);
    s[2] = l1(next - prev);
    s[3] = l1(next);
    s[4] = l1(prev);
  }
  prev_residual_ = r.detach();  // residuals are never written in place: no copy needed
  have_prev_ = true;
  return at::stack(s);
}

std::vector<int64_t> AdaCachePolicy::decide(const std::vector<double>& sums, int step) {
  const int s = step + 1;
  const int k = s - prev_compute_;  // steps since the last compute
  int rate = 1;
  double d = -1, moreg = 1, m = moreg_prev_;
  if (sums[5] > 0) {
    d = sums[0] / sums[1] / k;
    if (moreg_.enabled) {
      m = s >= moreg_.first && s <= moreg_.last && sums[3] + sums[4] > 0 ? moreg_score(sums[2], sums[3], sums[4], moreg_)
                                                                         : 1.0;
      const double grad = moreg_.grad_mul * (m - moreg_prev_) / k;
      moreg = m + std::abs(grad);
      d *= moreg;
    }
    rate = codebook_.lookup(d);
  }
  return {rate, s, pack_double(m), pack_double(d)};
}

void AdaCachePolicy::apply(const std::vector<int64_t>& decision, int step) {
  rate_ = static_cast<int>(decision[0]);
  prev_compute_ = static_cast<int>(decision[1]);
  moreg_prev_ = unpack_double(decision[2]);
  const double d = unpack_double(decision[3]);
  last_log_ = {{"next_rate", rate_}};
  if (d >= 0) last_log_["metric"] = d;
  if (moreg_.enabled) last_log_["moreg_score"] = moreg_prev_;
}

nlohmann::json AdaCachePolicy::log_entry(int) const { return last_log_; }

AdaCacheUnitPolicy::AdaCacheUnitPolicy(Codebook codebook, const std::vector<UnitInfo>& units, Grouping grouping,
                                       std::string preset)
    : codebook_(std::move(codebook)), units_(static_cast<int>(units.size())), grouping_(grouping),
      preset_(std::move(preset)) {
  for (const UnitInfo& u : units) block_of_.push_back(u.block);
  groups_ = grouping == Grouping::Unit ? units_ : (units.empty() ? 0 : units.back().block + 1);
}

nlohmann::json AdaCacheUnitPolicy::params() const {
  return {{"preset", preset_}, {"codebook", codebook_.str()}, {"per", grouping_ == Grouping::Unit ? "unit" : "block"},
          {"groups", groups_}};
}

void AdaCacheUnitPolicy::reset(const std::vector<float>& timesteps) {
  steps_ = static_cast<int>(timesteps.size());
  last_.assign(groups_, 0);
  next_.assign(groups_, 1);
  prev_.assign(units_, at::Tensor());
  num_.assign(groups_, at::Tensor());
  den_.assign(groups_, at::Tensor());
  computed_.assign(groups_, false);
  last_log_ = nlohmann::json::object();
}

StepPlan AdaCacheUnitPolicy::plan(int step) {
  const int s = step + 1;
  const bool forced = s <= 2 || s >= steps_ - 1;
  StepPlan p;
  p.compute.resize(units_);
  for (int u = 0; u < units_; ++u) p.compute[u] = forced || s >= next_[group_of(u)];
  return p;
}

void AdaCacheUnitPolicy::observe_unit(int unit, const at::Tensor& r, int) {
  const int g = group_of(unit);
  if (prev_[unit].defined()) {  // device-side sums: one transfer per step, by the runner
    const at::Tensor num = (prev_[unit] - r).abs().sum(at::kDouble), den = prev_[unit].abs().sum(at::kDouble);
    num_[g] = num_[g].defined() ? num_[g] + num : num;
    den_[g] = den_[g].defined() ? den_[g] + den : den;
  }
  prev_[unit] = r;
  computed_[g] = true;
  sum_options_ = r.options().dtype(at::kDouble);
}

at::Tensor AdaCacheUnitPolicy::partial_sums(const at::Tensor&, int) {
  // [num per group, den per group, computed per group]; the flags are alike on every rank.
  const at::Tensor zero = at::zeros({}, sum_options_), one = at::ones({}, sum_options_);
  std::vector<at::Tensor> sums;
  for (const auto* v : {&num_, &den_})
    for (const at::Tensor& t : *v) sums.push_back(t.defined() ? t : zero);
  for (bool c : computed_) sums.push_back(c ? one : zero);
  std::fill(num_.begin(), num_.end(), at::Tensor());
  std::fill(den_.begin(), den_.end(), at::Tensor());
  std::fill(computed_.begin(), computed_.end(), false);
  return at::stack(sums);
}

std::vector<int64_t> AdaCacheUnitPolicy::decide(const std::vector<double>& sums, int step) {
  const int s = step + 1;
  std::vector<int64_t> d(2 * groups_, 0);  // [rate (0: not computed this step), metric]
  for (int g = 0; g < groups_; ++g) {
    if (sums[2 * groups_ + g] <= 0) continue;
    double metric = -1;
    int rate = 1;
    if (last_[g] > 0 && sums[groups_ + g] > 0) {
      metric = sums[g] / sums[groups_ + g] / (s - last_[g]);
      rate = codebook_.lookup(metric);
    }
    d[g] = rate;
    d[groups_ + g] = pack_double(metric);
  }
  return d;
}

void AdaCacheUnitPolicy::apply(const std::vector<int64_t>& d, int step) {
  const int s = step + 1;
  nlohmann::json rates = nlohmann::json::array(), metrics = nlohmann::json::array();
  for (int g = 0; g < groups_; ++g) {
    if (d[g] > 0) {
      last_[g] = s;
      next_[g] = s + static_cast<int>(d[g]);
    }
    rates.push_back(d[g]);
    metrics.push_back(unpack_double(d[groups_ + g]));
  }
  last_log_ = {{"next_rates", rates}, {"metrics", metrics}};
}

}  // namespace ditto
