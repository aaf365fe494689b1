// `ditto sample`: one video from a caption embedding, with a sampler, CFG and timed steps;
// writes the final latent, the video (pixel-space models) and a metrics JSON.
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cache/cache_runner.h"
#include "dist/mpi_communicator.h"
#include "dist/nccl_communicator.h"
#include "dist/parallel_layout.h"
#include "dist/video_sampler.h"
#include "launcher/common.h"
#include "launcher/device_sync.h"
#include "launcher/progress.h"
#include "launcher/video_writer.h"
#include "model/atomic_file.h"
#include "model/error.h"
#include "model/sampler.h"
#include "model/safetensors.h"
#include "model/text_encoder.h"

namespace ditto {

namespace {

struct Caption {
  at::Tensor y;     // [1, 1, Lmax, Cc]
  at::Tensor mask;  // [1, Lmax] int64
};

// Reads `y` ([L, C], [1, L, C] or [1, 1, L, C]) and optional `mask` ([L] or [1, L]); pads to the
// model's token count with masked-out zeros.
Caption load_caption(const std::string& path, const STDiT3Config& c) {
  SafetensorsFile f(path);
  if (!f.contains("y")) fail("caption embedding '", path, "' has no tensor 'y'");
  at::Tensor y = f.tensor("y", at::TensorOptions().dtype(at::kFloat));
  while (y.dim() > 2 && y.size(0) == 1) y = y.squeeze(0);
  if (y.dim() != 2) fail("caption embedding '", path, "': y must be [L, C] or [1, 1, L, C], got ", y.sizes());
  const int64_t L = y.size(0), Lmax = c.model_max_length;
  if (y.size(1) != c.caption_channels)
    fail("caption embedding '", path, "': y has ", y.size(1), " channels, the model's caption_channels is ",
         c.caption_channels);
  if (L > Lmax) fail("caption embedding '", path, "': ", L, " tokens, the model takes at most ", Lmax);
  at::Tensor mask = at::ones({L}, at::kLong);
  if (f.contains("mask")) {
    mask = f.tensor("mask", at::TensorOptions().dtype(at::kLong)).reshape({-1});
    if (mask.size(0) != L) fail("caption embedding '", path, "': mask has ", mask.size(0), " entries, y has ", L, " tokens");
  }
  if (mask.ne(0).sum().item<int64_t>() == 0) fail("caption embedding '", path, "': the mask has no valid token");
  Caption cap;
  cap.y = at::zeros({Lmax, c.caption_channels}, at::kFloat);
  cap.y.narrow(0, 0, L).copy_(y);
  cap.mask = at::zeros({Lmax}, at::kLong);
  cap.mask.narrow(0, 0, L).copy_(mask);
  cap.y = cap.y.reshape({1, 1, Lmax, c.caption_channels});
  cap.mask = cap.mask.unsqueeze(0);
  return cap;
}

Caption make_random_caption(int tokens, uint64_t seed, const STDiT3Config& c) {
  if (tokens <= 0 || tokens > c.model_max_length)
    fail("--random-caption must be in 1..", c.model_max_length, ", got ", tokens);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed ^ 0x5eedcafeull);
  Caption cap;
  cap.y = at::randn({1, 1, c.model_max_length, c.caption_channels}, gen, at::kFloat);
  cap.mask = at::zeros({1, c.model_max_length}, at::kLong);
  cap.mask.narrow(1, 0, tokens).fill_(1);
  return cap;
}

std::vector<int64_t> shape_of(const LatentShape& s) { return {1, s.channels, s.frames, s.height, s.width}; }

void make_dir(const std::string& dir) {
  std::string path;
  for (size_t i = 0; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      if (!path.empty()) ::mkdir(path.c_str(), 0755);
    }
    if (i < dir.size()) path += dir[i];
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) fail("cannot create output directory '", dir, "'");
}

