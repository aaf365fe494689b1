// `ditto forward`: one model forward pass on inputs saved under the official argument names.
#include <iostream>

#include "launcher/commands.h"
#include "pipeline/model_options.h"
#include "model/error.h"
#include "model/safetensors.h"

namespace ditto {

int run_forward(const std::vector<std::string>& args, const MpiEnv& mpi) {
  ModelOptions mo;
  std::string inputs, out;
  bool dump = false;
  po::options_description desc("options");
  add_model_options(desc, mo);
  // clang-format off
  desc.add_options()
    ("inputs", po::value(&inputs)->required(), "safetensors file with x, timestep, y, fps, height, width and optionally mask")
    ("out", po::value(&out)->required(), "safetensors file to write: `out` [B, Cout, T, H, W]")
    ("dump", po::bool_switch(&dump), "also write t, t_mlp, pos_emb, x_embed and every block's output");
  // clang-format on
  po::variables_map vm;
  if (!parse_command_line("forward", "one model forward pass on saved inputs", desc, args, vm)) return 0;

  if (mpi.size() > 1) fail("ditto forward runs on one rank (it checks one forward pass); launch it without mpirun -np N");
  const at::TensorOptions options = resolve_tensor_options(mo, mpi);
  const std::unique_ptr<DiT> loaded = load_model(mo, options);
  const DiT& model = *loaded;
  SafetensorsFile file(inputs);
  auto get = [&](const char* name, bool required) -> at::Tensor {
    if (!file.contains(name)) {
      if (!required) return {};
      std::string present;
      for (const auto& e : file.entries()) present += (present.empty() ? "" : ", ") + e.name;
      fail("'", inputs, "' has no tensor '", name, "' (it has: ", present, ")");
    }
    return file.tensor(name).clone().to(options.device());
  };
  DiTInputs a;
  a.x = get("x", true);
  a.timestep = get("timestep", true);
  a.y = get("y", true);
  a.mask = get("mask", false);
  a.fps = get("fps", true);
  a.height = get("height", true);
  a.width = get("width", true);
  NamedTensors dumped;
  DiT::Observer observe;
  if (dump) observe = [&](const std::string& name, const at::Tensor& t) { dumped.emplace_back(name, t.cpu()); };
  at::Tensor result = model.forward(a, observe);
  NamedTensors tensors{{"out", result.cpu()}};
  for (auto& d : dumped) tensors.push_back(std::move(d));
  save_safetensors(out, tensors, {{"model", model_source(mo)}, {"dtype", dtype_name(options.dtype().toScalarType())}});
  std::cerr << "ditto forward: wrote " << out << " (out " << result.sizes() << ", " << tensors.size() << " tensors)\n";
  return 0;
}

}  // namespace ditto
