// Per-step cost of a DiT in one run: the whole forward as `ditto forward` makes it (conditioning
// included), and a sampling step as the sampler makes it (the video prepared once; per step the
// timestep conditioning, the CFG-batched forward, guidance and the update), with the FLOP count of
// the performance model, the utilisation it implies against the device's measured matmul peak, and
// the host reads of device memory (syncs) per step.
// Prints one table and writes the same rows as JSON.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "dist/video_sampler.h"
#include "model/cuda_graph.h"
#include "model/error.h"
#include "model/family.h"
#include "model/host_sync.h"
#include "model/layers.h"
#include "pipeline/model_options.h"
#include "pipeline/timing.h"
#include "pipeline/version.h"

using namespace ditto;

int main(int argc, char** argv) {
  MpiEnv mpi(&argc, &argv);
  ModelOptions mo;
  std::string latent, json_path;
  int batch = 2, warmup = 2, iters = 5, tokens = 0;
  bool no_extras = false;
  po::options_description desc("options");
  add_model_options(desc, mo);
  // clang-format off
  desc.add_options()
    ("latent", po::value(&latent), "latent T x H x W (default: the model's default video, e.g. 15x60x106 for Open-Sora's 51 frames at 480p, 21x60x104 for Wan's 81 at 480 x 832)")
    ("batch", po::value(&batch)->default_value(2), "forward batch (2 = one CFG step for one video)")
    ("caption-tokens", po::value(&tokens)->default_value(0), "valid caption tokens (0: the model's maximum)")
    ("warmup", po::value(&warmup)->default_value(2), "untimed forwards (and steps) first")
    ("iters", po::value(&iters)->default_value(5), "timed forwards (and steps)")
    ("no-extras", po::bool_switch(&no_extras), "only the forward and sampling-step rows (no fused/unfused unit stack, no CUDA-graph row)")
    ("json", po::value(&json_path), "also write the rows as JSON here");
  // clang-format on
  try {
    po::variables_map vm;
    if (!parse_command_line("bench_forward", "time one DiT forward and one sampling step", desc, {argv + 1, argv + argc}, vm))
      return 0;
    if (batch != 1 && batch != 2) fail("--batch must be 1 or 2 (a CFG step batches two)");
    if (iters < 1 || warmup < 0) fail("--iters must be >= 1 and --warmup >= 0");
    c10::InferenceMode inference;
    const at::TensorOptions options = resolve_tensor_options(mo, mpi);
    const std::unique_ptr<DiT> model = load_model(mo, options);
    const DiTShape& c = model->shape();
    const ModelFamily& family = family_of(model->outline());
    const SamplingDefaults defaults = family.sampling(model->outline());
    int t = 0, h = 0, w = 0;
    if (latent.empty()) {
      const LatentShape ls = family.vae(model->outline())->latent_shape(defaults.frames, defaults.height, defaults.width);
      t = ls.frames, h = ls.height, w = ls.width;
      latent = std::to_string(t) + "x" + std::to_string(h) + "x" + std::to_string(w);
    } else if (std::sscanf(latent.c_str(), "%dx%dx%d", &t, &h, &w) != 3) {
      fail("--latent must be TxHxW, got '", latent, "'");
    }
    const int L = tokens > 0 ? tokens : c.caption_tokens;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
    auto f32 = at::TensorOptions().dtype(at::kFloat);
    DiTInputs a;
    a.x = at::randn({batch, c.in_channels, t, h, w}, gen, f32).to(options.device());
    a.timestep = at::full({batch}, 500.0f).to(options.device());
    a.y = at::randn({batch, 1, c.caption_tokens, c.caption_channels}, gen, f32).to(options.device());
    a.mask = at::zeros({1, c.caption_tokens}, at::kLong);
    a.mask.narrow(1, 0, L).fill_(1);
    a.mask = a.mask.to(options.device());
    a.fps = at::full({1}, 24.0f).to(options.device());
    a.height = at::full({1}, 8.0f * h).to(options.device());
    a.width = at::full({1}, 8.0f * w).to(options.device());
    auto timed = [&](int n, const std::function<void()>& f) {
      std::vector<double> ms;
      for (int i = 0; i < n; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        synchronize(options.device());
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(ms.begin(), ms.end());
      return ms;
    };
    timed(warmup, [&] { model->forward(a); });
    const std::vector<double> forward_ms = timed(iters, [&] { model->forward(a); });
    // The unit stack alone, as the plain forward runs it (unit_apply: a family's fused gate and add)
    // and as the caching runner does (x + unit_residual): the fusion's before / after, interleaved.
    std::vector<double> fused_ms, unfused_ms;
    if (!no_extras) {
      const std::unique_ptr<DiTContext> ctx = model->prepare(a);
      model->set_timestep(*ctx, a.timestep);
      const at::Tensor x0 = model->embed(layers::patchify(a.x, c.patch), 0, *ctx);
      UnitLoop fused, unfused;
      fused.apply = [&](int u, const at::Tensor& x) { return model->unit_apply(u, x, *ctx, nullptr); };
      unfused.residual = [&](int u, const at::Tensor& x) { return model->unit_residual(u, x, *ctx, nullptr); };
      for (int i = 0; i < iters; ++i) {
        for (auto [loop, out] : {std::pair{&fused, &fused_ms}, std::pair{&unfused, &unfused_ms}}) {
          const auto ms = timed(1, [&] { run_units(model->units(), x0, 0, model->unit_count(), *loop); });
          out->push_back(ms[0]);
        }
      }
      std::sort(fused_ms.begin(), fused_ms.end());
      std::sort(unfused_ms.begin(), unfused_ms.end());
    }

    // Sampling steps: one video of warmup + iters steps; the step times are the sampler's own.
    VideoRequest req;
    req.z0 = a.x.narrow(0, 0, 1).cpu();
    req.caption_y = a.y.narrow(0, 0, 1).cpu();
    req.caption_mask = a.mask.cpu();
    req.height = 8.0f * h;
    req.width = 8.0f * w;
    req.cfg_scale = batch == 2 ? 5.0 : 1.0;
    if (batch == 2) add_benchmark_unconditional(req, *model);
    // The family's sampler on its shifted grid (the update's cost is the sampler's; the model's is the same).
    SamplerOptions so;
    so.name = defaults.sampler;
    so.steps = warmup + iters;
    so.shift = defaults.flow_shift;
    const std::unique_ptr<Sampler> sampler = make_sampler(so);
    req.experts = experts_per_step(model->outline(), sampler->timesteps(), NAN);
    // One video; the step times (after the warm-up steps) and the host reads per step.
    auto sample_steps = [&](std::vector<double>& step_ms) {
      StepTimer timer(options.device());
      std::vector<int64_t> reads;
      timer.start();
      sample_video(*model, *sampler, req, {}, [&](int, const at::Tensor&) {
        timer.mark();
        reads.push_back(host_reads());
      });
      const std::vector<double> step_s = timer.seconds();
      for (size_t i = warmup; i < step_s.size(); ++i) step_ms.push_back(1e3 * step_s[i]);
      std::sort(step_ms.begin(), step_ms.end());
      return iters > 1 ? static_cast<double>(reads.back() - reads[warmup]) / (iters - 1) : 0.0;
    };
    std::vector<double> step_ms, graph_ms;
    const double reads_per_step = sample_steps(step_ms);
    // The same steps as CUDA graphs (captured at the first step, a warm-up step): the before/after pair.
    const bool requested = cuda_graphs_requested();
    set_cuda_graphs(true);
    const std::string graph_off = no_extras ? "--no-extras" : graph_refusal(options.device(), 1, "none");
    const double graph_reads = graph_off.empty() ? sample_steps(graph_ms) : 0.0;
    set_cuda_graphs(requested);

    // The peak MFU is reported against: measured here, on this device, in this dtype.
    const MatmulPeak peak = measure_matmul_peak(options);
    const double peak_tflops = peak.tflops;
    const TokenGrid grid = token_grid(t, h, w, c.patch);
    const double flops = model->forward_flops(grid, batch, L);
    const std::string source = model_source(mo);
    const std::string dtype = dtype_name(options.dtype().toScalarType());
    std::printf("# %s, latent %s, batch %d, %lld tokens/sample, %s on %s, ditto %s (%s)\n", source.c_str(), latent.c_str(),
                batch, static_cast<long long>(grid.tokens()), dtype.c_str(), options.device().str().c_str(),
                ditto_version().c_str(), ditto_git_sha().c_str());
    std::string kernels;
    for (const auto& k : layers::attention_kernels_used()) kernels += (kernels.empty() ? "" : ", ") + k;
    std::printf("# attention: --attention %s; SDPA ran %s\n", layers::attention_backend().c_str(), kernels.c_str());
    std::printf("# MFU against %.3g TFLOP/s: this device's best %lld x %lld %s matmul, measured in this run\n", peak_tflops,
                static_cast<long long>(peak.n), static_cast<long long>(peak.n), dtype.c_str());
    std::printf("| what | min ms | median ms | TFLOP | TFLOP/s | MFU | host syncs/step |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    nlohmann::ordered_json rows = nlohmann::json::array();
    auto row = [&](const char* what, const std::vector<double>& ms, const std::string& reads_cell) {
      const double median = ms[ms.size() / 2], tflops = flops / (median / 1e3) / 1e12;
      char mfu[32];
      std::snprintf(mfu, sizeof mfu, "%.1f%%", 100 * tflops / peak_tflops);
      std::printf("| %s | %.2f | %.2f | %.3f | %.2f | %s | %s |\n", what, ms.front(), median, flops / 1e12, tflops, mfu,
                  reads_cell.c_str());
      rows.push_back({{"what", what}, {"ms", ms}, {"median_ms", median}, {"flops", flops}, {"tflops_per_s", tflops},
                      {"mfu", tflops / peak_tflops}});
    };
    row("forward", forward_ms, "-");
    char cell[32];
    std::snprintf(cell, sizeof cell, "%.2f", reads_per_step);
    row("sampling step", step_ms, cell);
    rows.back()["host_reads_per_step"] = reads_per_step;
    if (graph_off.empty()) {
      std::snprintf(cell, sizeof cell, "%.2f", graph_reads);
      row("sampling step, CUDA graph", graph_ms, cell);
      rows.back()["host_reads_per_step"] = graph_reads;
    }
    if (!no_extras)
      std::printf("# unit stack: fused (unit_apply) %.2f ms / unfused (x + unit_residual) %.2f ms = %.3f (medians)\n",
                  fused_ms[fused_ms.size() / 2], unfused_ms[unfused_ms.size() / 2],
                  fused_ms[fused_ms.size() / 2] / unfused_ms[unfused_ms.size() / 2]);
    if (graph_off.empty())
      std::printf("# CUDA graph: step / eager step = %.3f (medians)\n",
                  graph_ms[graph_ms.size() / 2] / step_ms[step_ms.size() / 2]);
    else
      std::printf("# CUDA graph row: n/a (%s)\n", graph_off.c_str());
    if (!json_path.empty()) {
      nlohmann::ordered_json j = {{"model", source}, {"family", model->family()}, {"latent", latent}, {"batch", batch},
                                  {"tokens_per_sample", grid.tokens()}, {"caption_tokens", L}, {"dtype", dtype},
                                  {"device", options.device().str()}, {"peak_tflops_measured", peak_tflops},
                                  {"peak_matmul_n", peak.n},
                                  {"attention", {{"requested", layers::attention_backend()}, {"kernels_used", layers::attention_kernels_used()}}},
                                  {"cuda_graph", graph_off.empty() ? "measured" : "n/a: " + graph_off},
                                  {"unit_stack_ms", {{"fused", fused_ms}, {"unfused", unfused_ms}}},
                                  {"ditto_version", ditto_version()}, {"ditto_git_sha", ditto_git_sha()}, {"rows", rows}};
      std::ofstream(json_path) << j.dump(2) << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "bench_forward: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
