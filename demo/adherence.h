// The demo's prompt-adherence checker (colour segmentation + centroid tracking): whether a generated
// clip shows the prompted colour, shape, direction and speed.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <nlohmann/json.hpp>
#include <string>

#include "demo/demo_data.h"

namespace ditto {

struct Adherence {
  bool color = false, shape = false, direction = false, speed = false, background = false;
  std::string seen_color, seen_shape, seen_direction, seen_speed, seen_background;  // "x + y" for two objects
  double fill = 0, velocity = 0;  // the first object's: area / bounding box, pixels per frame
  // The checked attributes by name, in this order: color, shape, direction, speed, background.
  static constexpr const char* kAttributes[5] = {"color", "shape", "direction", "speed", "background"};
  std::array<bool, 5> attributes() const { return {color, shape, direction, speed, background}; }
  bool ok() const { return color && shape && direction && speed && background; }
  nlohmann::json json() const;
};

// video [3, T, H, W] in [-1, 1]. Every prompted object is checked (two objects by their colours);
// a prompt without a background accepts any.
Adherence check_adherence(const at::Tensor& video, const DemoAttributes& expected);

}  // namespace ditto
