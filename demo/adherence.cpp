// The demo's prompt-adherence checker (see adherence.h).
#include "demo/adherence.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "model/error.h"

namespace ditto {

nlohmann::json Adherence::json() const {
  nlohmann::json j = {{"ok", ok()}};
  const auto each = attributes();
  for (int k = 0; k < 5; ++k) j[kAttributes[k]] = each[k];
  j.update({{"seen_color", seen_color}, {"seen_shape", seen_shape}, {"seen_direction", seen_direction},
            {"seen_speed", seen_speed}, {"seen_background", seen_background}, {"fill", fill}, {"velocity", velocity}});
  return j;
}

namespace {

std::string join(const std::string& a, const std::string& b) { return a.empty() ? b : a + " + " + b; }

struct ObjectReading {
  bool found = false;
  int shape = 0, direction = 4, speed = 0;
  double fill = 0, velocity = 0;
};

// Shape and motion of the object shown by `mask` [T, H, W] (bool).
ObjectReading read_object(const at::Tensor& mask) {
  const int64_t T = mask.size(0);
  ObjectReading r;
  std::vector<double> fills, ts, xs, ys;
  int votes[3] = {0, 0, 0};
  for (int64_t t = 0; t < T; ++t) {
    at::Tensor m = mask[t];
    const int64_t area = m.sum().item<int64_t>();
    if (area < 8) continue;
    at::Tensor nz = m.nonzero();  // [n, 2] (y, x)
    const int64_t y0 = nz.select(1, 0).min().item<int64_t>(), y1 = nz.select(1, 0).max().item<int64_t>();
    const int64_t x0 = nz.select(1, 1).min().item<int64_t>(), x1 = nz.select(1, 1).max().item<int64_t>();
    fills.push_back(double(area) / ((y1 - y0 + 1) * (x1 - x0 + 1)));
    // Shape from the bounding box's corners: a square fills all four, an upward triangle only the
    // bottom two, a circle none (each corner: at least 2 of its 2 x 2 pixels in the mask).
    const at::Tensor mc = m.contiguous();
    const bool* mp = mc.data_ptr<bool>();
    const int64_t W = m.size(1);
    auto corner = [&](int64_t y, int64_t x, int64_t dy, int64_t dx) {
      return (mp[y * W + x] + mp[(y + dy) * W + x] + mp[y * W + x + dx] + mp[(y + dy) * W + x + dx]) >= 2;
    };
    if (y1 - y0 >= 3 && x1 - x0 >= 3) {
      const int top = corner(y0, x0, 1, 1) + corner(y0, x1, 1, -1);
      const int bottom = corner(y1, x0, -1, 1) + corner(y1, x1, -1, -1);
      ++votes[top == 2 && bottom == 2 ? 1 : top == 0 && bottom == 2 ? 2 : 0];
    }
    at::Tensor c = nz.to(at::kDouble).mean(0);
    ts.push_back(t);
    ys.push_back(c[0].item<double>());
    xs.push_back(c[1].item<double>());
  }
  if (fills.size() < static_cast<size_t>(T) / 2) return r;  // the object is missing in most frames
  r.found = true;
  std::nth_element(fills.begin(), fills.begin() + fills.size() / 2, fills.end());
  r.fill = fills[fills.size() / 2];
  r.shape = static_cast<int>(std::max_element(votes, votes + 3) - votes);
  // Least-squares velocity of the centroid.
  auto slope = [&](const std::vector<double>& y) {
    const double n = ts.size(), mt = std::accumulate(ts.begin(), ts.end(), 0.0) / n,
                 my = std::accumulate(y.begin(), y.end(), 0.0) / n;
    double num = 0, den = 0;
    for (size_t i = 0; i < ts.size(); ++i) num += (ts[i] - mt) * (y[i] - my), den += (ts[i] - mt) * (ts[i] - mt);
    return den > 0 ? num / den : 0.0;
  };
  const double vx = slope(xs), vy = slope(ys);
  r.velocity = std::sqrt(vx * vx + vy * vy);
  if (r.velocity >= 0.2) {
    r.direction = std::abs(vx) >= std::abs(vy) ? (vx < 0 ? 0 : 1) : (vy < 0 ? 2 : 3);
    r.speed = r.velocity < 0.85 ? 0 : 1;
  }
  return r;
}

at::Tensor rgb_tensor(const std::array<uint8_t, 3>& c) {
  return at::tensor({static_cast<float>(c[0]), static_cast<float>(c[1]), static_cast<float>(c[2])});
}

}  // namespace

Adherence check_adherence(const at::Tensor& video, const DemoAttributes& e) {
  at::Tensor v = ((video.to(at::kFloat).cpu().clamp(-1, 1) + 1) * 127.5);  // [3, T, H, W] in 0..255
  if (v.dim() != 4 || v.size(0) != 3) fail("adherence: expected an RGB video [3, T, H, W]");
  const int64_t H = v.size(2), W = v.size(3);
  at::Tensor px = v.permute({1, 2, 3, 0});  // [T, H, W, 3]
  Adherence a;
  // Each pixel goes to the nearest palette colour (objects, then every background colour), within a radius.
  const int n_colors = static_cast<int>(demo_colors().size());
  std::vector<at::Tensor> dist;
  for (int c = 0; c < n_colors; ++c) dist.push_back((px - rgb_tensor(demo_color_rgb(c))).pow(2).sum(-1).sqrt());
  for (const auto& c : demo_background_palette()) dist.push_back((px - rgb_tensor(c)).pow(2).sum(-1).sqrt());
  auto [dmin, idx] = at::stack(dist).min(0);  // [T, H, W]
  // Background: the background image nearest (mean colour distance) on the pixels that are not objects.
  at::Tensor bg_pixels = idx.ge(n_colors);
  const double n_bg = bg_pixels.sum().item<double>();
  int best_bg = -1;
  double best_bg_d = 1e9;
  for (int b = 0; n_bg > 0 && b < static_cast<int>(demo_backgrounds().size()); ++b) {
    at::Tensor image = at::empty({H, W, 3});
    float* p = image.data_ptr<float>();
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x)
        for (int ch = 0; ch < 3; ++ch) *p++ = demo_background_rgb(b, x, y)[ch];
    const double d = ((px - image).pow(2).sum(-1).sqrt() * bg_pixels).sum().item<double>() / n_bg;
    if (d < best_bg_d) best_bg_d = d, best_bg = b;
  }
  a.seen_background = best_bg >= 0 && best_bg_d < 40 ? demo_backgrounds()[best_bg] : "none";
  a.background = best_bg_d < 40 && (e.background < 0 || best_bg == e.background);
  // Colours: the prompted objects' colours must be the most frequent object colours.
  const std::vector<DemoObject> expected = e.objects();
  std::vector<std::pair<double, int>> freq;
  for (int c = 0; c < n_colors; ++c) freq.push_back({(idx.eq(c) & dmin.lt(70)).to(at::kDouble).mean().item<double>(), c});
  std::sort(freq.rbegin(), freq.rend());
  a.color = true;
  for (size_t k = 0; k < expected.size(); ++k) {
    const bool shown = freq[k].first >= 0.005;
    a.seen_color = join(a.seen_color, shown ? demo_colors()[freq[k].second] : "none");
    a.color = a.color && shown &&
              std::any_of(expected.begin(), expected.end(), [&](const DemoObject& o) { return o.color == freq[k].second; });
  }
  // Shape and motion of each prompted object from its colour's mask.
  a.shape = a.direction = a.speed = true;
  for (size_t k = 0; k < expected.size(); ++k) {
    const DemoObject& o = expected[k];
    const ObjectReading r = read_object(idx.eq(o.color) & dmin.lt(70));
    a.shape = a.shape && r.found && r.shape == o.shape;
    a.direction = a.direction && r.found && r.direction == o.direction;
    a.speed = a.speed && r.found && (o.is_still() ? r.direction == 4 : r.direction != 4 && r.speed == o.speed);
    a.seen_shape = join(a.seen_shape, r.found ? demo_shapes()[r.shape] : "none");
    a.seen_direction = join(a.seen_direction, r.found ? demo_directions()[r.direction] : "none");
    a.seen_speed = join(a.seen_speed, !r.found ? "none" : r.direction == 4 ? "still" : demo_speeds()[r.speed]);
    if (k == 0) a.fill = r.fill, a.velocity = r.velocity;
  }
  return a;
}

}  // namespace ditto
