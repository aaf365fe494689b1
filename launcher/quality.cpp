// PSNR, SSIM and the demo adherence checker (see quality.h).
#include "launcher/quality.h"

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

nlohmann::json Adherence::json() const {
  return {{"ok", ok()},          {"color", color},         {"shape", shape},
          {"direction", direction}, {"speed", speed},       {"background", background},
          {"seen_color", seen_color}, {"seen_shape", seen_shape}, {"seen_direction", seen_direction},
          {"seen_speed", seen_speed}, {"fill", fill},       {"velocity", velocity}};
}

Adherence check_adherence(const at::Tensor& video, const DemoAttributes& e) {
  at::Tensor v = ((video.to(at::kFloat).cpu().clamp(-1, 1) + 1) * 127.5);  // [3, T, H, W] in 0..255
  if (v.dim() != 4 || v.size(0) != 3) fail("adherence: expected an RGB video [3, T, H, W]");
  const int64_t T = v.size(1), H = v.size(2), W = v.size(3);
  at::Tensor px = v.permute({1, 2, 3, 0});  // [T, H, W, 3]
  auto distance = [&](const std::array<uint8_t, 3>& c) {
    at::Tensor ref = at::tensor({static_cast<float>(c[0]), static_cast<float>(c[1]), static_cast<float>(c[2])});
    return (px - ref).pow(2).sum(-1).sqrt();  // [T, H, W]
  };
  Adherence a;
  // Background: the frame border's mean colour.
  at::Tensor border = at::cat({px.select(1, 0).reshape({-1, 3}), px.select(1, H - 1).reshape({-1, 3}),
                               px.select(2, 0).reshape({-1, 3}), px.select(2, W - 1).reshape({-1, 3})});
  at::Tensor mean_border = border.mean(0);
  int best_bg = 0;
  double best_bg_d = 1e9;
  for (int b = 0; b < static_cast<int>(demo_backgrounds().size()); ++b) {
    auto rgb = demo_background_rgb(b);
    const double d = (mean_border - at::tensor({float(rgb[0]), float(rgb[1]), float(rgb[2])})).norm().item<double>();
    if (d < best_bg_d) best_bg_d = d, best_bg = b;
  }
  a.background = best_bg == e.background && best_bg_d < 40;
  // Colour: each pixel goes to the nearest palette colour or background, within a radius.
  std::vector<at::Tensor> dist;
  for (int c = 0; c < static_cast<int>(demo_colors().size()); ++c) dist.push_back(distance(demo_color_rgb(c)));
  for (int b = 0; b < static_cast<int>(demo_backgrounds().size()); ++b) dist.push_back(distance(demo_background_rgb(b)));
  at::Tensor all = at::stack(dist);  // [colours + backgrounds, T, H, W]
  auto [dmin, idx] = all.min(0);
  const int n_colors = static_cast<int>(demo_colors().size());
  int seen = -1;
  double seen_frac = 0;
  for (int c = 0; c < n_colors; ++c) {
    const double frac = (idx.eq(c) & dmin.lt(70)).to(at::kDouble).mean().item<double>();
    if (frac > seen_frac) seen_frac = frac, seen = c;
  }
  a.seen_color = seen >= 0 ? demo_colors()[seen] : "none";
  a.color = seen == e.color && seen_frac >= 0.01;
  // Shape and motion from the prompted colour's mask.
  at::Tensor mask = (idx.eq(e.color) & dmin.lt(70));
  std::vector<double> fills, ts, xs, ys;
  int votes[3] = {0, 0, 0};
  for (int64_t t = 0; t < T; ++t) {
    at::Tensor m = mask[t];
    const int64_t area = m.sum().item<int64_t>();
    if (area < 8) continue;
    at::Tensor nz = m.nonzero();  // [n, 2] (y, x)
    const double y0 = nz.select(1, 0).min().item<int64_t>(), y1 = nz.select(1, 0).max().item<int64_t>();
    const double x0 = nz.select(1, 1).min().item<int64_t>(), x1 = nz.select(1, 1).max().item<int64_t>();
    fills.push_back(area / ((y1 - y0 + 1) * (x1 - x0 + 1)));
    // Shape from the bounding box's corners: a square fills all four, an upward triangle only the
    // bottom two, a circle none (each corner: at least 2 of its 2 x 2 pixels in the mask).
    auto corner = [&](int64_t y, int64_t x, int64_t dy, int64_t dx) {
      return (m[y][x].item<bool>() + m[y + dy][x].item<bool>() + m[y][x + dx].item<bool>() +
              m[y + dy][x + dx].item<bool>()) >= 2;
    };
    const int64_t iy0 = static_cast<int64_t>(y0), iy1 = static_cast<int64_t>(y1);
    const int64_t ix0 = static_cast<int64_t>(x0), ix1 = static_cast<int64_t>(x1);
    if (iy1 - iy0 >= 3 && ix1 - ix0 >= 3) {
      const int top = corner(iy0, ix0, 1, 1) + corner(iy0, ix1, 1, -1);
      const int bottom = corner(iy1, ix0, -1, 1) + corner(iy1, ix1, -1, -1);
      ++votes[top == 2 && bottom == 2 ? 1 : top == 0 && bottom == 2 ? 2 : 0];
    }
    at::Tensor c = nz.to(at::kDouble).mean(0);
    ts.push_back(t);
    ys.push_back(c[0].item<double>());
    xs.push_back(c[1].item<double>());
  }
  if (fills.size() < static_cast<size_t>(T) / 2) return a;  // the object is missing in most frames
  std::nth_element(fills.begin(), fills.begin() + fills.size() / 2, fills.end());
  a.fill = fills[fills.size() / 2];
  const int shape = static_cast<int>(std::max_element(votes, votes + 3) - votes);
  a.seen_shape = demo_shapes()[shape];
  a.shape = shape == e.shape;
  // Least-squares velocity of the centroid.
  auto slope = [&](const std::vector<double>& y) {
    const double n = ts.size(), mt = std::accumulate(ts.begin(), ts.end(), 0.0) / n,
                 my = std::accumulate(y.begin(), y.end(), 0.0) / n;
    double num = 0, den = 0;
    for (size_t i = 0; i < ts.size(); ++i) num += (ts[i] - mt) * (y[i] - my), den += (ts[i] - mt) * (ts[i] - mt);
    return den > 0 ? num / den : 0.0;
  };
  const double vx = slope(xs), vy = slope(ys);
  a.velocity = std::sqrt(vx * vx + vy * vy);
  int dir = 4, spd = 0;
  if (a.velocity >= 0.2) {
    dir = std::abs(vx) >= std::abs(vy) ? (vx < 0 ? 0 : 1) : (vy < 0 ? 2 : 3);
    spd = a.velocity < 0.85 ? 0 : 1;
  }
  a.seen_direction = demo_directions()[dir];
  a.seen_speed = dir == 4 ? "still" : demo_speeds()[spd];
  a.direction = dir == e.direction;
  a.speed = e.is_still() ? dir == 4 : spd == e.speed;
  return a;
}

}  // namespace ditto
