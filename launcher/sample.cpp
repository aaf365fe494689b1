// `ditto sample`: one video from a caption embedding, with a sampler, CFG and timed steps;
// writes the final latent, the video (pixel-space models) and a metrics JSON.
#include <chrono>
#include <cmath>
#include <iostream>

#include "dist/mpi_communicator.h"
#include "dist/parallel_layout.h"
#include "launcher/commands.h"
#include "pipeline/model_options.h"
#include "pipeline/timing.h"
#include "pipeline/progress.h"
#include "pipeline/video_job.h"
#include "model/error.h"

namespace ditto {

int run_sample(const std::vector<std::string>& args, const MpiEnv& mpi) {
  ModelOptions mo;
  std::string caption_file, prompt, negative_prompt, negative_caption_file, init_noise, out_dir, sampler_name, comm_name, cache_name, schedule;
  std::vector<std::string> cache_opts;
  int random_caption = 0, frames = 0, height = 0, width = 0, steps = 0, fps = 0, sp = 1, cfg_parallel = 1;
  double cfg_scale = 0, nccl_timeout = 0, flow_shift = NAN;
  uint64_t seed = 0;
  bool no_transform = false, png = false, no_mp4 = false, quiet = false;
  int upscale = 0;
  po::options_description desc("options");
  add_model_options(desc, mo);
  // clang-format off
  desc.add_options()
    ("caption-embedding", po::value(&caption_file), "safetensors with y [L, C] (or [1, 1, L, C]) and optional mask [L]: the text encoder's output (T5 for Open-Sora)")
    ("random-caption", po::value(&random_caption), "use a random caption embedding with N valid tokens, drawn from --seed (benchmarks)")
    ("prompt", po::value(&prompt), "text prompt (models with their own text encoder)")
    ("negative-prompt", po::value(&negative_prompt), "guide away from this prompt: the guidance's unconditional branch reads it instead of the null caption (models with their own text encoder)")
    ("negative-caption-embedding", po::value(&negative_caption_file), "the same from a caption embedding file (as --caption-embedding)")
    ("frames", po::value(&frames)->default_value(51), "frames, in pixels' time (Open-Sora VAE: 51 -> 15 latent frames)")
    ("height", po::value(&height)->default_value(240), "height in pixels")
    ("width", po::value(&width)->default_value(426), "width in pixels")
    ("steps", po::value(&steps)->default_value(30), "sampling steps")
    ("cfg-scale", po::value(&cfg_scale)->default_value(7.0), "classifier-free guidance scale (1 turns guidance off; pixel-space models default to 2.5)")
    ("sampler", po::value(&sampler_name)->default_value("rflow"), "rflow (Open-Sora 1.2 rectified flow) | ddim (epsilon-prediction models)")
    ("no-timestep-transform", po::bool_switch(&no_transform), "rflow without Open-Sora's resolution/length timestep transform")
    ("flow-shift", po::value(&flow_shift)->default_value(NAN, "model's"), "rflow: shift every timestep, t' = s t / (1 + (s - 1) t) (s > 1: more steps at high noise, where layout and motion form; 0: none; replaces the timestep transform)")
    ("seed", po::value(&seed)->default_value(42), "seed of the initial noise (drawn whole on the CPU, identical on every rank and device; data-parallel group g uses seed + g)")
    ("fps", po::value(&fps)->default_value(24), "frames per second (a model input, and the video's rate)")
    ("init-noise", po::value(&init_noise), "start from this latent (safetensors, tensor z or z0, [1, C, T, H, W]) instead of the seeded noise")
    ("sp", po::value(&sp)->default_value(1), "sequence-parallel ranks per video (the world is dp x cfg x sp)")
    ("cfg-parallel", po::value(&cfg_parallel)->default_value(1), "2: conditional and unconditional branch on two ranks")
    ("cache", po::value(&cache_name)->default_value("none"), "caching policy: none | static | pab | adacache | teacache | fbcache | blockcache")
    ("cache-opt", po::value(&cache_opts)->composing(), "a policy option KEY=VALUE (repeatable), e.g. preset=slow, moreg=1, threshold=0.2, interval=3")
    ("schedule", po::value(&schedule), "block-cache schedule file (made by ditto profile) for --cache blockcache; the same as --cache-opt schedule=FILE")
    ("comm", po::value(&comm_name)->default_value("auto"), "communication backend: auto (nccl on CUDA, mpi on CPU) | mpi | nccl")
    ("nccl-timeout", po::value(&nccl_timeout)->default_value(600), "seconds a NCCL collective may take before the job is ended")
    ("out", po::value(&out_dir)->default_value("out"), "output directory: latent.safetensors, metrics.json, video.y4m/.mp4 (data-parallel groups: OUT/dpG)")
    ("png", po::bool_switch(&png), "also write PNG frames (pixel-space models)")
    ("upscale", po::value(&upscale)->default_value(0), "pixel-space videos: enlarge each pixel N x N in the video files (0: to at least 256 px)")
    ("no-mp4", po::bool_switch(&no_mp4), "do not encode video.mp4 even when ffmpeg is installed")
    ("quiet", po::bool_switch(&quiet), "no progress output");
  // clang-format on
  po::variables_map vm;
  if (!parse_command_line("sample", "render one video (one per data-parallel group)", desc, args, vm)) return 0;

  // The layout is checked before any model work.
  const WorldLayout wl = make_world_layout(mpi.size(), mpi.rank(), sp, cfg_parallel);
  const auto t_start = std::chrono::steady_clock::now();
  const at::TensorOptions options = resolve_tensor_options(mo, mpi);
  const auto dev = options.device();
  const std::string backend = resolve_backend(comm_name, dev);

  const int sources = !caption_file.empty() + (random_caption > 0) + !prompt.empty();
  if (sources != 1) fail("give exactly one of --caption-embedding FILE, --random-caption N or --prompt TEXT");
  default_to_demo_model(mo);
  const std::unique_ptr<DiT> model = load_model(mo, options);
  VideoJob job;
  job.prompt = prompt;
  job.caption_file = caption_file;
  job.random_caption = random_caption;
  job.init_noise = init_noise;
  job.negative_prompt = negative_prompt;
  job.negative_caption_file = negative_caption_file;
  job.seed = seed + static_cast<uint64_t>(wl.dp_index);
  job.frames = vm["frames"].defaulted() ? 0 : frames;
  job.height = vm["height"].defaulted() ? 0 : height;
  job.width = vm["width"].defaulted() ? 0 : width;
  job.cfg_scale = vm["cfg-scale"].defaulted() ? NAN : cfg_scale;
  if (steps <= 0) fail("steps must be positive, got ", steps);
  job.steps = steps;
  job.fps = fps;
  job.sampler = sampler_name;
  job.timestep_transform = !no_transform;
  job.flow_shift = flow_shift;
  job.cache = cache_name;
  job.cache_opts = cache_opts;
  if (!schedule.empty()) job.cache_opts.push_back("schedule=" + schedule);
  job.upscale = upscale;
  job.png = png;
  job.mp4 = !no_mp4;

  // Process groups (collective over the world), then the backend for the groups that move activations.
  MpiCommunicator world(MPI_COMM_WORLD);
  ProcessGroups groups = make_process_groups(world, wl);
  std::unique_ptr<Communicator> sp_comm = group_backend(std::move(groups.sp), backend, dev, nccl_timeout);
  std::unique_ptr<Communicator> cfg_comm = group_backend(std::move(groups.cfg), backend, dev, nccl_timeout);
  const bool root = groups.video->rank() == 0;  // writes the outputs and talks
  const std::string video_dir = wl.dp > 1 ? out_dir + "/dp" + std::to_string(wl.dp_index) : out_dir;

  synchronize(dev);
  world.barrier();
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  const bool talk = !quiet && mpi.rank() == 0;
  if (talk)
    std::cerr << "ditto sample: " << model_source(mo) << " on " << dev << " " << dtype_name(options.dtype().toScalarType())
              << ", " << wl.describe() << " (" << backend << "), " << steps << " steps, cache " << cache_name
              << ", seed " << seed << "\n";
  Progress progress(steps, "sampling", talk);
  RenderedVideo v = render_video(*model, mo.model_dir, model_source(mo), options, wl, job,
                                 {sp_comm.get(), cfg_comm.get(), groups.video.get(), backend},
                                 [&](int done, int, double step_s, double elapsed) { progress.update(done, step_s, elapsed); });
  progress.finish();
  if (root) {
    v.metrics["command"] = "sample";
    v.metrics["timing"]["load_s"] = load_s;
    write_video_outputs(video_dir, v, job, model->outline());
    if (talk || (!quiet && wl.dp > 1))
      std::cerr << "ditto sample: " << steps << " steps in " << v.metrics["timing"]["sample_s"].get<double>() << " s ("
                << v.metrics["timing"]["steady_step_s"].get<double>() << " s/step steady), wrote " << video_dir << "/\n";
  }
  world.barrier();
  return 0;
}

}  // namespace ditto
