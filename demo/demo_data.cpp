// Procedural clips and prompts for the demo model (see demo_data.h).
#include "demo/demo_data.h"

#include <algorithm>
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
  static const std::vector<std::string> v = {"black", "gray", "checkered", "striped"};
  return v;
}

std::vector<DemoObject> DemoAttributes::objects() const {
  std::vector<DemoObject> o = {static_cast<const DemoObject&>(*this)};
  if (second) o.push_back(*second);
  return o;
}

std::array<uint8_t, 3> demo_color_rgb(int c) {
  static const std::array<uint8_t, 3> rgb[] = {{230, 40, 40}, {40, 200, 60}, {50, 90, 240}, {235, 215, 40}, {245, 245, 245}};
  return rgb[c];
}

namespace {
const std::array<uint8_t, 3> kBlack = {10, 10, 10}, kGray = {110, 110, 110}, kCheckDark = {30, 30, 30},
                             kCheckLight = {90, 90, 90}, kStripeDark = {45, 45, 45}, kStripeLight = {150, 150, 150};
}

std::array<uint8_t, 3> demo_background_rgb(int b, int x, int y) {
  switch (b) {
    case 0: return kBlack;
    case 1: return kGray;
    case 2: return ((x / 4 + y / 4) % 2) ? kCheckLight : kCheckDark;  // 4 x 4 pixel cells
    case 3: return (y / 2) % 2 ? kStripeLight : kStripeDark;          // 2-pixel horizontal stripes
    default: fail("demo background index ", b, " out of range");
  }
}
std::vector<std::array<uint8_t, 3>> demo_background_palette() {
  return {kBlack, kGray, kCheckDark, kCheckLight, kStripeDark, kStripeLight};
}

double demo_speed_pixels(int speed) { return speed == 0 ? 0.5 : 1.25; }

std::vector<std::string> demo_vocabulary() {
  std::vector<std::string> v = {"a", "moving", "still", "and", "on", "background"};
  for (const auto* list : {&demo_colors(), &demo_shapes(), &demo_directions(), &demo_speeds(), &demo_backgrounds()})
    for (const auto& w : *list)
      if (std::find(v.begin(), v.end(), w) == v.end()) v.push_back(w);
  return v;
}

namespace {
std::string object_phrase(const DemoObject& o) {
  std::string s = "a " + demo_colors()[o.color] + " " + demo_shapes()[o.shape];
  return s + (o.is_still() ? " still" : " moving " + demo_directions()[o.direction] + " " + demo_speeds()[o.speed]);
}
}  // namespace

std::string demo_prompt(const DemoAttributes& a) {
  std::string s = object_phrase(a);
  if (a.second) s += " and " + object_phrase(*a.second);
  if (a.background >= 0) s += " on a " + demo_backgrounds()[a.background] + " background";
  return s;
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
  size_t i = 0;
  auto object = [&] {
    DemoObject o;
    expect(i, "a");
    o.color = index(demo_colors(), i + 1, "colour");
    o.shape = index(demo_shapes(), i + 2, "shape");
    i += 3;
    if (i < w.size() && w[i] == "still") {
      o.direction = 4;
      i += 1;
    } else {
      expect(i, "moving");
      o.direction = index(demo_directions(), i + 1, "direction");
      if (o.direction == 4) fail("prompt '", prompt, "': say 'still', not 'moving still'");
      o.speed = index(demo_speeds(), i + 2, "speed");
      i += 3;
    }
    return o;
  };
  DemoAttributes a;
  static_cast<DemoObject&>(a) = object();
  if (i < w.size() && w[i] == "and") {
    ++i;
    a.second = object();
    if (a.second->color == a.color) fail("prompt '", prompt, "': the two objects must have different colours");
  }
  a.background = -1;
  if (i < w.size()) {
    expect(i, "on");
    expect(i + 1, "a");
    a.background = index(demo_backgrounds(), i + 2, "background");
    expect(i + 3, "background");
    if (w.size() != i + 4) fail("prompt '", prompt, "': unexpected words after 'background'");
  }
  return a;
}

namespace {
std::vector<DemoObject> all_objects() {
  std::vector<DemoObject> out;
  for (int c = 0; c < 5; ++c)
    for (int s = 0; s < 3; ++s)
      for (int d = 0; d < 5; ++d)
        for (int v = 0; v < (d == 4 ? 1 : 2); ++v) out.push_back({c, s, d, v});
  return out;
}
}  // namespace

std::vector<DemoAttributes> all_demo_attributes() {
  std::vector<DemoAttributes> out;
  for (const DemoObject& o : all_objects())
    for (int b = 0; b < static_cast<int>(demo_backgrounds().size()); ++b) {
      DemoAttributes a;
      static_cast<DemoObject&>(a) = o;
      a.background = b;
      out.push_back(a);
    }
  return out;
}

DemoAttributes demo_prompt_set(DemoPromptSet set, int k) {
  static const std::vector<DemoAttributes> all = all_demo_attributes();
  const size_t i = static_cast<size_t>(k) * (set == DemoPromptSet::Calibration ? 89 : 97) +
                   (set == DemoPromptSet::Calibration ? 13 : set == DemoPromptSet::Evaluation ? 21 : 0);
  return all[i % all.size()];
}

