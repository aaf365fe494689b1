// Procedural clips and prompts for the demo model (see demo_data.h).
#include "model/demo_data.h"

#include <cmath>
#include <random>
#include <sstream>

#include "model/error.h"

namespace ditto {

const std::vector<std::string>& demo_colors() {
  static const std::vector<std::string> v = {"red", "green", "blue", "yellow", "white"};
  return v;
}
const std::vector<std::string>& demo_shapes() {
  static const std::vector<std::string> v = {"circle", "square", "triangle"};
  return v;
}
const std::vector<std::string>& demo_directions() {
  static const std::vector<std::string> v = {"left", "right", "up", "down", "still"};
  return v;
}
const std::vector<std::string>& demo_speeds() {
  static const std::vector<std::string> v = {"slow", "fast"};
  return v;
}
const std::vector<std::string>& demo_backgrounds() {
  static const std::vector<std::string> v = {"black", "gray"};
  return v;
}

bool DemoAttributes::is_still() const { return direction == 4; }

std::array<uint8_t, 3> demo_color_rgb(int c) {
  static const std::array<uint8_t, 3> rgb[] = {{230, 40, 40}, {40, 200, 60}, {50, 90, 240}, {235, 215, 40}, {245, 245, 245}};
  return rgb[c];
}
std::array<uint8_t, 3> demo_background_rgb(int b) {
  static const std::array<uint8_t, 3> rgb[] = {{10, 10, 10}, {110, 110, 110}};
  return rgb[b];
}
double demo_speed_pixels(int speed) { return speed == 0 ? 0.5 : 1.25; }

std::string demo_prompt(const DemoAttributes& a) {
  std::string s = "a " + demo_colors()[a.color] + " " + demo_shapes()[a.shape];
  s += a.is_still() ? " still" : " moving " + demo_directions()[a.direction] + " " + demo_speeds()[a.speed];
  return s + " on a " + demo_backgrounds()[a.background] + " background";
}

DemoAttributes parse_demo_prompt(const std::string& prompt) {
  std::istringstream in(prompt);
  std::vector<std::string> w;
  for (std::string x; in >> x;) w.push_back(x);
  auto index = [&](const std::vector<std::string>& list, size_t i, const char* what) {
    if (i >= w.size()) fail("prompt '", prompt, "' ends before its ", what);
    for (size_t k = 0; k < list.size(); ++k)
      if (list[k] == w[i]) return static_cast<int>(k);
    fail("prompt '", prompt, "': '", w[i], "' is not a ", what);
  };
  auto expect = [&](size_t i, const char* word) {
    if (i >= w.size() || w[i] != word) fail("prompt '", prompt, "': expected '", word, "' at word ", i + 1);
  };
  DemoAttributes a;
  expect(0, "a");
  a.color = index(demo_colors(), 1, "colour");
  a.shape = index(demo_shapes(), 2, "shape");
  size_t i = 3;
  if (i < w.size() && w[i] == "still") {
    a.direction = 4;
    i += 1;
  } else {
    expect(i, "moving");
    a.direction = index(demo_directions(), i + 1, "direction");
    if (a.direction == 4) fail("prompt '", prompt, "': say 'still', not 'moving still'");
    a.speed = index(demo_speeds(), i + 2, "speed");
    i += 3;
  }
  expect(i, "on");
  expect(i + 1, "a");
  a.background = index(demo_backgrounds(), i + 2, "background");
  expect(i + 3, "background");
  if (w.size() != i + 4) fail("prompt '", prompt, "': unexpected words after 'background'");
  return a;
}

std::vector<DemoAttributes> all_demo_attributes() {
  std::vector<DemoAttributes> out;
  for (int c = 0; c < 5; ++c)
    for (int s = 0; s < 3; ++s)
      for (int d = 0; d < 5; ++d)
        for (int v = 0; v < (d == 4 ? 1 : 2); ++v)
          for (int b = 0; b < 2; ++b) out.push_back({c, s, d, v, b});
  return out;
}

namespace {

// Coverage test of a pixel centre (px, py) for a shape centred at (cx, cy).
bool inside(int shape, double px, double py, double cx, double cy, double r) {
  const double dx = px - cx, dy = py - cy;
  switch (shape) {
    case 0: return dx * dx + dy * dy <= r * r;
    case 1: return std::abs(dx) <= r && std::abs(dy) <= r;
    default: {  // upward triangle with its base at cy + r and apex at cy - r
      if (dy < -r || dy > r) return false;
      const double half_width = r * (dy + r) / (2 * r);
      return std::abs(dx) <= half_width;
    }
  }
}

}  // namespace

at::Tensor render_demo_clip(const DemoAttributes& a, uint64_t seed, const DemoClipSettings& s) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  const double r = s.radius, speed = a.is_still() ? 0 : demo_speed_pixels(a.speed);
  const double travel = speed * (s.frames - 1);
  double vx = 0, vy = 0;
  if (a.direction == 0) vx = -speed;
  if (a.direction == 1) vx = speed;
  if (a.direction == 2) vy = -speed;
  if (a.direction == 3) vy = speed;
  // Start so that the whole path fits when possible: behind the direction of motion.
  auto start = [&](double v) {
    const double lo = r + 1, hi = s.size - r - 1;
    if (v > 0) return lo + u(rng) * std::max(0.0, hi - lo - travel);
    if (v < 0) return hi - u(rng) * std::max(0.0, hi - lo - travel);
    return lo + u(rng) * (hi - lo);
  };
  double cx = start(vx), cy = start(vy);
  const auto fg = demo_color_rgb(a.color), bg = demo_background_rgb(a.background);
  at::Tensor clip = at::empty({3, s.frames, s.size, s.size}, at::kFloat);
  auto acc = clip.accessor<float, 4>();
  for (int t = 0; t < s.frames; ++t) {
    for (int y = 0; y < s.size; ++y)
      for (int x = 0; x < s.size; ++x) {
        int hits = 0;  // 2 x 2 supersampling for smooth edges
        for (int sy = 0; sy < 2; ++sy)
          for (int sx = 0; sx < 2; ++sx) hits += inside(a.shape, x + 0.25 + 0.5 * sx, y + 0.25 + 0.5 * sy, cx, cy, r);
        const double cover = hits / 4.0;
        for (int ch = 0; ch < 3; ++ch)
          acc[ch][t][y][x] = static_cast<float>((cover * fg[ch] + (1 - cover) * bg[ch]) / 127.5 - 1.0);
      }
    // Move, bouncing off the edges.
    cx += vx;
    cy += vy;
    if (cx < r || cx > s.size - r) {
      vx = -vx;
      cx += 2 * vx;
    }
    if (cy < r || cy > s.size - r) {
      vy = -vy;
      cy += 2 * vy;
    }
  }
  return clip;
}

}  // namespace ditto
