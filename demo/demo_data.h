// The demo model's training data: procedurally generated clips of one or two shapes, each of one
// colour moving in a direction at a speed, over a plain or textured background, each clip with the
// prompt that describes it. Deterministic from a seed.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ditto {

struct DemoObject {
  int color = 0;      // index into demo_colors()
  int shape = 0;      // index into demo_shapes()
  int direction = 0;  // index into demo_directions(); "still" has no speed
  int speed = 0;      // index into demo_speeds() (unused when still)
  bool is_still() const { return direction == 4; }
  bool operator==(const DemoObject& o) const {
    return color == o.color && shape == o.shape && direction == o.direction && (is_still() || speed == o.speed);
  }
};

// A scene: the first object (the base), the background and an optional second object of another colour.
struct DemoAttributes : DemoObject {
  int background = 0;  // index into demo_backgrounds(); -1: the prompt names none (any fits)
  std::optional<DemoObject> second;
  std::vector<DemoObject> objects() const;
  bool operator==(const DemoAttributes& o) const {
    return DemoObject::operator==(o) && background == o.background && second == o.second;
  }
};

const std::vector<std::string>& demo_colors();       // red green blue yellow white
const std::vector<std::string>& demo_shapes();       // circle square triangle
const std::vector<std::string>& demo_directions();   // left right up down still
const std::vector<std::string>& demo_speeds();       // slow fast
const std::vector<std::string>& demo_backgrounds();  // black gray checkered striped
std::array<uint8_t, 3> demo_color_rgb(int color);
// The background's colour at pixel (x, y) (textured backgrounds are fixed patterns).
std::array<uint8_t, 3> demo_background_rgb(int background, int x, int y);
// Every colour a background pixel can have.
std::vector<std::array<uint8_t, 3>> demo_background_palette();
double demo_speed_pixels(int speed);  // pixels per frame
// Every word a demo prompt can use.
std::vector<std::string> demo_vocabulary();

struct DemoClipSettings {
  int frames = 16, size = 32;
  double radius = 5;  // half an object's extent in pixels
};

// "a red square moving left fast on a gray background", "a red square still and a blue circle
// moving up slow on a striped background", "a red circle moving right slow" (no background named).
std::string demo_prompt(const DemoAttributes& a);
// The inverse of demo_prompt; throws an Error naming the first word it does not understand.
DemoAttributes parse_demo_prompt(const std::string& prompt);
// Every one-object scene with a named background, in a fixed order (540 of them).
std::vector<DemoAttributes> all_demo_attributes();
// The fixed prompt sets of the tools, from one enumeration of all_demo_attributes(): the first 64
// evaluation prompts (bench_cache) are none of the first 32 profiling (ditto profile) or 16
// calibration (ditto calibrate) prompts, so caches are judged on prompts they were not fitted to.
enum class DemoPromptSet { Profile, Calibration, Evaluation };
DemoAttributes demo_prompt_set(DemoPromptSet set, int k);
// The training distribution: a one-object scene, or with probability `two_objects` a two-object
// scene (two different colours), uniformly over the attributes.
DemoAttributes random_demo_attributes(uint64_t seed, double two_objects);
// The same scene with every moving object going the opposite way (left <-> right, up <-> down);
// still objects stay still.
DemoAttributes reversed_motion(DemoAttributes a);

// A clip [3, frames, size, size] in [-1, 1]. Layout: one object's path is centred in the frame;
// two objects travel in lanes a third of the frame apart. `seed` jitters each start position by a
// few pixels; an object that reaches an edge bounces off it.
at::Tensor render_demo_clip(const DemoAttributes& a, uint64_t seed, const DemoClipSettings& s = {});
// Frame `frame` of that clip alone, [3, 1, size, size]: equal to render_demo_clip(...).narrow(1, frame, 1)
// at a sixteenth of the cost (the training's image steps).
at::Tensor render_demo_frame(const DemoAttributes& a, uint64_t seed, int frame, const DemoClipSettings& s = {});

}  // namespace ditto
