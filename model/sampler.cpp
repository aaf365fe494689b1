// The sampling loop with classifier-free guidance (see sampler.h).
#include "model/sampler.h"

#include "model/error.h"

namespace ditto {

bool guidance_enabled(const GuidanceOptions& g) { return g.scale != 1.0; }

at::Tensor guide(const at::Tensor& prediction, const GuidanceOptions& g) {
  at::Tensor p = prediction.narrow(1, 0, g.in_channels);
  if (!guidance_enabled(g)) return p;
  auto halves = p.chunk(2, 0);
  return halves[1] + g.scale * (halves[0] - halves[1]);
}

at::Tensor sample(const Sampler& sampler, const at::Tensor& z0, const ModelFn& model, const GuidanceOptions& g,
                  const StepFn& on_step) {
  const auto& ts = sampler.timesteps();
  at::Tensor z = z0;
  const bool cfg = guidance_enabled(g);
  for (int i = 0; i < static_cast<int>(ts.size()); ++i) {
    at::Tensor z_in = cfg ? at::cat({z, z}, 0) : z;
    at::Tensor t = at::full({z_in.size(0)}, ts[i], z.options().dtype(at::kFloat));
    at::Tensor pred = guide(model(z_in, t, i), g);
    z = sampler.step(i, z, pred.to(z.scalar_type()));
    if (on_step) on_step(i, z);
  }
  return z;
}

std::unique_ptr<Sampler> make_sampler(const SamplerOptions& o, const VideoGeometry& geometry) {
  if (o.steps <= 0) fail("--steps must be positive, got ", o.steps);
  if (o.name == "rflow") return std::make_unique<RectifiedFlow>(o, geometry);
  if (o.name == "ddim") return std::make_unique<DDIM>(o);
  fail("unknown sampler '", o.name, "' (known: rflow, ddim)");
}

}  // namespace ditto
