// Flow-matching UniPC (Zhao et al. 2023) as Wan samples with it: the bh2 variant of order 2 predicting
// x0, with the lower-order final step and a final sigma of 0 (Wan's FlowUniPCMultistepScheduler;
// diffusers' UniPCMultistepScheduler with use_flow_sigmas). Scalars in float32 as both compute them.
#include <cmath>

#include "model/error.h"
#include "model/sampler.h"

namespace ditto {

namespace {

float lambda_of(float sigma) { return std::log(1.0f - sigma) - std::log(sigma); }  // log alpha - log sigma

}  // namespace

FlowUniPC::FlowUniPC(const SamplerOptions& o) {
  if (o.steps <= 0) fail("--steps must be positive, got ", o.steps);
  if (!(o.shift >= 0) || !std::isfinite(o.shift)) fail("the flow shift must be a positive number (0: none), got ", o.shift);
  const double s = o.shift > 0 ? o.shift : 1.0, T = o.num_timesteps;
  const bool official = o.grid == "official";
  if (!official && o.grid != "diffusers-0.37") fail("unknown --sigma-grid '", o.grid, "' (official, diffusers-0.37)");
  // official: sigma_i = shift(linspace(1 - 1/T, 0, N + 1)[i]); diffusers 0.37: shift(linspace(1, 1/T,
  // N + 1)[i]), the first lowered by 1e-6 when it is 1. Then 0; the model reads int(T sigma_i).
  for (int i = 0; i < o.steps; ++i) {
    const double base = official ? 1.0 - (1.0 + (1.0 / T - 1.0) * (o.steps - i) / o.steps)  // 1 - linspace(1, 1/T, N + 1)[N - i]
                                 : 1.0 + i * ((1.0 / T - 1.0) / o.steps);                  // linspace(1, 1/T, N + 1)[i]
    double sigma = s * base / (1.0 + (s - 1.0) * base);
    if (!official && i == 0 && std::fabs(sigma - 1.0) < 1e-6) sigma -= 1e-6;
    sigmas_.push_back(static_cast<float>(sigma));
    timesteps_.push_back(static_cast<float>(static_cast<int64_t>(sigma * T)));
  }
  sigmas_.push_back(0.0f);
}

void FlowUniPC::reset() {
  outputs_.clear();
  last_sample_ = at::Tensor();
  order_ = 0;
}

at::Tensor FlowUniPC::step(int i, const at::Tensor& z, const at::Tensor& prediction) {
  if (i != static_cast<int>(outputs_.size())) fail("UniPC: step ", i, " out of order (reset() starts a video)");
  const int n = static_cast<int>(timesteps_.size());
  // The x0 prediction: the model's flow points to the noise (x0 = z - sigma v); ditto's prediction is -v.
  const at::Tensor m = z + prediction * static_cast<double>(sigmas_[i]);
  at::Tensor x = z;
  // Corrector (UniC) of the last predictor, with this step's x0 prediction.
  if (i > 0) {
    const float st = sigmas_[i], s0 = sigmas_[i - 1];
    const float h = lambda_of(st) - lambda_of(s0), hh = -h, phi1 = std::expm1(hh), bh = std::expm1(hh);
    const at::Tensor& m0 = outputs_.back();
    const at::Tensor base = last_sample_ * static_cast<double>(st / s0) - m0 * static_cast<double>((1.0f - st) * phi1);
    const at::Tensor dt = m - m0;
    if (order_ == 1) {
      x = base - (dt * 0.5) * static_cast<double>((1.0f - st) * bh);
    } else {  // order 2: rhos from [[1, 1], [r, 1]] rho = b
      const float r = (lambda_of(sigmas_[i - 2]) - lambda_of(s0)) / h;
      const float hk = phi1 / hh - 1.0f, b1 = hk / bh, b2 = 2.0f * (hk / hh - 0.5f) / bh;
      const float rho0 = (b1 - b2) / (1.0f - r), rho1 = b1 - rho0;
      const at::Tensor d1 = (outputs_[outputs_.size() - 2] - m0) / static_cast<double>(r);
      x = base - (d1 * static_cast<double>(rho0) + dt * static_cast<double>(rho1)) * static_cast<double>((1.0f - st) * bh);
    }
  }
  outputs_.push_back(m);
  order_ = std::min({2, n - i, static_cast<int>(outputs_.size())});
  last_sample_ = x;
  // Predictor (UniP) to the next sigma.
  const float st = sigmas_[i + 1], s0 = sigmas_[i];
  if (st == 0.0f) return m;  // the final sigma: alpha 1, lambda infinite, x = m exactly
  const float h = lambda_of(st) - lambda_of(s0), hh = -h, phi1 = std::expm1(hh), bh = std::expm1(hh);
  at::Tensor next = x * static_cast<double>(st / s0) - m * static_cast<double>((1.0f - st) * phi1);
  if (order_ == 2) {
    const float r = (lambda_of(sigmas_[i - 1]) - lambda_of(s0)) / h;
    const at::Tensor d1 = (outputs_[outputs_.size() - 2] - m) / static_cast<double>(r);
    next = next - (d1 * 0.5) * static_cast<double>((1.0f - st) * bh);
  }
  return next;
}

}  // namespace ditto
