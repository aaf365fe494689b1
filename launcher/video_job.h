// One video, rendered by one video group (cfg x sp ranks): what `ditto sample` does once and
// `ditto render` does per job. Resolves the caption and the initial noise, samples with the cache
// policy, and writes the outputs (video, latent, metrics JSON) into a directory.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "dist/parallel_layout.h"
#include "launcher/common.h"
#include "model/demo_data.h"

namespace ditto {

struct VideoJob {
  // Exactly one caption source.
  std::string prompt;        // text, for models with their own text encoder
  std::string caption_file;  // safetensors with y [L, C] and optional mask
  int random_caption = 0;    // N valid random tokens drawn from the seed (benchmarks)
  std::string init_noise;    // start from this latent instead of the seeded noise
  // Optional negative caption for the guidance's unconditional branch (at most one; none: the null caption).
  std::string negative_prompt, negative_caption_file;
  uint64_t seed = 42;        // of the initial noise (and of a random caption)
  int frames = 0, height = 0, width = 0;  // 0: the model's default geometry
  double cfg_scale = NAN;                 // NaN: the model's default
  int steps = 30, fps = 24;
  std::string sampler = "rflow";
  bool timestep_transform = true;  // rflow: Open-Sora's transform where the model uses it
  double flow_shift = NAN;         // rflow: a fixed timestep shift (0: none; NaN: the model's default)
  std::string cache = "none";
  std::vector<std::string> cache_opts;  // KEY=VALUE
  // Outputs.
  int upscale = 0;
  bool png = false, mp4 = true;
};

// Run (p, s) of a tool's prompts x seeds: demo prompt p of `set` with seed base_seed + s for models
// with a text encoder, else a random caption of half the model's tokens drawn from the run's own seed.
void use_prompt_set(VideoJob& job, bool has_text, const STDiT3Config& config, DemoPromptSet set, int p, int s,
                    int seeds, uint64_t base_seed);

// The communicators a video group renders with.
struct VideoGroupComms {
  Communicator* sp;     // the sequence-parallel group (activations)
  Communicator* cfg;    // the CFG-parallel group
  Communicator* video;  // sp x cfg: cache decisions, gathers of metrics
  std::string backend;  // "mpi" or "nccl"
};

struct RenderedVideo {
  at::Tensor z;                   // the final latent [1, C, T, H, W] (every rank of the group)
  nlohmann::ordered_json metrics;  // everything but "outputs"
};

// Per-step hook: (steps done, total, seconds of the last step, seconds since sampling began).
using StepHook = std::function<void(int, int, double, double)>;

// Renders `job` on every rank of the group. The model's geometry defaults fill the job's zeros.
// Throws an Error for a bad job (unknown words, caption mismatch, layout); "nan_in_latent" too.
class CacheRunner;
// `setup` (optional) configures the video's cache runner before sampling (profiling observers,
// calibration hooks).
using RunnerSetup = std::function<void(CacheRunner&)>;
RenderedVideo render_video(const STDiT3& model, const std::string& model_dir, const std::string& model_description,
                           const at::TensorOptions& options, const WorldLayout& layout, const VideoJob& job,
                           const VideoGroupComms& comms, const StepHook& on_step,
                           const RunnerSetup& setup = nullptr);

// Writes the outputs into `dir` (created): latent.safetensors, video.y4m (+ .mp4, PNG frames) for
// RGB pixel-space models, and metrics.json last, listing the files. Returns the metrics written.
nlohmann::ordered_json write_video_outputs(const std::string& dir, const RenderedVideo& v, const VideoJob& job,
                                           const STDiT3Config& config);

// The run's communicator for one group: the MPI group itself, or NCCL over the same ranks.
std::unique_ptr<Communicator> group_backend(std::unique_ptr<Communicator> mpi_group, const std::string& backend,
                                            const at::Device& device, double timeout_s);
// "auto" -> nccl on CUDA, mpi on CPU; validates the name against the device.
std::string resolve_backend(const std::string& name, const at::Device& device);

void make_dir(const std::string& dir);

}  // namespace ditto
