// The demo model's training data: procedurally generated clips of one shape of one colour moving
// in a direction at a speed over a plain background, each with the prompt that describes it.
// Deterministic from a seed.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace ditto {

struct DemoAttributes {
  int color = 0;       // index into demo_colors()
  int shape = 0;       // index into demo_shapes()
  int direction = 0;   // index into demo_directions(); "still" has no speed
  int speed = 0;       // index into demo_speeds() (unused when still)
  int background = 0;  // index into demo_backgrounds()
  bool operator==(const DemoAttributes& o) const {
    return color == o.color && shape == o.shape && direction == o.direction && background == o.background &&
           (is_still() || speed == o.speed);
  }
  bool is_still() const;
};

const std::vector<std::string>& demo_colors();       // red green blue yellow white
const std::vector<std::string>& demo_shapes();       // circle square triangle
const std::vector<std::string>& demo_directions();   // left right up down still
const std::vector<std::string>& demo_speeds();       // slow fast
const std::vector<std::string>& demo_backgrounds();  // black gray
std::array<uint8_t, 3> demo_color_rgb(int color);
std::array<uint8_t, 3> demo_background_rgb(int background);
double demo_speed_pixels(int speed);  // pixels per frame

struct DemoClipSettings {
  int frames = 16, size = 32;
  double radius = 5;  // half the object's extent in pixels
};

// "a red square moving left fast on a gray background" / "a red square still on a black background"
std::string demo_prompt(const DemoAttributes& a);
// The inverse of demo_prompt; throws an Error naming the first word it does not understand.
DemoAttributes parse_demo_prompt(const std::string& prompt);
// Every attribute combination, in a fixed order (270 of them).
std::vector<DemoAttributes> all_demo_attributes();

// A clip [3, frames, size, size] in [-1, 1]. `seed` picks the start position (chosen so the
// object stays inside the frame; it bounces off an edge if it would leave).
at::Tensor render_demo_clip(const DemoAttributes& a, uint64_t seed, const DemoClipSettings& s = {});

}  // namespace ditto