// z: [1, 3, T, H, W] in [-1, 1]; each pixel becomes an upscale x upscale block (0: enough to make
// the shorter side at least 256 pixels, so a 32 x 32 demo clip is watchable).
RgbVideo to_rgb_video(const at::Tensor& z, int fps, int upscale) {
  if (upscale <= 0) upscale = std::max<int64_t>(1, (256 + std::min(z.size(3), z.size(4)) - 1) / std::min(z.size(3), z.size(4)));
  at::Tensor u8 = ((z[0].clamp(-1, 1) + 1) * 127.5).round().to(at::kByte).permute({1, 2, 3, 0}).cpu();
  if (upscale > 1) u8 = u8.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2);
  u8 = u8.contiguous();
  RgbVideo v;
  v.fps = fps;
  v.height = static_cast<int>(u8.size(1));
  v.width = static_cast<int>(u8.size(2));
  const size_t n = static_cast<size_t>(v.height) * v.width * 3;
  for (int64_t t = 0; t < u8.size(0); ++t) {
    const uint8_t* p = u8[t].data_ptr<uint8_t>();
    v.frames.emplace_back(p, p + n);
  }
  return v;
}

}  // namespace

namespace {

// The run's communicator for one group: the MPI group itself, or NCCL over the same ranks.
std::unique_ptr<Communicator> group_backend(std::unique_ptr<Communicator> mpi_group, const std::string& backend,
                                            const at::Device& device, double timeout_s) {
  if (backend == "mpi" || mpi_group->size() == 1) return mpi_group;
  auto* m = dynamic_cast<MpiCommunicator*>(mpi_group.get());
  return make_nccl_communicator(m->handle(), device.index(), timeout_s);
}

nlohmann::ordered_json counters_json(const Communicator& c) {
  nlohmann::ordered_json j;
  j["backend"] = c.backend();
  j["ranks"] = c.size();
  auto one = [](const CollectiveCount& k) {
    return nlohmann::ordered_json{{"calls", k.calls}, {"bytes", k.bytes}, {"seconds", k.seconds}};
  };
  const auto& k = c.counters();
  j["all_to_all"] = one(k.all_to_all);
  j["all_gather"] = one(k.all_gather);
  j["all_reduce"] = one(k.all_reduce);
  j["broadcast"] = one(k.broadcast);
  return j;
}

// DITTO_FAULT_INJECT=RANK:STEP makes that world rank throw at the start of that step (tests of
// the job-wide abort).
void maybe_inject_fault(int rank, int step) {
  const char* spec = std::getenv("DITTO_FAULT_INJECT");
  int fr = -1, fs = -1;
  if (spec && std::sscanf(spec, "%d:%d", &fr, &fs) == 2 && fr == rank && fs == step)
    fail("injected fault at step ", step, " (DITTO_FAULT_INJECT=", spec, ")");
}

}  // namespace

