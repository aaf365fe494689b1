// PSNR and SSIM of a video against a reference (see quality.h).
#include "pipeline/quality.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "model/error.h"

namespace ditto {

namespace {

at::Tensor as_frames(const at::Tensor& v) {  // -> [T * C, 1, H, W] float64
  at::Tensor x = v.dim() == 5 ? v[0] : v;
  if (x.dim() != 4) fail("quality: expected a video [C, T, H, W]");
  return x.permute({1, 0, 2, 3}).reshape({-1, 1, x.size(2), x.size(3)}).to(at::kDouble).cpu();
}

}  // namespace

double psnr(const at::Tensor& video, const at::Tensor& reference, double range) {
  if (video.sizes() != reference.sizes()) fail("psnr: the videos differ in shape");
  const double mse = (video.to(at::kDouble) - reference.to(at::kDouble)).pow(2).mean().item<double>();
  return mse == 0 ? INFINITY : 10 * std::log10(range * range / mse);
}

double ssim(const at::Tensor& video, const at::Tensor& reference, double range) {
  if (video.sizes() != reference.sizes()) fail("ssim: the videos differ in shape");
  at::Tensor x = as_frames(video), y = as_frames(reference);
  const int win = std::min<int64_t>({11, x.size(2), x.size(3)});
  at::Tensor g = at::arange(win, at::kDouble) - (win - 1) / 2.0;
  g = at::exp(-g * g / (2 * 1.5 * 1.5));
  g = g / g.sum();
  at::Tensor w = (g.unsqueeze(1) * g.unsqueeze(0)).view({1, 1, win, win});
  auto blur = [&](const at::Tensor& t) { return at::conv2d(t, w); };  // valid window positions only
  const double c1 = std::pow(0.01 * range, 2), c2 = std::pow(0.03 * range, 2);
  at::Tensor mx = blur(x), my = blur(y);
  at::Tensor sxx = blur(x * x) - mx * mx, syy = blur(y * y) - my * my, sxy = blur(x * y) - mx * my;
  at::Tensor map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2));
  return map.mean().item<double>();
}

}  // namespace ditto
