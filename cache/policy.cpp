// Cache policy registry and option parsing.
#include "cache/policy.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "cache/adacache.h"
#include "cache/block_schedule.h"
#include "cache/output_policies.h"
#include "cache/schedule_policies.h"
#include "cache/threshold_policies.h"
#include "model/atomic_file.h"
#include "model/error.h"
#include "model/host_sync.h"

namespace ditto {

PolicyContext policy_context(const ModelOutline& model, int steps) {
  PolicyContext c;
  c.units = model.units;
  c.depth = model.shape.depth;
  c.steps = steps;
  c.hidden = model.shape.hidden_size;
  c.experts = model.experts;
  c.defaults = family_of(model).cache(model);
  return c;
}

int unit_named(const std::vector<UnitInfo>& units, const std::string& name) {
  for (size_t u = 0; u < units.size(); ++u)
    if (units[u].name == name) return static_cast<int>(u);
  fail("the model has no unit '", name, "'", units.empty() ? "" : " (its units are named like '" + units.front().name + "')");
}

std::vector<double> CachePolicy::local_sums(const at::Tensor& local, int step) {
  const at::Tensor s = partial_sums(local, step);
  if (!s.defined()) return {};
  const at::Tensor h = read_to_host(s).to(at::kDouble).contiguous();
  return std::vector<double>(h.data_ptr<double>(), h.data_ptr<double>() + h.numel());
}

int64_t pack_double(double v) {
  int64_t i;
  std::memcpy(&i, &v, sizeof i);
  return i;
}

double unpack_double(int64_t i) {
  double v;
  std::memcpy(&v, &i, sizeof v);
  return v;
}

PolicyOptions parse_policy_options(const std::vector<std::string>& items) {
  PolicyOptions o;
  for (const auto& item : items) {
    const auto eq = item.find('=');
    if (eq == std::string::npos || eq == 0) fail("--cache-opt '", item, "' is not KEY=VALUE");
    o[item.substr(0, eq)] = item.substr(eq + 1);
  }
  return o;
}

std::string policy_option_file(const std::string& key, const std::string& value) {
  if (key == "schedule" || key == "calibration") return value;
  if (key == "codebook") return !value.empty() && value[0] == '@' ? value.substr(1) : "";
  if (key == "ratios") {
    const auto published = MagnitudeRatios::published_names();
    return std::find(published.begin(), published.end(), value) == published.end() ? value : "";
  }
  return "";
}

std::string policy_option_with_file(const std::string& key, const std::string& value, const std::string& path) {
  if (policy_option_file(key, value).empty()) return key + "=" + value;
  return key + "=" + (key == "codebook" ? "@" : "") + path;
}

std::vector<std::string> cache_policy_names() {
  return {"none", "static", "pab", "adacache", "teacache", "fbcache", "blockcache", "magcache", "easycache"};
}

namespace {

// Typed access to the options, refusing unknown keys.
class Options {
 public:
  Options(std::string policy, const PolicyOptions& o, std::set<std::string> known)
      : policy_(std::move(policy)), o_(o) {
    for (const auto& [k, v] : o_)
      if (!known.count(k)) {
        std::string list;
        for (const auto& n : known) list += (list.empty() ? "" : ", ") + n;
        fail("cache policy '", policy_, "' has no option '", k, "'", known.empty() ? " (it takes none)" : " (options: " + list + ")");
      }
  }
  bool has(const std::string& k) const { return o_.count(k) > 0; }
  std::string str(const std::string& k, const std::string& def) const { return has(k) ? o_.at(k) : def; }
  double num(const std::string& k, double def) const {
    if (!has(k)) return def;
    try {
      size_t used = 0;
      const double v = std::stod(o_.at(k), &used);
      if (used != o_.at(k).size() || !std::isfinite(v)) throw std::invalid_argument("trailing");
      return v;
    } catch (const std::exception&) {
      fail("cache policy '", policy_, "': option ", k, "=", o_.at(k), " is not a number");
    }
  }
  int integer(const std::string& k, int def) const {
    const double v = num(k, def);
    if (v != std::floor(v) || std::fabs(v) > 1e9)
      fail("cache policy '", policy_, "': option ", k, " must be an integer (at most 1e9 in size), got ", o_.at(k));
    return static_cast<int>(v);
  }
  std::pair<double, double> range(const std::string& k, double lo, double hi) const {
    if (!has(k)) return {lo, hi};
    double a = 0, b = 0;
    char colon = 0;
    std::stringstream ss(o_.at(k));
    if (!(ss >> a >> colon >> b) || colon != ':') fail("cache policy '", policy_, "': option ", k, " must be A:B");
    return {a, b};
  }