int run_sample(const std::vector<std::string>& args, const MpiEnv& mpi) {
  ModelOptions mo;
  std::string caption_file, prompt, init_noise, out_dir, sampler_name, comm_name, cache_name;
  std::vector<std::string> cache_opts;
  int random_caption = 0, frames = 0, height = 0, width = 0, steps = 0, fps = 0, sp = 1, cfg_parallel = 1;
  double cfg_scale = 0, nccl_timeout = 0;
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
    ("frames", po::value(&frames)->default_value(51), "frames, in pixels' time (Open-Sora VAE: 51 -> 15 latent frames)")
    ("height", po::value(&height)->default_value(240), "height in pixels")
    ("width", po::value(&width)->default_value(426), "width in pixels")
    ("steps", po::value(&steps)->default_value(30), "sampling steps")
    ("cfg-scale", po::value(&cfg_scale)->default_value(7.0), "classifier-free guidance scale (1 turns guidance off; pixel-space models default to 2.5)")
    ("sampler", po::value(&sampler_name)->default_value("rflow"), "rflow (Open-Sora 1.2 rectified flow) | ddim (epsilon-prediction models)")
    ("no-timestep-transform", po::bool_switch(&no_transform), "rflow without Open-Sora's resolution/length timestep transform")
    ("seed", po::value(&seed)->default_value(42), "seed of the initial noise (drawn whole on the CPU, identical on every rank and device; data-parallel group g uses seed + g)")
    ("fps", po::value(&fps)->default_value(24), "frames per second (a model input, and the video's rate)")
    ("init-noise", po::value(&init_noise), "start from this latent (safetensors, tensor z or z0, [1, C, T, H, W]) instead of the seeded noise")
    ("sp", po::value(&sp)->default_value(1), "sequence-parallel ranks per video (the world is dp x cfg x sp)")
    ("cfg-parallel", po::value(&cfg_parallel)->default_value(1), "2: conditional and unconditional branch on two ranks")
    ("cache", po::value(&cache_name)->default_value("none"), "caching policy: none | static | pab | adacache | teacache | fbcache")
    ("cache-opt", po::value(&cache_opts)->composing(), "a policy option KEY=VALUE (repeatable), e.g. preset=slow, moreg=1, threshold=0.2, interval=3")
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
  if (comm_name != "auto" && comm_name != "mpi" && comm_name != "nccl")
    fail("--comm: unknown '", comm_name, "' (auto, mpi, nccl)");
  const auto t_start = std::chrono::steady_clock::now();
  const at::TensorOptions options = resolve_tensor_options(mo, mpi);
  const auto dev = options.device();
  const std::string backend = comm_name == "auto" ? (dev.is_cuda() ? "nccl" : "mpi") : comm_name;
  if (backend == "nccl" && !dev.is_cuda()) fail("--comm nccl needs --device cuda (NCCL moves GPU memory)");

  const int sources = !caption_file.empty() + (random_caption > 0) + !prompt.empty();
  if (sources != 1) fail("give exactly one of --caption-embedding FILE, --random-caption N or --prompt TEXT");
  if (mo.model_dir.empty() && mo.config_name.empty()) {
    if (!demo_model_available())
      fail("no model: pass --model DIR or --config NAME --random-weights (the demo model is not installed at ",
           demo_model_dir(), ")");
    mo.model_dir = demo_model_dir();
  }
  STDiT3 model = load_model(mo, options);
  const STDiT3Config& cfg = model.config();
  const SamplingDefaults defaults = sampling_defaults(cfg);
  if (vm["frames"].defaulted()) frames = defaults.frames;
  if (vm["height"].defaulted()) height = defaults.height;
  if (vm["width"].defaulted()) width = defaults.width;
  if (vm["cfg-scale"].defaulted()) cfg_scale = defaults.cfg_scale;
  const uint64_t video_seed = seed + static_cast<uint64_t>(wl.dp_index);
  Caption cap;
  if (!prompt.empty()) {
    if (mo.model_dir.empty() || !TextEncoder::present(mo.model_dir))
      fail("this model has no text encoder of its own: pass the text encoder's output with --caption-embedding "
           "FILE (T5 for Open-Sora), or --random-caption N");
    TextEncoder text = TextEncoder::load(mo.model_dir, at::TensorOptions().dtype(at::kFloat));
    if (text.config().dim != cfg.caption_channels) fail("the text encoder's width does not match the model's caption_channels");
    std::tie(cap.y, cap.mask) = text.encode({prompt});
  } else {
    cap = caption_file.empty() ? make_random_caption(random_caption, video_seed, cfg) : load_caption(caption_file, cfg);
  }

  // The initial latent, drawn whole (never per shard) so the result does not depend on the layout.
  const LatentShape ls = latent_shape(cfg, frames, height, width);
  const auto z_dtype = options.dtype().toScalarType() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor z0;
  if (!init_noise.empty()) {
    SafetensorsFile f(init_noise);
    const char* name = f.contains("z") ? "z" : f.contains("z0") ? "z0" : nullptr;
    if (!name) fail("'", init_noise, "' has no tensor 'z' or 'z0'");
    z0 = f.tensor(name, at::TensorOptions().dtype(z_dtype));
    if (z0.dim() == 4) z0 = z0.unsqueeze(0);
    if (z0.sizes().vec() != shape_of(ls))
      fail("--init-noise ", z0.sizes(), " does not match the latent ", at::IntArrayRef(shape_of(ls)), " of ", frames,
           " frames at ", height, "x", width, " (set --frames/--height/--width to the noise's video size)");
  } else {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(video_seed);
    z0 = at::randn(shape_of(ls), gen, at::TensorOptions().dtype(at::kFloat)).to(z_dtype);
  }
  const auto& pt = cfg.patch_size;
  const int64_t grid_t = (ls.frames + pt[0] - 1) / pt[0];
  const int64_t grid_s = ((ls.height + pt[1] - 1) / pt[1]) * ((ls.width + pt[2] - 1) / pt[2]);
  check_sequence_layout(sp, grid_t, grid_s);

  SamplerOptions so;
  so.name = sampler_name;
  so.steps = steps;
  so.timestep_transform = !no_transform && defaults.timestep_transform;
  const auto run_dtype = options.dtype().toScalarType();
  auto sampler = make_sampler(so, {static_cast<double>(height), static_cast<double>(width), frames, cfg.latent_space,
                                   run_dtype == at::kDouble ? at::kFloat : run_dtype});
  auto policy = make_cache_policy(cache_name, parse_policy_options(cache_opts), cfg.depth, steps);

  // Process groups (collective over the world), then the backend for the groups that move activations.
  MpiCommunicator world(MPI_COMM_WORLD);
  ProcessGroups groups = make_process_groups(world, wl);
  std::unique_ptr<Communicator> sp_comm = group_backend(std::move(groups.sp), backend, dev, nccl_timeout);
  std::unique_ptr<Communicator> cfg_comm = group_backend(std::move(groups.cfg), backend, dev, nccl_timeout);
  const bool root = groups.video->rank() == 0;  // writes the outputs and talks
  const std::string video_dir = wl.dp > 1 ? out_dir + "/dp" + std::to_string(wl.dp_index) : out_dir;

  VideoRequest req;
  req.z0 = z0;
  req.caption_y = cap.y;
  req.caption_mask = cap.mask;
  req.fps = frames == 1 ? 120.0f : static_cast<float>(fps);  // the reference's IMG_FPS for single images
  req.height = static_cast<float>(height);
  req.width = static_cast<float>(width);
  req.cfg_scale = cfg_scale;

  synchronize(dev);
  world.barrier();
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  const bool talk = !quiet && mpi.rank() == 0;
  if (talk)
    std::cerr << "ditto sample: " << model_source(mo) << " on " << dev << " " << dtype_name(options.dtype().toScalarType())
              << ", " << wl.describe() << " (" << backend << "), latent " << at::IntArrayRef(shape_of(ls)) << ", "
              << steps << " " << sampler->name() << " steps, cfg " << cfg_scale << ", seed " << seed << "\n";
  Progress progress(steps, "sampling", talk);
  std::vector<double> step_s;
  auto last = std::chrono::steady_clock::now();
  const auto t_loop = last;
  sp_comm->reset_counters();
  cfg_comm->reset_counters();
  CacheRunner cache(model, *policy, groups.video.get());
  cache.begin_video(sampler->timesteps());
  at::Tensor z = sample_video(model, *sampler, req, {sp_comm.get(), cfg_comm.get()}, [&](int i, const at::Tensor&) {
    synchronize(dev);
    const auto now = std::chrono::steady_clock::now();
    step_s.push_back(std::chrono::duration<double>(now - last).count());
    last = now;
    progress.update(i + 1, step_s.back(), std::chrono::duration<double>(now - t_loop).count());
    maybe_inject_fault(mpi.rank(), i + 1);
  }, cache.token_forward());
  progress.finish();
  const double sample_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_loop).count();
  const int64_t peak = peak_memory_bytes(dev);
  at::Tensor peaks = at::tensor({peak}, at::kLong);
  std::vector<at::Tensor> all_peaks;
  for (int i = 0; i < groups.video->size(); ++i) all_peaks.push_back(at::empty({1}, at::kLong));
  groups.video->all_gather(peaks, all_peaks);

  if (root) {
    // Outputs: each file written whole or not at all, and metrics.json last: it lists this run's
    // files, so a directory whose metrics.json is missing holds no finished run.
    make_dir(video_dir);
    std::remove((video_dir + "/metrics.json").c_str());
    nlohmann::ordered_json outputs;
    const std::string latent_path = video_dir + "/latent.safetensors";
    save_safetensors(latent_path, {{"z", z.cpu()}},
                     {{"model", model_source(mo)}, {"seed", std::to_string(video_seed)}, {"steps", std::to_string(steps)},
                      {"cfg_scale", std::to_string(cfg_scale)}, {"sampler", sampler->name()}, {"layout", wl.describe()}});
    outputs["latent"] = latent_path;
    if (cfg.latent_space == LatentSpace::Pixel && cfg.in_channels == 3) {
      RgbVideo video = to_rgb_video(z, fps, upscale);
      write_y4m(video_dir + "/video.y4m", video);
      outputs["y4m"] = video_dir + "/video.y4m";
      if (!no_mp4 && ffmpeg_available()) {
        y4m_to_mp4(video_dir + "/video.y4m", video_dir + "/video.mp4");
        outputs["mp4"] = video_dir + "/video.mp4";
      }
      if (png) {
        make_dir(video_dir + "/frames");
        for (size_t t = 0; t < video.frames.size(); ++t) {
          char name[64];
          std::snprintf(name, sizeof name, "/frames/frame_%04zu.png", t);
          write_png(video_dir + name, video.width, video.height, video.frames[t].data());
        }
        outputs["png_frames"] = video_dir + "/frames";
      }
    } else {
      outputs["video"] = std::string("not written: the model works in the ") + latent_space_name(cfg.latent_space) +
                         " latent space; decode latent.safetensors with its VAE";
    }

    const bool guided = guidance_enabled(cfg_scale);
    const int64_t batch = guided && cfg_parallel == 1 ? 2 : 1;
    const int64_t caption_tokens = cap.mask.ne(0).sum().item<int64_t>();
    const double flops = stdit3_forward_flops(cfg, batch, grid_t, grid_s, caption_tokens) / sp;
    double steady = 0;  // mean over steps after the first (warm-up)
    for (size_t i = 1; i < step_s.size(); ++i) steady += step_s[i];
    steady = step_s.size() > 1 ? steady / (step_s.size() - 1) : step_s.front();

    nlohmann::ordered_json m;
    m["command"] = "sample";
    m["ditto_version"] = "0.1.0";
    m["model"] = {{"source", model_source(mo)},
                  {"hidden_size", cfg.hidden_size},
                  {"depth", cfg.depth},
                  {"num_heads", cfg.num_heads},
                  {"patch_size", cfg.patch_size},
                  {"in_channels", cfg.in_channels},
                  {"latent_space", latent_space_name(cfg.latent_space)}};
    m["run"] = {{"device", dev.str()},
                {"dtype", dtype_name(options.dtype().toScalarType())},
                {"seed", video_seed},
                {"steps", steps},
                {"sampler", sampler->name()},
                {"timestep_transform", so.timestep_transform},
                {"prompt", prompt},
                {"cfg_scale", cfg_scale},
                {"frames", frames},
                {"height", height},
                {"width", width},
                {"fps", fps},
                {"caption", caption_file.empty() ? "random:" + std::to_string(random_caption) : caption_file},
                {"caption_tokens", caption_tokens},
                {"init_noise", init_noise},
                {"latent_shape", shape_of(ls)},
                {"token_grid", {grid_t, grid_s}},
                {"world", {{"size", wl.world}, {"dp", wl.dp}, {"cfg", wl.cfg}, {"sp", wl.sp}, {"dp_index", wl.dp_index}}},
                {"comm_backend", backend}};
    m["timesteps"] = sampler->timesteps();
    std::vector<int64_t> peak_list;
    for (const auto& t : all_peaks) peak_list.push_back(t.item<int64_t>());
    m["timing"] = {{"load_s", load_s},
                   {"sample_s", sample_s},
                   {"step_s", step_s},
                   {"steady_step_s", steady},
                   {"flops_per_step_per_rank", flops},
                   {"tflops_per_s_per_rank", flops / steady / 1e12},
                   {"peak_memory_bytes_per_rank", peak_list}};
    m["communication"] = {{"sp", counters_json(*sp_comm)},
                          {"cfg", counters_json(*cfg_comm)},
                          {"sp_bytes_per_step", steps ? sp_comm->counters().total_bytes() / steps : 0}};
    m["cache"] = cache.report();
    m["outputs"] = outputs;
    write_file_atomic(video_dir + "/metrics.json", [&](std::ostream& os) { os << m.dump(2) << "\n"; });
    if (talk || (!quiet && wl.dp > 1))
      std::cerr << "ditto sample: " << steps << " steps in " << sample_s << " s (" << steady
                << " s/step steady), wrote " << video_dir << "/\n";
  }
  world.barrier();
  return 0;
}

}  // namespace ditto
