// DDIM (eta = 0) over the linear-beta DDPM schedule, for epsilon-predicting models.
#include <cmath>

#include "model/error.h"
#include "model/sampler.h"

namespace ditto {

DDIM::DDIM(const SamplerOptions& o) {
  const int T = o.num_timesteps;
  if (T <= 1) fail("num_timesteps must be > 1 for DDIM");
  if (o.steps > T) fail("DDIM: --steps ", o.steps, " exceeds the ", T, " training timesteps");
  double prod = 1.0;
  for (int t = 0; t < T; ++t) {
    const double beta = 1e-4 + (0.02 - 1e-4) * t / (T - 1);
    prod *= 1.0 - beta;
    alphas_cumprod_.push_back(prod);
  }
  const int stride = T / o.steps;
  for (int i = 0; i < o.steps; ++i) timesteps_.push_back(static_cast<float>((o.steps - 1 - i) * stride));
}

at::Tensor DDIM::step(int i, const at::Tensor& z, const at::Tensor& eps) {
  const double a = alphas_cumprod_.at(static_cast<int>(timesteps_[i]));
  const double a_prev =
      i + 1 < static_cast<int>(timesteps_.size()) ? alphas_cumprod_.at(static_cast<int>(timesteps_[i + 1])) : 1.0;
  at::Tensor x0 = (z - std::sqrt(1.0 - a) * eps) / std::sqrt(a);
  return std::sqrt(a_prev) * x0 + std::sqrt(1.0 - a_prev) * eps;
}

}  // namespace ditto
