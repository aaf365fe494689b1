// The sampling loop with classifier-free guidance (see sampler.h).
#include "model/sampler.h"

#include "model/error.h"

namespace ditto {

at::Tensor cfg_combine(const at::Tensor& batched, double scale) {
  auto halves = batched.chunk(2, 0);
  return halves[1] + scale * (halves[0] - halves[1]);
}

GuidedFn batched_guidance(ModelFn model, double scale) {
  return [model = std::move(model), scale](const at::Tensor& z, float t, int step) {
    const bool cfg = guidance_enabled(scale);
    at::Tensor z_in = cfg ? at::cat({z, z}, 0) : z;
    at::Tensor pred = model(z_in, at::full({z_in.size(0)}, t, z.options().dtype(at::kFloat)), step);
    return cfg ? cfg_combine(pred, scale) : pred;
  };
}

at::Tensor sample(Sampler& sampler, const at::Tensor& z0, const GuidedFn& model, const StepFn& on_step) {
  const auto& ts = sampler.timesteps();
  sampler.reset();
  at::Tensor z = z0;
  for (int i = 0; i < static_cast<int>(ts.size()); ++i) {
    z = sampler.step(i, z, model(z, ts[i], i).to(z.scalar_type()));
    if (on_step) on_step(i, z);
  }
  return z;
}

const std::vector<std::string>& sampler_names() {
  static const std::vector<std::string> names = {"rflow", "ddim", "unipc", "euler"};
  return names;
}

const std::vector<std::string>& sampler_grid_names() {
  static const std::vector<std::string> names = {"official", "diffusers-0.37"};
  return names;
}

std::unique_ptr<Sampler> make_sampler(const SamplerOptions& o, const TimestepTransform& transform) {
  if (o.steps <= 0) fail("--steps must be positive, got ", o.steps);
  if (o.grid != "official" && o.name != "unipc") fail("--sigma-grid is for the unipc sampler, not ", o.name);
  if (o.name == "rflow") return std::make_unique<RectifiedFlow>(o, transform);
  if (o.name == "ddim") {
    if (o.shift > 0) fail("a flow shift is for the rflow sampler, not ddim");
    return std::make_unique<DDIM>(o);
  }
  if (o.name == "unipc") return std::make_unique<FlowUniPC>(o);
  if (o.name == "euler") return std::make_unique<FlowMatchEuler>(o);
  std::string known;
  for (const auto& n : sampler_names()) known += (known.empty() ? "" : ", ") + n;
  fail("unknown sampler '", o.name, "' (known: ", known, ")");
}

}  // namespace ditto
