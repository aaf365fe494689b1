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
    ("inputs", po::value(&inputs)->required(), "safetensors file with the model's inputs: x (or hidden_states), timestep, y (or encoder_hidden_states), and what the family reads besides (Open-Sora: fps, height, width, optionally mask)")
    ("out", po::value(&out)->required(), "safetensors file to write: `out` [B, Cout, T, H, W]")
    ("dump", po::bool_switch(&dump), "also write the conditioning (Open-Sora: t, t_mlp, pos_emb; Wan: temb, timestep_proj, encoder_hidden_states), x_embed and every block's output");
  // clang-format on
  po::variables_map vm;
  if (!parse_command_line("forward", "one model forward pass on saved inputs", desc, args, vm)) return 0;

  if (mpi.size() > 1) fail("ditto forward runs on one rank (it checks one forward pass); launch it without mpirun -np N");
  const at::TensorOptions options = resolve_tensor_options(mo, mpi);
  const std::unique_ptr<DiT> loaded = load_model(mo, options);
  const DiT& model = *loaded;
  SafetensorsFile file(inputs);
  // Official names (Open-Sora: x, y) or diffusers' (hidden_states, encoder_hidden_states).
  auto get = [&](std::initializer_list<const char*> names, bool required) -> at::Tensor {
    for (const char* name : names)
      if (file.contains(name)) return file.tensor(name).clone().to(options.device());
    if (!required) return {};
    std::string present, wanted;
    for (const auto& e : file.entries()) present += (present.empty() ? "" : ", ") + e.name;
    for (const char* name : names) wanted += (wanted.empty() ? "'" : "' or '") + std::string(name);
    fail("'", inputs, "' has no tensor ", wanted, "' (it has: ", present, ")");
  };
  DiTInputs a;
  a.x = get({"x", "hidden_states"}, true);
  a.timestep = get({"timestep"}, true);
  a.y = get({"y", "encoder_hidden_states"}, true);
  a.mask = get({"mask"}, false);
  a.fps = get({"fps"}, false);
  a.height = get({"height"}, false);
  a.width = get({"width"}, false);
  NamedTensors dumped;
  DiT::Observer observe;
  if (dump) observe = [&](const std::string& name, const at::Tensor& t) { dumped.emplace_back(name, t.cpu()); };
  at::Tensor result = model.forward(a, observe);
  if (!at::isfinite(result).all().item<bool>())
    fail("the output has NaN or infinite values (the model's weights or the inputs hold them); nothing written");
  NamedTensors tensors{{"out", result.cpu()}};
  for (auto& d : dumped) tensors.push_back(std::move(d));
  save_safetensors(out, tensors, {{"model", model_source(mo)}, {"dtype", dtype_name(options.dtype().toScalarType())}});
  std::cerr << "ditto forward: wrote " << out << " (out " << result.sizes() << ", " << tensors.size() << " tensors)\n";
  return 0;
}

}  // namespace ditto
