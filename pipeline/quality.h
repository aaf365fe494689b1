// Quality measures of a video against a reference: PSNR and SSIM.
#pragma once
#include <ATen/ATen.h>

namespace ditto {

// Videos [C, T, H, W] (or [1, C, T, H, W]); data_range: max - min of the signal (2 for [-1, 1]).
double psnr(const at::Tensor& video, const at::Tensor& reference, double data_range);
// Mean SSIM over frames and channels (11 x 11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03).
double ssim(const at::Tensor& video, const at::Tensor& reference, double data_range);

}  // namespace ditto
