// Sequence-parallel scaling in one invocation: launched with N ranks, it samples the same video at
// P = 1, 2, 4, ... N (the first P ranks take part, the rest wait), and prints per P the time per
// step, the time inside communication, the bytes moved per step, speedup and efficiency against
// P = 1. Writes the same rows as JSON.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dist/mpi_communicator.h"
#include "dist/nccl_communicator.h"
#include "dist/video_sampler.h"
#include "pipeline/model_options.h"
#include "pipeline/version.h"
#include "pipeline/timing.h"
#include "model/error.h"

using namespace ditto;

int main(int argc, char** argv) {
  MpiEnv mpi(&argc, &argv);
  ModelOptions mo;
  int frames = 0, height = 0, width = 0, steps = 0;
  double cfg_scale = 0;
  std::string backend, json_path;
  po::options_description desc("options");
  add_model_options(desc, mo);
  // clang-format off
  desc.add_options()
    ("frames", po::value(&frames)->default_value(0), "frames (pixels' time; 0: the model's default)")
    ("height", po::value(&height)->default_value(0), "height in pixels (0: the model's default)")
    ("width", po::value(&width)->default_value(0), "width in pixels (0: the model's default)")
    ("steps", po::value(&steps)->default_value(4), "sampling steps per P (the first is warm-up)")
    ("cfg-scale", po::value(&cfg_scale)->default_value(7.0), "guidance scale (batched CFG)")
    ("comm", po::value(&backend)->default_value("mpi"), "mpi | nccl")
    ("json", po::value(&json_path), "write the rows as JSON here");
  // clang-format on
  try {
    po::variables_map vm;
    if (!parse_command_line("bench_scaling", "sequence-parallel scaling", desc, {argv + 1, argv + argc}, vm)) return 0;
    if (steps < 2) fail("--steps must be at least 2 (the first step is warm-up)");
    const at::TensorOptions options = resolve_tensor_options(mo, mpi);
    const std::unique_ptr<DiT> model = load_model(mo, options);
    const ModelOutline& outline = model->outline();
    const ModelFamily& family = family_of(outline);
    const SamplingDefaults defaults = family.sampling(outline);
    if (!frames) frames = defaults.frames;
    if (!height) height = defaults.height;
    if (!width) width = defaults.width;
    const LatentShape ls = family.vae(outline)->latent_shape(frames, height, width);
    const DiTShape& cfg = outline.shape;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
    VideoRequest req;
    req.z0 = at::randn({1, ls.channels, ls.frames, ls.height, ls.width}, gen, at::TensorOptions().dtype(at::kFloat));
    req.caption_y = at::randn({1, 1, cfg.caption_tokens, cfg.caption_channels}, gen, at::TensorOptions().dtype(at::kFloat));
    req.caption_mask = at::ones({1, cfg.caption_tokens}, at::kLong);
    add_benchmark_unconditional(req, *model);
    req.height = static_cast<float>(height);
    req.width = static_cast<float>(width);
    req.cfg_scale = cfg_scale;
    // The family's sampler (Open-Sora: rflow with its transform; Wan: UniPC on the shifted grid).
    SamplerOptions so;
    so.name = defaults.sampler;
    so.steps = steps;
    so.shift = defaults.flow_shift;
    so.timestep_transform = defaults.timestep_transform;
    const bool transform = so.name == "rflow" && defaults.timestep_transform && family.timestep_transform;
    const std::unique_ptr<Sampler> sampler =
        make_sampler(so, transform ? family.timestep_transform(outline, {frames, height, width}, options.dtype().toScalarType())
                                   : TimestepTransform());
    req.experts = experts_per_step(outline, sampler->timesteps(), NAN);
    if (outline.experts > 1) req.cfg_scale_2 = cfg_scale;

    MpiCommunicator world(MPI_COMM_WORLD);
    std::vector<int> ps;
    for (int p = 1; p <= world.size(); p *= 2) ps.push_back(p);
    if (ps.back() != world.size()) ps.push_back(world.size());
    if (world.rank() == 0) {
      std::printf("# sequence-parallel scaling: %s, latent %dx%dx%d, %s, %s, backend %s\n", model_source(mo).c_str(),
                  ls.frames, ls.height, ls.width, options.device().str().c_str(),
                  dtype_name(options.dtype().toScalarType()).c_str(), backend.c_str());
      std::printf("| P | layout | s/step | comm s/step | comm %% | MB sent/step (all ranks) | speedup | efficiency |\n");
      std::printf("|---|---|---|---|---|---|---|---|\n");
    }
    nlohmann::ordered_json rows = nlohmann::json::array();
    double base = 0;
    for (int P : ps) {
      const bool in = world.rank() < P;
      auto mpi_group = world.split(in ? 0 : 1, world.rank());
      std::unique_ptr<Communicator> group;
      if (in && backend == "nccl" && P > 1)
        group = make_nccl_communicator(dynamic_cast<MpiCommunicator&>(*mpi_group).handle(), options.device().index(), 300);
      else
        group = std::move(mpi_group);
      double step_s = 0, comm_s = 0;
      int64_t bytes = 0;
      if (in) {
        // Counters read at the end of every step, so the warm-up step and the final gather are excluded.
        std::vector<double> times, comm_at;
        std::vector<int64_t> bytes_at;
        auto last = std::chrono::steady_clock::now();
        sample_video(*model, *sampler, req, {group.get(), nullptr}, [&](int, const at::Tensor&) {
          synchronize(options.device());
          const auto now = std::chrono::steady_clock::now();
          times.push_back(std::chrono::duration<double>(now - last).count());
          last = now;
          comm_at.push_back(group->counters().total_seconds());
          bytes_at.push_back(group->counters().total_bytes());
        });
        const int timed = steps - 1;
        for (int i = 1; i < steps; ++i) step_s += times[i] / timed;
        comm_s = (comm_at.back() - comm_at.front()) / timed;
        bytes = (bytes_at.back() - bytes_at.front()) / timed;
      }
      // A step is as slow as its slowest rank; bytes add up over ranks.
      at::Tensor t = at::tensor({step_s, comm_s}, at::kDouble);
      world.all_reduce(t, ReduceOp::Max);
      at::Tensor b = at::tensor({bytes}, at::kLong);
      world.all_reduce(b, ReduceOp::Sum);
      step_s = t[0].item<double>();
      comm_s = t[1].item<double>();
      if (P == 1) base = step_s;
      const double speedup = base / step_s, eff = speedup / P;
      const TokenGrid grid = token_grid(ls.frames, ls.height, ls.width, cfg.patch);
      const std::string layout = P > 1 ? model->layout_for(P, grid) : "none";
      if (world.rank() == 0)
        std::printf("| %d | %s | %.4f | %.4f | %.1f%% | %.2f | %.2f | %.2f |\n", P, layout.c_str(), step_s, comm_s,
                    100 * comm_s / step_s, b.item<int64_t>() / 1e6, speedup, eff);
      rows.push_back({{"P", P}, {"layout", layout}, {"step_s", step_s}, {"comm_s", comm_s}, {"bytes_per_step", b.item<int64_t>()},
                      {"speedup", speedup}, {"efficiency", eff}});
      world.barrier();
    }
    if (world.rank() == 0 && !json_path.empty())
      std::ofstream(json_path) << nlohmann::ordered_json{{"ditto_version", ditto_version()}, {"ditto_git_sha", ditto_git_sha()}, {"model", model_source(mo)},
                                                         {"latent", {ls.channels, ls.frames, ls.height, ls.width}},
                                                         {"device", options.device().str()},
                                                         {"backend", backend},
                                                         {"rows", rows}}.dump(2)
                               << "\n";
  } catch (const std::exception& e) {
    mpi.abort(std::string("bench_scaling: ") + e.what());
  }
  return 0;
}
