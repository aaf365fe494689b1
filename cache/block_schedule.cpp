// Change curves, schedules and the Block Caching policy (see block_schedule.h).
#include "cache/block_schedule.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "model/atomic_file.h"
#include "model/error.h"
#include "model/safetensors.h"

namespace ditto {

double l1_rel(const at::Tensor& cur, const at::Tensor& prev) {
  if (cur.sizes() != prev.sizes()) fail("l1_rel: shapes differ (", cur.sizes(), " vs ", prev.sizes(), ")");
  const at::Tensor c = cur.to(at::kDouble);
  const double num = (c - prev.to(at::kDouble)).abs().sum().item<double>(), den = c.abs().sum().item<double>();
  return den > 0 ? num / den : (num > 0 ? INFINITY : 0.0);
}

namespace {

// The fields every file of this module starts with, and the check of its format name on reading.
nlohmann::ordered_json file_header(const char* format, int depth, int steps) {
  return {{"format", format}, {"version", 1}, {"depth", depth}, {"steps", steps}};
}
void check_format(const nlohmann::json& j, const char* format, const char* what) {
  if (!j.is_object() || !j.contains("format") || j["format"] != format) fail("not a ditto ", what, " file (format field)");
}

}  // namespace

nlohmann::ordered_json ChangeCurves::to_json() const {
  nlohmann::ordered_json j = file_header("ditto-change-curves", depth, steps);
  j["units_per_layer"] = units_per_layer;
  j["runs"] = runs;
  j["timesteps"] = timesteps;
  j["source"] = source;
  j["units"] = nlohmann::ordered_json::array();
  for (size_t u = 0; u < units.size(); ++u) j["units"].push_back({{"name", units[u]}, {"l1rel", l1rel[u]}});
  return j;
}

ChangeCurves ChangeCurves::from_json(const nlohmann::json& j) {
  check_format(j, "ditto-change-curves", "change-curves");
  const std::string what = "change curves";
  ChangeCurves c;
  c.depth = required_field<int>(j, "depth", what);
  c.steps = required_field<int>(j, "steps", what);
  c.runs = required_field<int>(j, "runs", what);
  read_config_field(j, "units_per_layer", c.units_per_layer, what);
  c.timesteps = required_field<std::vector<float>>(j, "timesteps", what);
  c.source = j.value("source", nlohmann::json::object());
  const auto& units = j.at("units");
  if (!units.is_array()) fail(what, ", field 'units': must be a list");
  for (size_t u = 0; u < units.size(); ++u) {
    const std::string unit = what + ", units[" + std::to_string(u) + "]";
    c.units.push_back(required_field<std::string>(units[u], "name", unit));
    c.l1rel.push_back(required_field<std::vector<double>>(units[u], "l1rel", unit));
    if (static_cast<int>(c.l1rel.back().size()) != c.steps) fail("change curve of ", c.units.back(), " has the wrong length");
  }
  if (static_cast<int>(c.units.size()) != c.units_per_layer * c.depth)
    fail("change curves: ", c.units.size(), " units for depth ", c.depth);
  return c;
}

std::string ChangeCurves::to_csv() const {
  std::ostringstream os;
  os << "unit";
  for (int t = 1; t <= steps; ++t) os << ",step" << t;
  os << "\n";
  os.precision(9);
  for (size_t u = 0; u < units.size(); ++u) {
    os << units[u];
    for (double v : l1rel[u]) os << "," << v;
    os << "\n";
  }
  return os.str();
}

std::vector<uint8_t> ChangeCurves::heatmap(int cell, int* width, int* height) const {
  const int W = steps * cell, H = static_cast<int>(units.size()) * cell;
  std::vector<uint8_t> rgb(static_cast<size_t>(W) * H * 3, 0);
  // A dark-blue -> teal -> yellow ramp over log10(L1rel) in [-3, 0].
  auto colour = [](double v, uint8_t* p) {
    const double x = std::clamp((std::log10(std::max(v, 1e-12)) + 3.0) / 3.0, 0.0, 1.0);
    const double stops[3][3] = {{40, 20, 90}, {30, 150, 140}, {250, 230, 40}};
    const double s = x * 2;
    const int k = std::min(1, static_cast<int>(s));
    const double f = s - k;
    for (int ch = 0; ch < 3; ++ch) p[ch] = static_cast<uint8_t>(std::lround(stops[k][ch] * (1 - f) + stops[k + 1][ch] * f));
  };
  for (size_t u = 0; u < units.size(); ++u)
    for (int t = 0; t < steps; ++t) {
      uint8_t c[3] = {0, 0, 0};
      if (t > 0) colour(l1rel[u][t], c);  // step 1 has no change: black
      for (int y = 0; y < cell; ++y)
        for (int x = 0; x < cell; ++x) {
          uint8_t* p = &rgb[(static_cast<size_t>(u * cell + y) * W + t * cell + x) * 3];
          p[0] = c[0], p[1] = c[1], p[2] = c[2];
        }
    }
  *width = W;
  *height = H;
  return rgb;
}

std::vector<uint8_t> derive_unit_schedule(const std::vector<double>& curve, double delta) {
  const size_t n = curve.size();
  std::vector<uint8_t> compute(n, 0);
  if (n == 0) return compute;
  compute[0] = 1;
  double acc = 0;
  for (size_t t = 1; t + 1 < n; ++t) {
    if (acc + curve[t] > delta) {
      compute[t] = 1;
      acc = 0;
    } else {
      acc += curve[t];
    }
  }
  compute[n - 1] = 1;
  return compute;
}

double BlockSchedule::compute_fraction() const {
  double c = 0, total = 0;
  for (const auto& u : compute)
    for (uint8_t v : u) c += v, total += 1;
  return total > 0 ? c / total : 1.0;
}

nlohmann::ordered_json BlockSchedule::to_json() const {
  nlohmann::ordered_json j = file_header("ditto-blockcache-schedule", depth, steps);
  j["units_per_layer"] = units_per_layer;
  j["delta"] = delta;
  j["compute_fraction"] = compute_fraction();
  j["source"] = source;
  j["units"] = nlohmann::ordered_json::array();
  for (int u = 0; u < static_cast<int>(compute.size()); ++u) {
    std::vector<int> steps_on;  // 1-based steps that compute
    for (int t = 0; t < steps; ++t)
      if (compute[u][t]) steps_on.push_back(t + 1);
    j["units"].push_back({{"name", u < static_cast<int>(units.size()) ? units[u] : std::to_string(u)},
                          {"compute_steps", steps_on}});
  }
  return j;
}

BlockSchedule BlockSchedule::from_json(const nlohmann::json& j) {
  check_format(j, "ditto-blockcache-schedule", "block-cache schedule");
  const std::string what = "block-cache schedule";
  BlockSchedule s;
  s.depth = required_field<int>(j, "depth", what);
  s.steps = required_field<int>(j, "steps", what);
  s.delta = required_field<double>(j, "delta", what);
  read_config_field(j, "units_per_layer", s.units_per_layer, what);
  s.source = j.value("source", nlohmann::json::object());
  if (!j.contains("units") || !j["units"].is_array()) fail(what, ", field 'units': must be a list");
  const auto& units = j.at("units");
  if (static_cast<int>(units.size()) != s.units_per_layer * s.depth)
    fail("block-cache schedule: ", units.size(), " units, a depth-", s.depth, " model has ", s.units_per_layer * s.depth);
  for (int u = 0; u < static_cast<int>(units.size()); ++u) {
    const std::string unit = what + ", units[" + std::to_string(u) + "]";
    std::string name = std::to_string(u);
    read_config_field(units[u], "name", name, unit);
    std::vector<uint8_t> c(s.steps, 0);
    for (int step : required_field<std::vector<int>>(units[u], "compute_steps", unit)) {
      if (step < 1 || step > s.steps) fail("block-cache schedule: unit ", u, " computes at step ", step, ", outside 1..", s.steps);
      c[step - 1] = 1;
    }
    if (c.empty() || !c.front() || !c.back())
      fail("block-cache schedule: unit ", name, " must compute the first and the last step");
    s.compute.push_back(c);
    s.units.push_back(name);
  }
  return s;
}

BlockSchedule BlockSchedule::load(const std::string& path) {
  std::string text;
  try {
    text = read_text_file(path);
  } catch (const Error& e) {
    fail("cannot read the block-cache schedule: ", e.what());
  }
  try {
    return from_json(parse_json<nlohmann::json>(text));
  } catch (const Error& e) {
    fail("'", path, "': ", e.what());
  } catch (const std::exception& e) {
    fail("block-cache schedule '", path, "': ", e.what());
  }
}

void BlockSchedule::save(const std::string& path) const {
  write_file_atomic(path, [&](std::ostream& os) { os << dump_json(to_json(), 2) << "\n"; });
}

BlockSchedule derive_schedule(const ChangeCurves& curves, double delta) {
  if (!(delta >= 0)) fail("block-cache delta must be >= 0, got ", delta);
  BlockSchedule s;
  s.depth = curves.depth;
  s.steps = curves.steps;
  s.delta = delta;
  s.units_per_layer = curves.units_per_layer;
  s.units = curves.units;
  s.source = {{"curves", curves.source}, {"runs", curves.runs}};
  for (const auto& c : curves.l1rel) s.compute.push_back(derive_unit_schedule(c, delta));
  return s;
}

namespace {
std::vector<std::string> names_of(const std::vector<UnitInfo>& units) {
  std::vector<std::string> names;
  for (const UnitInfo& u : units) names.push_back(u.name);
  return names;
}
}  // namespace

ScaleShift ScaleShift::identity(const BlockSchedule& s, const std::vector<UnitInfo>& units, int hidden) {
  if (s.compute.size() != units.size())
    fail("the schedule has ", s.compute.size(), " units, the model ", units.size());
  ScaleShift ss;
  ss.names_ = names_of(units);
  for (int u = 0; u < static_cast<int>(s.compute.size()); ++u)
    if (std::find(s.compute[u].begin(), s.compute[u].end(), 0) != s.compute[u].end())
      ss.params_[u] = {at::zeros({2 * hidden, hidden}, at::kFloat), at::zeros({2 * hidden}, at::kFloat)};
  return ss;
}

ScaleShift ScaleShift::load(const std::string& path, const std::vector<UnitInfo>& units, int hidden) {
  ScaleShift ss;
  ss.names_ = names_of(units);
  std::map<std::string, int> by_name;
  for (int u = 0; u < static_cast<int>(units.size()); ++u) by_name[units[u].name] = u;
  for (auto& [key, t] : load_safetensors(path)) {
    const auto dot = key.rfind('.');
    if (key.rfind("unit.", 0) != 0 || dot == std::string::npos || dot <= 5)
      fail("calibration '", path, "': unexpected tensor '", key, "'");
    const std::string name = key.substr(5, dot - 5), what = key.substr(dot + 1);
    auto it = by_name.find(name);
    if (it == by_name.end()) fail("calibration '", path, "': unit '", name, "' is not a unit of this model");
    auto& p = ss.params_[it->second];
    if (what == "weight") {
      if (t.sizes() != at::IntArrayRef({2 * hidden, hidden}))
        fail("calibration '", path, "': ", key, " is ", t.sizes(), ", the model needs [", 2 * hidden, ", ", hidden, "]");
      p.first = t.to(at::kFloat);
    } else if (what == "bias") {
      if (t.sizes() != at::IntArrayRef({2 * hidden})) fail("calibration '", path, "': ", key, " is ", t.sizes(), ", expected [", 2 * hidden, "]");
      p.second = t.to(at::kFloat);
    } else {
      fail("calibration '", path, "': unexpected tensor '", key, "'");
    }
  }
  for (const auto& [u, p] : ss.params_)
    if (!p.first.defined() || !p.second.defined()) fail("calibration '", path, "': ", ss.names_[u], " lacks its weight or bias");
  return ss;
}

void ScaleShift::save(const std::string& path, const std::map<std::string, std::string>& metadata) const {
  NamedTensors t;
  for (const auto& [u, p] : params_) {
    t.emplace_back("unit." + names_.at(u) + ".weight", p.first.detach().to(at::kFloat).cpu().contiguous());
    t.emplace_back("unit." + names_.at(u) + ".bias", p.second.detach().to(at::kFloat).cpu().contiguous());
  }
  save_safetensors(path, t, metadata);
}

at::Tensor ScaleShift::apply(int unit, const at::Tensor& r, const at::Tensor& t) const {
  auto it = params_.find(unit);
  if (it == params_.end()) return r;
  const auto& [w, b] = it->second;
  const int64_t C = w.size(1);
  const at::Tensor st = at::linear(t.to(w.device(), w.scalar_type()), w, b);  // [B, 2C]
  std::vector<int64_t> shape(r.dim(), 1);
  shape.front() = st.size(0);
  shape.back() = C;
  const at::Tensor scale = st.narrow(1, 0, C).reshape(shape), shift = st.narrow(1, C, C).reshape(shape);
  return (r.to(w.device(), w.scalar_type()) * (1 + scale) + shift).to(r.device(), r.scalar_type());
}

BlockCachePolicy::BlockCachePolicy(BlockSchedule schedule, std::string path, ScaleShift calibration,
                                   std::string calibration_path)
    : s_(std::move(schedule)), path_(std::move(path)), calibration_(std::move(calibration)),
      calibration_path_(std::move(calibration_path)) {}

nlohmann::json BlockCachePolicy::params() const {
  return {{"schedule", path_}, {"delta", s_.delta}, {"compute_fraction", s_.compute_fraction()},
          {"calibration", calibration_path_}};
}

at::Tensor BlockCachePolicy::adjust_reused(int unit, const at::Tensor& cached, const DiTContext& c) const {
  return calibration_.apply(unit, cached, c.timestep_embedding());
}

void BlockCachePolicy::reset(const std::vector<float>& timesteps) {
  if (static_cast<int>(timesteps.size()) != s_.steps)
    fail("block-cache schedule '", path_, "' is for ", s_.steps, " steps, the sampler runs ", timesteps.size());
}

StepPlan BlockCachePolicy::plan(int step) {
  StepPlan p;
  p.compute.resize(s_.compute.size());
  for (size_t u = 0; u < s_.compute.size(); ++u) p.compute[u] = s_.compute[u][step];
  return p;
}

}  // namespace ditto