 private:
  std::string policy_;
  const PolicyOptions& o_;
};

// AdaCache's metric unit from block=B residual=R: the self-attention (attn), cross-attention (cross)
// or MLP (mlp) of layer B's temporal (t-) or spatial (s-) block, or of its only block (no prefix).
int parse_metric_unit(const std::string& residual, int block, const PolicyContext& ctx) {
  if (block < 0 || block >= ctx.depth) fail("adacache: block ", block, " is outside 0..", ctx.depth - 1);
  std::string part = residual;
  std::optional<UnitRole> kind;
  if (part.rfind("t-", 0) == 0) kind = UnitRole::TemporalAttention, part = part.substr(2);
  else if (part.rfind("s-", 0) == 0) kind = UnitRole::SpatialAttention, part = part.substr(2);
  if (part != "attn" && part != "cross" && part != "mlp")
    fail("adacache: residual '", residual, "' unknown (t-attn, s-attn, t-cross, t-mlp; attn, cross, mlp for full-attention models)");
  // The block of layer `block` whose self-attention has the asked role (or the layer's first block).
  int chosen = -1;
  for (const UnitInfo& u : ctx.units)
    if (u.group == block && is_self_attention(u.role) && (!kind || u.role == *kind) && chosen < 0) chosen = u.block;
  if (chosen < 0) fail("adacache: layer ", block, " has no block for residual '", residual, "'");
  for (size_t u = 0; u < ctx.units.size(); ++u) {
    const UnitInfo& info = ctx.units[u];
    if (info.block != chosen) continue;
    if ((part == "attn" && is_self_attention(info.role)) || (part == "cross" && info.role == UnitRole::CrossAttention) ||
        (part == "mlp" && info.role == UnitRole::Mlp))
      return static_cast<int>(u);
  }
  fail("adacache: layer ", block, " has no unit for residual '", residual, "'");
}

}  // namespace

std::unique_ptr<CachePolicy> make_cache_policy(const std::string& name, const PolicyOptions& o,
                                               const PolicyContext& ctx) {
  const int depth = ctx.depth, steps = ctx.steps;
  const CacheDefaults& defaults = ctx.defaults;
  if (name == "none") {
    Options opt(name, o, {});
    return std::make_unique<NonePolicy>();
  }
  if (name == "static") {
    Options opt(name, o, {"interval", "first", "last"});
    return std::make_unique<StaticPolicy>(opt.integer("interval", 2), opt.integer("first", 1), opt.integer("last", 0));
  }
  if (name == "pab") {
    Options opt(name, o, {"spatial", "temporal", "attn", "cross", "mlp", "window"});
    const auto [lo, hi] = opt.range("window", defaults.pab_window.first, defaults.pab_window.second);
    std::map<UnitRole, int> ranges = defaults.pab_ranges;
    const std::pair<const char*, UnitRole> keys[] = {{"spatial", UnitRole::SpatialAttention},
                                                     {"temporal", UnitRole::TemporalAttention},
                                                     {"attn", UnitRole::FullAttention},
                                                     {"cross", UnitRole::CrossAttention},
                                                     {"mlp", UnitRole::Mlp}};
    for (const auto& [key, role] : keys)
      if (opt.has(key)) ranges[role] = opt.integer(key, 0);
    return std::make_unique<PabPolicy>(ctx.units, ranges, lo, hi);
  }
  if (name == "adacache") {
    Options opt(name, o, {"preset", "codebook", "block", "residual", "unit", "moreg", "moreg_window", "per"});
    // The published codebooks are for 100 and 30 steps; other counts use the nearer one.
    const std::string speed = opt.str("preset", "fast");
    std::string preset = speed;
    if (speed == "fast" || speed == "slow") preset = (steps >= 65 ? "100-" : "30-") + speed;
    if (preset == "100-slow") fail("adacache: there is no published 100-step slow codebook; give codebook=...");
    // codebook=0.08:6/.../1.00:1, or codebook=@FILE holding the same text.
    std::string text = opt.str("codebook", "");
    if (!text.empty() && text[0] == '@') {
      try {
        text = read_text_file(text.substr(1));
      } catch (const Error& e) {
        fail("adacache: ", e.what());
      }
      while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
    }
    // A file's content is never echoed in an error (a job file could name any file to read it back).
    const bool from_file = opt.has("codebook") && opt.str("codebook", "")[0] == '@';
    Codebook cb;
    try {
      cb = opt.has("codebook") ? Codebook::parse(text) : adacache_preset(preset);
    } catch (const Error& e) {
      if (!from_file) throw;
      fail("adacache: the codebook file '", opt.str("codebook", "").substr(1),
           "' does not hold a codebook (THRESHOLD:RATE entries with increasing thresholds, e.g. 0.08:6/0.16:5/1.00:1)");
    }
    // per=unit / per=block: a rate per unit or per block instead of one for the stack.
    const std::string per = opt.str("per", "stack");
    if (per == "unit" || per == "block") {
      for (const char* k : {"moreg", "moreg_window", "block", "residual", "unit"})
        if (opt.has(k)) fail("adacache: option ", k, " is for per=stack (each unit is its own metric with per=", per, ")");
      return std::make_unique<AdaCacheUnitPolicy>(cb, ctx.units,
                                                  per == "unit" ? AdaCacheUnitPolicy::Grouping::Unit
                                                                : AdaCacheUnitPolicy::Grouping::Block,
                                                  opt.has("codebook") ? "custom" : preset);
    }
    if (per != "stack") fail("adacache: per=", per, " unknown (stack, block, unit)");
    MoRegParams moreg;
    moreg.enabled = opt.integer("moreg", 0) != 0;
    if (moreg.enabled && !defaults.moreg)
      fail("adacache: MoReg reads frame-to-frame differences, which this model family's sequence-parallel layout "
           "splits across ranks (Ulysses): use moreg=0");
    // Released windows: steps 10-90 of 100 and 4-26 of 30; other counts scale 10-90 %.
    const double a = steps == 30 ? 4 : std::round(0.1 * steps), b = steps == 30 ? 26 : std::round(0.9 * steps);
    const auto [first, last] = opt.range("moreg_window", a, b);
    moreg.first = static_cast<int>(first);
    moreg.last = static_cast<int>(last);
    // The metric unit: unit=NAME, block=B residual=R, or the family's default.
    if (opt.has("unit") && (opt.has("block") || opt.has("residual")))
      fail("adacache: give unit=NAME or block=/residual=, not both");
    int metric;
    if (opt.has("unit")) {
      metric = unit_named(ctx.units, opt.str("unit", ""));
    } else if (opt.has("block") || opt.has("residual") || defaults.metric_unit.empty()) {
      metric = parse_metric_unit(opt.str("residual", "t-attn"), opt.integer("block", depth / 2 - (depth > 1)), ctx);
    } else {
      metric = unit_named(ctx.units, defaults.metric_unit);
    }
    return std::make_unique<AdaCachePolicy>(cb, metric, ctx.units.at(metric).name, moreg,
                                            opt.has("codebook") ? "custom" : preset);
  }
  if (name == "teacache") {
    Options opt(name, o, {"threshold", "coefficients"});
    std::vector<double> coef = defaults.teacache_coefficients;
    if (opt.has("coefficients")) {
      coef.clear();
      std::stringstream ss(opt.str("coefficients", ""));
      std::string c;
      while (std::getline(ss, c, '/')) {
        try {
          coef.push_back(std::stod(c));
        } catch (const std::exception&) {
          fail("teacache: coefficient '", c, "' is not a number (coefficients=C0/C1/...)");
        }
      }
    }
    if (coef.empty()) fail("teacache: this model family has no published rescale coefficients; give coefficients=C0/C1/...");
    return std::make_unique<TeaCachePolicy>(opt.num("threshold", defaults.teacache_threshold), coef);
  }
  if (name == "fbcache") {
    Options opt(name, o, {"threshold"});
    return std::make_unique<FirstBlockCachePolicy>(opt.num("threshold", defaults.fbcache_threshold));
  }
  if (name == "magcache") {
    Options opt(name, o, {"threshold", "K", "retention", "ratios"});
    const std::string source = opt.str("ratios", defaults.magcache_ratios);
    if (source.empty())
      fail("magcache: this model has no published magnitude ratios; calibrate them with `ditto profile` (it writes "
           "magcache.json) and give ratios=FILE");
    const auto published = MagnitudeRatios::published_names();
    MagnitudeRatios ratios = std::find(published.begin(), published.end(), source) != published.end()
                                 ? MagnitudeRatios::published(source)
                                 : MagnitudeRatios::load(source);
    return std::make_unique<MagCachePolicy>(std::move(ratios), opt.num("threshold", 0.12), opt.integer("K", 2),
                                            opt.num("retention", 0.2));
  }
  if (name == "easycache") {
    Options opt(name, o, {"threshold", "warmup"});
    return std::make_unique<EasyCachePolicy>(opt.num("threshold", 0.05), opt.integer("warmup", 10));
  }
  if (name == "blockcache") {
    Options opt(name, o, {"schedule", "calibration"});
    if (ctx.experts > 1)
      fail("blockcache: a schedule spans one model's steps, and a model of experts restarts its cache at each switch: "
           "use another policy (adacache, teacache, fbcache, static, pab)");
    if (!opt.has("schedule")) fail("cache policy 'blockcache' needs a schedule: --schedule FILE (made by ditto profile)");
    const std::string path = opt.str("schedule", "");
    BlockSchedule s = BlockSchedule::load(path);
    if (depth > 0 && s.depth != depth)
      fail("block-cache schedule '", path, "' is for a depth-", s.depth, " model, this one has depth ", depth);
    if (s.compute.size() != ctx.units.size())
      fail("block-cache schedule '", path, "' has ", s.compute.size(), " units, this model has ", ctx.units.size());
    if (steps > 0 && s.steps != steps)
      fail("block-cache schedule '", path, "' is for ", s.steps, " steps, the run has ", steps);
    ScaleShift calibration;
    const std::string cal = opt.str("calibration", "");
    if (!cal.empty()) {
      if (ctx.hidden <= 0) fail("blockcache: calibration needs the model's width");
      calibration = ScaleShift::load(cal, ctx.units, ctx.hidden);
    }
    return std::make_unique<BlockCachePolicy>(std::move(s), path, std::move(calibration), cal);
  }
  std::string known;
  for (const auto& n : cache_policy_names()) known += (known.empty() ? "" : ", ") + n;
  fail("unknown cache policy '", name, "' (available: ", known, ")");
}

}  // namespace ditto