DemoAttributes reversed_motion(DemoAttributes a) {
  auto reverse = [](DemoObject& o) {
    if (!o.is_still()) o.direction ^= 1;  // demo_directions(): left right up down still
  };
  reverse(a);
  if (a.second) reverse(*a.second);
  return a;
}

DemoAttributes random_demo_attributes(uint64_t seed, double two_objects) {
  static const std::vector<DemoObject> objects = all_objects();
  std::mt19937_64 rng(seed);
  DemoAttributes a;
  static_cast<DemoObject&>(a) = objects[rng() % objects.size()];
  a.background = static_cast<int>(rng() % demo_backgrounds().size());
  if (std::uniform_real_distribution<double>(0, 1)(rng) < two_objects) {
    DemoObject o;
    do o = objects[rng() % objects.size()];
    while (o.color == a.color);
    a.second = o;
  }
  return a;
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

// Frames [first, first + count) of a clip; the paths are followed from frame 0 either way.
at::Tensor render_frames(const DemoAttributes& a, uint64_t seed, const DemoClipSettings& s, int first, int count) {
  if (a.background < 0 || a.background >= static_cast<int>(demo_backgrounds().size()))
    fail("render_demo_clip: the scene needs a background");
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> jitter(-1, 1);
  const std::vector<DemoObject> objects = a.objects();
  const double r = s.radius, centre = s.size / 2.0;
  struct Path {
    double x, y, vx, vy;
  };
  std::vector<Path> paths;
  for (size_t k = 0; k < objects.size(); ++k) {
    const DemoObject& o = objects[k];
    const double speed = o.is_still() ? 0 : demo_speed_pixels(o.speed);
    Path p{0, 0, 0, 0};
    if (o.direction == 0) p.vx = -speed;
    if (o.direction == 1) p.vx = speed;
    if (o.direction == 2) p.vy = -speed;
    if (o.direction == 3) p.vy = speed;
    // Across the motion: the frame's centre line for one object, lanes at +-0.22 size for two.
    const double lane = objects.size() == 1 ? centre : centre + (k == 0 ? -0.22 : 0.22) * s.size;
    const double spread = objects.size() == 1 ? 3 : 2;
    const bool horizontal = o.direction <= 1;
    // Along the motion: a path centred in the frame (a still object sits at the centre).
    const double along = centre - (p.vx + p.vy) * (s.frames - 1) / 2 + 2 * jitter(rng);
    const double across = lane + spread * jitter(rng);
    p.x = horizontal ? along : across;
    p.y = horizontal ? across : along;
    paths.push_back(p);
  }
  at::Tensor clip = at::empty({3, count, s.size, s.size}, at::kFloat);
  auto acc = clip.accessor<float, 4>();
  for (int t = 0; t < first + count; ++t) {
    // Frames before `first` are not drawn, only moved through.
    for (int y = 0; t >= first && y < s.size; ++y)
      for (int x = 0; x < s.size; ++x) {
        const auto bg = demo_background_rgb(a.background, x, y);
        double rgb[3] = {double(bg[0]), double(bg[1]), double(bg[2])};
        for (size_t k = 0; k < objects.size(); ++k) {  // the second object is drawn over the first
          int hits = 0;                                 // 2 x 2 supersampling for smooth edges
          for (int sy = 0; sy < 2; ++sy)
            for (int sx = 0; sx < 2; ++sx)
              hits += inside(objects[k].shape, x + 0.25 + 0.5 * sx, y + 0.25 + 0.5 * sy, paths[k].x, paths[k].y, r);
          const double cover = hits / 4.0;
          const auto fg = demo_color_rgb(objects[k].color);
          for (int ch = 0; ch < 3; ++ch) rgb[ch] = cover * fg[ch] + (1 - cover) * rgb[ch];
        }
        for (int ch = 0; ch < 3; ++ch) acc[ch][t - first][y][x] = static_cast<float>(rgb[ch] / 127.5 - 1.0);
      }
    // Move, bouncing off the edges.
    for (Path& p : paths) {
      p.x += p.vx;
      p.y += p.vy;
      if (p.x < r || p.x > s.size - r) {
        p.vx = -p.vx;
        p.x += 2 * p.vx;
      }
      if (p.y < r || p.y > s.size - r) {
        p.vy = -p.vy;
        p.y += 2 * p.vy;
      }
    }
  }
  return clip;
}

}  // namespace

at::Tensor render_demo_clip(const DemoAttributes& a, uint64_t seed, const DemoClipSettings& s) {
  return render_frames(a, seed, s, 0, s.frames);
}

at::Tensor render_demo_frame(const DemoAttributes& a, uint64_t seed, int frame, const DemoClipSettings& s) {
  if (frame < 0 || frame >= s.frames) fail("render_demo_frame: frame ", frame, " is outside 0..", s.frames - 1);
  return render_frames(a, seed, s, frame, 1);
}

}  // namespace ditto
