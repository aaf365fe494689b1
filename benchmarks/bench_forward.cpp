// Per-step forward time of STDiT3 (one CFG-batched model call, as a sampling step makes it), with
// the FLOP count of the performance model and the utilisation it implies. Prints one table and
// writes the same rows as JSON.
#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "launcher/common.h"
#include "launcher/device_sync.h"
#include "model/error.h"

using namespace ditto;

int main(int argc, char** argv) {
  MpiEnv mpi(&argc, &argv);
  ModelOptions mo;
  std::string latent, json_path;
  int batch = 2, warmup = 2, iters = 5, tokens = 0;
  double peak_tflops = 0;
  po::options_description desc("options");
  add_model_options(desc, mo);
  // clang-format off
  desc.add_options()
    ("latent", po::value(&latent)->default_value("15x60x106"), "latent T x H x W (15x60x106: 51 frames at 480p)")
    ("batch", po::value(&batch)->default_value(2), "forward batch (2 = one CFG step for one video)")
    ("caption-tokens", po::value(&tokens)->default_value(0), "valid caption tokens (0: the model's maximum)")
    ("warmup", po::value(&warmup)->default_value(2), "untimed forwards first")
    ("iters", po::value(&iters)->default_value(5), "timed forwards")
    ("peak-tflops", po::value(&peak_tflops)->default_value(0), "device peak for the dtype, for utilisation (H100 SXM bf16 dense: 989)")
    ("json", po::value(&json_path), "also write the row as JSON here");
  // clang-format on
  try {
    po::variables_map vm;
    if (!parse_command_line("bench_forward", "time one STDiT3 forward", desc, {argv + 1, argv + argc}, vm)) return 0;
    int t = 0, h = 0, w = 0;
    if (std::sscanf(latent.c_str(), "%dx%dx%d", &t, &h, &w) != 3) fail("--latent must be TxHxW, got '", latent, "'");
    const at::TensorOptions options = resolve_tensor_options(mo, mpi);
    STDiT3 model = load_model(mo, options);
    const STDiT3Config& c = model.config();
    const int L = tokens > 0 ? tokens : c.model_max_length;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
    auto f32 = at::TensorOptions().dtype(at::kFloat);
    ForwardArgs a;
    a.x = at::randn({batch, c.in_channels, t, h, w}, gen, f32).to(options.device());
    a.timestep = at::full({batch}, 500.0f).to(options.device());
    a.y = at::randn({batch, 1, c.model_max_length, c.caption_channels}, gen, f32).to(options.device());
    a.mask = at::zeros({1, c.model_max_length}, at::kLong);
    a.mask.narrow(1, 0, L).fill_(1);
    a.mask = a.mask.to(options.device());
    a.fps = at::full({1}, 24.0f).to(options.device());
    a.height = at::full({1}, 8.0f * h).to(options.device());
    a.width = at::full({1}, 8.0f * w).to(options.device());
    for (int i = 0; i < warmup; ++i) model.forward(a);
    synchronize(options.device());
    std::vector<double> ms;
    for (int i = 0; i < iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      model.forward(a);
      synchronize(options.device());
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    const auto& p = c.patch_size;
    const int64_t gt = (t + p[0] - 1) / p[0], gs = ((h + p[1] - 1) / p[1]) * ((w + p[2] - 1) / p[2]);
    const double flops = stdit3_forward_flops(c, batch, gt, gs, L);
    const double tflops = flops / (median / 1e3) / 1e12;
    const std::string source = model_source(mo);
    const std::string dtype = dtype_name(options.dtype().toScalarType());
    std::printf("| model | latent | batch | tokens/sample | dtype | device | min ms | median ms | TFLOP/fwd | TFLOP/s | MFU |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    char mfu[32] = "-";
    if (peak_tflops > 0) std::snprintf(mfu, sizeof mfu, "%.1f%%", 100 * tflops / peak_tflops);
    std::printf("| %s | %s | %d | %lld | %s | %s | %.2f | %.2f | %.3f | %.2f | %s |\n", source.c_str(), latent.c_str(),
                batch, static_cast<long long>(gt * gs), dtype.c_str(), options.device().str().c_str(), ms.front(),
                median, flops / 1e12, tflops, mfu);
    if (!json_path.empty()) {
      nlohmann::ordered_json j = {{"model", source},     {"latent", latent},        {"batch", batch},
                                  {"tokens_per_sample", gt * gs}, {"caption_tokens", L}, {"dtype", dtype},
                                  {"device", options.device().str()}, {"ms", ms}, {"median_ms", median},
                                  {"flops", flops},      {"tflops_per_s", tflops}, {"peak_tflops", peak_tflops}};
      std::ofstream(json_path) << j.dump(2) << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "bench_forward: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
