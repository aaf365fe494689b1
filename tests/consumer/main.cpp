// Builds a random STDiT3 through ditto's family registry, runs one forward and prints what it got.
#include <iostream>

#include "demo/demo.h"
#include "model/family.h"
#include "pipeline/version.h"

int main() {
  ditto::register_demo();
  const auto model = ditto::random_dit("stdit3-tiny", 1, at::TensorOptions().dtype(at::kFloat));
  ditto::DiTInputs in;
  in.x = at::randn({1, 4, 3, 4, 4});
  in.timestep = at::full({1}, 500.0f);
  in.y = at::randn({1, 1, 8, 32});
  in.fps = at::full({1}, 24.0f);
  in.height = in.width = at::full({1}, 32.0f);
  const at::Tensor out = model->forward(in);
  std::cout << "ditto " << ditto::ditto_version() << " family " << model->family() << " units " << model->unit_count()
            << " out " << out.sizes() << " finite " << at::isfinite(out).all().item<bool>() << "\n";
  return 0;
}
