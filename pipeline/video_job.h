// The inference pipeline for one video, rendered by one video group (cfg x sp ranks): what `ditto
// sample` does once, `ditto render` per job and the benchmarks per run. Resolves the caption (text
// encoder, caption-embedding file or random) and the initial noise, samples with the cache policy,
// decodes through the family's VAE, and writes the outputs (video, latent, metrics JSON).
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "dist/parallel_layout.h"
#include "model/dit.h"
#include "model/family.h"
#include "model/text_encoder.h"
#include "pipeline/model_options.h"
#include "pipeline/video_writer.h"

namespace ditto {

struct VideoJob {
  // Exactly one caption source.
  std::string prompt;        // text, for models with their own text encoder (or text_encoder)
  std::string text_encoder;  // a T5 / umT5 directory apart from the model (Open-Sora's); empty: the model's own
  int max_sequence_length = 0;  // T5 / umT5: tokens kept of a prompt (0: the model's text length); the rest padded
  std::string caption_file;  // safetensors with y [L, C] and optional mask
  int random_caption = 0;    // N valid random tokens drawn from the seed (benchmarks)
  std::string init_noise;    // start from this latent instead of the seeded noise
  // Optional negative caption for the guidance's unconditional branch (at most one; none: the null caption).
  std::string negative_prompt, negative_caption_file;
  uint64_t seed = 42;        // of the initial noise (and of a random caption)
  int frames = 0, height = 0, width = 0;  // 0: the model's default geometry
  double cfg_scale = NAN;                 // NaN: the model's default
  double cfg_scale_2 = NAN;               // a model of experts: the second expert's (NaN: the model's, or cfg_scale when given)
  double expert_boundary = NAN;           // a model of experts: where they switch (NaN: the model's)
  int steps = 0, fps = 0;                 // 0: the model's default
  std::string sampler;                    // empty: the model's default
  std::string sigma_grid = "official";    // unipc's grid
  bool timestep_transform = true;  // rflow: Open-Sora's transform where the model uses it
  double flow_shift = NAN;         // rflow: a fixed timestep shift (0: none; NaN: the model's default)
  std::string cache = "none";
  std::vector<std::string> cache_opts;  // KEY=VALUE
  // Decoding: a VAE directory apart from the model (empty: a pipeline's vae/, else none), its dtype,
  // spatial tiles (pixels; 0: none; stride 0: 3/4 of the tile) and latent frames per chunk (0: 1).
  std::string vae, vae_dtype = "float32";
  int vae_tile = 0, vae_tile_stride = 0, vae_chunk = 0;
  bool decode = true;  // false: the latent only (tools that read latents: profile, calibrate)
  // Outputs.
  int upscale = 0;
  bool png = false, mp4 = true, y4m = false;
};

// The model family's defaults in the job's unset fields (geometry, steps, fps, guidance, sampler, shift).
VideoJob with_model_defaults(VideoJob job, const ModelOutline& model);

// Run (p, s) of a tool's prompts x seeds: prompt p of the model's text encoder's prompt set `set`
// ("profile", "calibration", "evaluation") with seed base_seed + s when it has one, else a random
// caption of half the model's tokens drawn from the run's own seed.
void use_prompt_set(VideoJob& job, const std::string& model_dir, const ModelOutline& model, const std::string& set,
                    int p, int s, int seeds, uint64_t base_seed);
// The caption of a job (exactly one source) and its negative caption (none: nullopt).
Caption resolve_caption(const VideoJob& job, const std::string& model_dir, const ModelOutline& model);

// The communicators a video group renders with.
struct VideoGroupComms {
  Communicator* sp;     // the sequence-parallel group (activations)
  Communicator* cfg;    // the CFG-parallel group
  Communicator* video;  // sp x cfg: cache decisions, gathers of metrics
  std::string backend;  // "mpi" or "nccl"
};

struct RenderedVideo {
  at::Tensor z;                   // the final latent [1, C, T, H, W] (every rank of the group)
  at::Tensor video;               // the decoded frames [1, 3, F, H, W] in [-1, 1], float32 on the CPU
                                  // (rank 0 of the group; undefined when the VAE cannot decode)
  std::shared_ptr<const VAE> vae;  // what decoded it (or why not: cannot_decode_reason)
  std::string decode_error;        // the decode failed (the latent is still written)
  nlohmann::ordered_json metrics;  // everything but "outputs"
};

// The VAE a job decodes with: its `vae` directory, else the model directory's (a pipeline's vae/),
// else the family's latent geometry (which decodes only pixel-space models). A VAE whose latent does
// not fit the model's (channels, frames, size) for the job's video is an Error naming both.
// A latent file (latent.safetensors of sample / render, or init noise): tensor z (or z0), [C, T, H, W]
// or [1, C, T, H, W], as [1, C, T, H, W] in `dtype`, with the file's metadata. Errors name the file.
struct LatentFile {
  at::Tensor z;
  std::map<std::string, std::string> metadata;
};
LatentFile read_latent_file(const std::string& path, at::ScalarType dtype);

// A job's VAE settings (--vae-dtype, --vae-tile, --vae-tile-stride, --vae-chunk) for `device`.
VaeOptions vae_options(const VideoJob& job, const at::Device& device);
std::shared_ptr<const VAE> job_vae(const VideoJob& job, const std::string& model_dir, const ModelOutline& model,
                                   const at::Device& device);
// `latent` decoded by the group's ranks into `frames` frames (0: all it holds): each decodes its share of the VAE's parts (tiles), rank 0
// joins them; a VAE of one part decodes on rank 0 alone. The frames on rank 0 (float32, CPU),
// undefined elsewhere. Every rank of the group calls it.
at::Tensor decode_on_group(const VAE& vae, const at::Tensor& latent, int frames, Communicator& group);
// A [1, 3, F, H, W] video in [-1, 1] as 8-bit frames (the VAE's rounding), each pixel enlarged
// `upscale` x `upscale` (0: to at least 256 pixels).
RgbVideo to_rgb_video(const at::Tensor& video, int fps, int upscale, FrameRounding rounding);

// Per-step hook: (steps done, total, seconds of the last step, seconds since sampling began).
using StepHook = std::function<void(int, int, double, double)>;

// Renders `job` on every rank of the group. The model's geometry defaults fill the job's zeros.
// Throws an Error for a bad job (unknown words, caption mismatch, layout); "nan_in_latent" too.
class CacheRunner;
// `setup` (optional) configures the video's cache runner before sampling (profiling observers,
// calibration hooks).
using RunnerSetup = std::function<void(CacheRunner&)>;
RenderedVideo render_video(const DiT& model, const std::string& model_dir, const std::string& model_description,
                           const at::TensorOptions& options, const WorldLayout& layout, const VideoJob& job,
                           const VideoGroupComms& comms, const StepHook& on_step,
                           const RunnerSetup& setup = nullptr);

// Writes the outputs into `dir` (created): latent.safetensors, video.y4m (+ .mp4, PNG frames) when
// the model's VAE decodes, and metrics.json last, listing the files. Returns the metrics written.
nlohmann::ordered_json write_video_outputs(const std::string& dir, const RenderedVideo& v, const VideoJob& job,
                                           const ModelOutline& model);

// The decoded frames' files in `dir`: video.mp4 (job.mp4, ffmpeg installed), video.y4m (job.y4m, or
// when there is no MP4), frames/ (job.png); their names into `outputs`, the encoding time into `timing`.
void write_frames(const std::string& dir, const at::Tensor& video, const VAE& vae, const VideoJob& job,
                  nlohmann::ordered_json& outputs, nlohmann::ordered_json& timing);

// Extra readings of a finished video for metrics.json (the demo registers its adherence checker):
// called with the job, the decoded video [1, 3, F, H, W] in [-1, 1] and the metrics to add to.
using OutputAnnotator = std::function<void(const VideoJob& job, const at::Tensor& video, nlohmann::ordered_json& metrics)>;
void register_output_annotator(OutputAnnotator annotator);

// The run's communicator for one group: the MPI group itself, or NCCL over the same ranks.
std::unique_ptr<Communicator> group_backend(std::unique_ptr<Communicator> mpi_group, const std::string& backend,
                                            const at::Device& device, double timeout_s);
// "auto" -> nccl on CUDA, mpi on CPU; validates the name against the device.
std::string resolve_backend(const std::string& name, const at::Device& device);

// The memory one job's sampling takes on each rank of its group, estimated from the outline alone:
// the whole latent (drawn and gathered whole) and the activations of a unit over the rank's share
// of the tokens (the residual stream in float32 with the copies a cache keeps, q/k/v and the MLP's
// hidden layer in the run's dtype). An Error naming both figures when the device has less available
// than that, so an oversized job fails alone, before it allocates anything.
void check_job_memory(const ModelOutline& model, const VideoJob& job, const WorldLayout& wl, const at::TensorOptions& options);
// That estimate in bytes.
double job_memory_need(const ModelOutline& model, const VideoJob& job, const WorldLayout& wl, const at::TensorOptions& options);

void make_dir(const std::string& dir);

}  // namespace ditto
