// One video rendered by one video group (see video_job.h).
#include "launcher/video_job.h"

#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "cache/cache_runner.h"
#include "dist/mpi_communicator.h"
#include "dist/nccl_communicator.h"
#include "dist/video_sampler.h"
#include "launcher/device_sync.h"
#include "launcher/quality.h"
#include "launcher/video_writer.h"
#include "model/atomic_file.h"
#include "model/error.h"
#include "model/safetensors.h"
#include "model/sampler.h"
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
    fail("random caption tokens must be in 1..", c.model_max_length, ", got ", tokens);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed ^ 0x5eedcafeull);
  Caption cap;
  cap.y = at::randn({1, 1, c.model_max_length, c.caption_channels}, gen, at::kFloat);
  cap.mask = at::zeros({1, c.model_max_length}, at::kLong);
  cap.mask.narrow(1, 0, tokens).fill_(1);
  return cap;
}

// A prompt through the model directory's own text encoder (loaded once per directory per process:
// a batch of jobs encodes many prompts with one encoder).
Caption encode_prompt(const std::string& prompt, const std::string& model_dir, const STDiT3Config& cfg) {
  if (model_dir.empty() || !TextEncoder::present(model_dir))
    fail("this model has no text encoder of its own: pass the text encoder's output as a caption embedding "
         "file (T5 for Open-Sora), or a random caption");
  static std::mutex m;
  static std::map<std::string, std::shared_ptr<const TextEncoder>> loaded;
  std::shared_ptr<const TextEncoder> text;
  {
    std::lock_guard<std::mutex> g(m);
    auto& slot = loaded[model_dir];
    if (!slot) slot = std::make_shared<const TextEncoder>(TextEncoder::load(model_dir, at::TensorOptions().dtype(at::kFloat)));
    text = slot;
  }
  if (text->config().dim != cfg.caption_channels) fail("the text encoder's width does not match the model's caption_channels");
  Caption cap;
  std::tie(cap.y, cap.mask) = text->encode({prompt});
  return cap;
}

Caption resolve_caption(const VideoJob& job, const std::string& model_dir, const STDiT3Config& cfg) {
  const int sources = !job.caption_file.empty() + (job.random_caption > 0) + !job.prompt.empty();
  if (sources != 1) fail("give exactly one caption source: a prompt, a caption embedding file or a random caption");
  if (!job.prompt.empty()) return encode_prompt(job.prompt, model_dir, cfg);
  return job.caption_file.empty() ? make_random_caption(job.random_caption, job.seed, cfg)
                                  : load_caption(job.caption_file, cfg);
}

std::optional<Caption> resolve_negative_caption(const VideoJob& job, const std::string& model_dir,
                                                const STDiT3Config& cfg) {
  if (!job.negative_prompt.empty() && !job.negative_caption_file.empty())
    fail("give a negative prompt or a negative caption embedding file, not both");
  if (job.negative_prompt.empty() && job.negative_caption_file.empty()) return std::nullopt;
  if (!guidance_enabled(job.cfg_scale))
    fail("a negative prompt steers the guidance, which is off at cfg scale 1: set a cfg scale, or drop the negative prompt");
  return job.negative_prompt.empty() ? load_caption(job.negative_caption_file, cfg)
                                     : encode_prompt(job.negative_prompt, model_dir, cfg);
}

std::vector<int64_t> shape_of(const LatentShape& s) { return {1, s.channels, s.frames, s.height, s.width}; }

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

void use_prompt_set(VideoJob& job, bool has_text, const STDiT3Config& cfg, DemoPromptSet set, int p, int s, int seeds,
                    uint64_t base_seed) {
  if (has_text) {
    job.prompt = demo_prompt(demo_prompt_set(set, p));
    job.seed = base_seed + s;
  } else {
    job.random_caption = std::max(1, cfg.model_max_length / 2);
    job.seed = base_seed + static_cast<uint64_t>(p) * seeds + s;
  }
}

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

std::unique_ptr<Communicator> group_backend(std::unique_ptr<Communicator> mpi_group, const std::string& backend,
                                            const at::Device& device, double timeout_s) {
  if (backend == "mpi" || mpi_group->size() == 1) return mpi_group;
  auto* m = dynamic_cast<MpiCommunicator*>(mpi_group.get());
  return make_nccl_communicator(m->handle(), device.index(), timeout_s);
}

std::string resolve_backend(const std::string& name, const at::Device& device) {
  if (name != "auto" && name != "mpi" && name != "nccl") fail("--comm: unknown '", name, "' (auto, mpi, nccl)");
  const std::string backend = name == "auto" ? (device.is_cuda() ? "nccl" : "mpi") : name;
  if (backend == "nccl" && !device.is_cuda()) fail("--comm nccl needs --device cuda (NCCL moves GPU memory)");
  return backend;
}

RenderedVideo render_video(const STDiT3& model, const std::string& model_dir, const std::string& model_description,
                           const at::TensorOptions& options, const WorldLayout& wl, const VideoJob& job_in,
                           const VideoGroupComms& comms, const StepHook& on_step,
                           const RunnerSetup& setup) {
  const STDiT3Config& cfg = model.config();
  const auto dev = options.device();
  VideoJob job = job_in;
  const SamplingDefaults defaults = sampling_defaults(cfg);
  if (job.frames == 0) job.frames = defaults.frames;
  if (job.height == 0) job.height = defaults.height;
  if (job.width == 0) job.width = defaults.width;
  if (std::isnan(job.cfg_scale)) job.cfg_scale = defaults.cfg_scale;
  if (job.steps <= 0) fail("steps must be positive, got ", job.steps);
  const Caption cap = resolve_caption(job, model_dir, cfg);
  const std::optional<Caption> negative = resolve_negative_caption(job, model_dir, cfg);

  // The initial latent, drawn whole (never per shard) so the result does not depend on the layout.
  const LatentShape ls = latent_shape(cfg, job.frames, job.height, job.width);
  const auto z_dtype = options.dtype().toScalarType() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor z0;
  if (!job.init_noise.empty()) {
    SafetensorsFile f(job.init_noise);
    const char* name = f.contains("z") ? "z" : f.contains("z0") ? "z0" : nullptr;
    if (!name) fail("'", job.init_noise, "' has no tensor 'z' or 'z0'");
    z0 = f.tensor(name, at::TensorOptions().dtype(z_dtype));
    if (z0.dim() == 4) z0 = z0.unsqueeze(0);
    if (z0.sizes().vec() != shape_of(ls))
      fail("init noise ", z0.sizes(), " does not match the latent ", at::IntArrayRef(shape_of(ls)), " of ", job.frames,
           " frames at ", job.height, "x", job.width, " (set frames/height/width to the noise's video size)");
  } else {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(job.seed);
    z0 = at::randn(shape_of(ls), gen, at::TensorOptions().dtype(at::kFloat)).to(z_dtype);
  }
  const auto& pt = cfg.patch_size;
  const int64_t grid_t = (ls.frames + pt[0] - 1) / pt[0];
  const int64_t grid_s = ((ls.height + pt[1] - 1) / pt[1]) * ((ls.width + pt[2] - 1) / pt[2]);
  check_sequence_layout(wl.sp, grid_t, grid_s);

  SamplerOptions so;
  so.name = job.sampler;
  so.steps = job.steps;
  so.timestep_transform = job.timestep_transform && defaults.timestep_transform;
  so.shift = std::isnan(job.flow_shift) ? defaults.flow_shift : job.flow_shift;
  const auto run_dtype = options.dtype().toScalarType();
  auto sampler = make_sampler(so, {static_cast<double>(job.height), static_cast<double>(job.width), job.frames,
                                   cfg.latent_space, run_dtype == at::kDouble ? at::kFloat : run_dtype});
  auto policy = make_cache_policy(job.cache, parse_policy_options(job.cache_opts), cfg.depth, job.steps, cfg.hidden_size);

  VideoRequest req;
  req.z0 = z0;
  req.caption_y = cap.y;
  req.caption_mask = cap.mask;
  if (negative) {
    req.negative_y = negative->y;
    req.negative_mask = negative->mask;
  }
  req.fps = job.frames == 1 ? 120.0f : static_cast<float>(job.fps);  // the reference's IMG_FPS for single images
  req.height = static_cast<float>(job.height);
  req.width = static_cast<float>(job.width);
  req.cfg_scale = job.cfg_scale;

  synchronize(dev);
  std::vector<double> step_s;
  auto last = std::chrono::steady_clock::now();
  const auto t_loop = last;
  comms.sp->reset_counters();
  comms.cfg->reset_counters();
  CacheRunner cache(model, *policy, comms.video);
  if (setup) setup(cache);
  cache.begin_video(sampler->timesteps());
  at::Tensor z = sample_video(model, *sampler, req, {comms.sp, comms.cfg}, [&](int i, const at::Tensor&) {
    synchronize(dev);
    const auto now = std::chrono::steady_clock::now();
    step_s.push_back(std::chrono::duration<double>(now - last).count());
    last = now;
    if (on_step) on_step(i + 1, job.steps, step_s.back(), std::chrono::duration<double>(now - t_loop).count());
    maybe_inject_fault(wl.rank, i + 1);
  }, cache.token_forward());
  const double sample_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_loop).count();
  // Every rank of the group holds the same gathered latent, so every rank sees a NaN alike.
  if (!at::isfinite(z).all().item<bool>())
    fail("the final latent has NaN or infinite values (diverged; try fewer cached steps or another dtype)");
  const int64_t peak = peak_memory_bytes(dev);
  at::Tensor peaks = at::tensor({peak}, at::kLong);
  std::vector<at::Tensor> all_peaks;
  for (int i = 0; i < comms.video->size(); ++i) all_peaks.push_back(at::empty({1}, at::kLong));
  comms.video->all_gather(peaks, all_peaks);

  const bool guided = guidance_enabled(job.cfg_scale);
  const int64_t batch = guided && wl.cfg == 1 ? 2 : 1;
  const int64_t caption_tokens = cap.mask.ne(0).sum().item<int64_t>();
  const double flops = stdit3_forward_flops(cfg, batch, grid_t, grid_s, caption_tokens) / wl.sp;
  double steady = 0;  // mean over steps after the first (warm-up)
  for (size_t i = 1; i < step_s.size(); ++i) steady += step_s[i];
  steady = step_s.size() > 1 ? steady / (step_s.size() - 1) : step_s.front();

  RenderedVideo out;
  out.z = z;
  nlohmann::ordered_json& m = out.metrics;
  m["ditto_version"] = "0.1.0";
  m["model"] = {{"source", model_description},
                {"hidden_size", cfg.hidden_size},
                {"depth", cfg.depth},
                {"num_heads", cfg.num_heads},
                {"patch_size", cfg.patch_size},
                {"in_channels", cfg.in_channels},
                {"latent_space", latent_space_name(cfg.latent_space)}};
  m["run"] = {{"device", dev.str()},
              {"dtype", dtype_name(options.dtype().toScalarType())},
              {"seed", job.seed},
              {"steps", job.steps},
              {"sampler", sampler->name()},
              {"timestep_transform", so.timestep_transform && !(so.shift > 0)},
              {"flow_shift", so.shift},
              {"prompt", job.prompt},
              {"negative_prompt", job.negative_prompt},
              {"negative_caption_embedding", job.negative_caption_file},
              {"cfg_scale", job.cfg_scale},
              {"frames", job.frames},
              {"height", job.height},
              {"width", job.width},
              {"fps", job.fps},
              {"caption", job.caption_file.empty() && job.prompt.empty() ? "random:" + std::to_string(job.random_caption)
                                                                          : job.caption_file},
              {"caption_tokens", caption_tokens},
              {"init_noise", job.init_noise},
              {"latent_shape", shape_of(ls)},
              {"token_grid", {grid_t, grid_s}},
              {"world", {{"size", wl.world}, {"dp", wl.dp}, {"cfg", wl.cfg}, {"sp", wl.sp}, {"dp_index", wl.dp_index}}},
              {"comm_backend", comms.backend}};
  m["timesteps"] = sampler->timesteps();
  std::vector<int64_t> peak_list;
  for (const auto& t : all_peaks) peak_list.push_back(t.item<int64_t>());
  m["timing"] = {{"sample_s", sample_s},
                 {"step_s", step_s},
                 {"steady_step_s", steady},
                 {"flops_per_step_per_rank", flops},
                 {"tflops_per_s_per_rank", flops / steady / 1e12},
                 {"peak_memory_bytes_per_rank", peak_list}};
  m["communication"] = {{"sp", counters_json(*comms.sp)},
                        {"cfg", counters_json(*comms.cfg)},
                        {"sp_bytes_per_step", job.steps ? comms.sp->counters().total_bytes() / job.steps : 0}};
  m["cache"] = cache.report();
  return out;
}

nlohmann::ordered_json write_video_outputs(const std::string& dir, const RenderedVideo& v, const VideoJob& job,
                                           const STDiT3Config& cfg) {
  // Each file is written whole or not at all, and metrics.json last: it lists the files (names
  // relative to `dir`, so a renamed directory stays right), so a
  // directory whose metrics.json is missing holds no finished run.
  make_dir(dir);
  std::remove((dir + "/metrics.json").c_str());
  nlohmann::ordered_json outputs;
  const auto& run = v.metrics.at("run");
  const std::string latent_path = dir + "/latent.safetensors";
  save_safetensors(latent_path, {{"z", v.z.cpu()}},
                   {{"model", v.metrics.at("model").at("source").get<std::string>()},
                    {"seed", std::to_string(run.at("seed").get<uint64_t>())},
                    {"steps", std::to_string(run.at("steps").get<int>())},
                    {"cfg_scale", std::to_string(run.at("cfg_scale").get<double>())},
                    {"sampler", run.at("sampler").get<std::string>()}});
  outputs["latent"] = "latent.safetensors";
  if (cfg.latent_space == LatentSpace::Pixel && cfg.in_channels == 3) {
    RgbVideo video = to_rgb_video(v.z, job.fps, job.upscale);
    write_y4m(dir + "/video.y4m", video);
    outputs["y4m"] = "video.y4m";
    if (job.mp4 && ffmpeg_available()) {
      y4m_to_mp4(dir + "/video.y4m", dir + "/video.mp4");
      outputs["mp4"] = "video.mp4";
    }
    if (job.png) {
      make_dir(dir + "/frames");
      for (size_t t = 0; t < video.frames.size(); ++t) {
        char name[64];
        std::snprintf(name, sizeof name, "/frames/frame_%04zu.png", t);
        write_png(dir + name, video.width, video.height, video.frames[t].data());
      }
      outputs["png_frames"] = "frames";
    }
  } else {
    outputs["video"] = std::string("not written: the model works in the ") + latent_space_name(cfg.latent_space) +
                       " latent space; decode latent.safetensors with its VAE";
  }
  nlohmann::ordered_json m = v.metrics;
  // A demo prompt on a pixel-space RGB model: what the adherence checker reads in the video.
  if (cfg.latent_space == LatentSpace::Pixel && cfg.in_channels == 3 && !job.prompt.empty()) {
    const DemoClipSettings demo;
    try {
      const DemoAttributes a = parse_demo_prompt(job.prompt);
      if (v.z.size(2) != demo.frames || v.z.size(3) != demo.size || v.z.size(4) != demo.size)
        m["adherence"] = "not checked: the checker reads clips of " + std::to_string(demo.frames) + " frames of " +
                         std::to_string(demo.size) + "x" + std::to_string(demo.size);
      else
        m["adherence"] = check_adherence(v.z[0].to(at::kCPU, at::kFloat), a).json();
    } catch (const Error& e) {
      m["adherence"] = std::string("not checked: not a demo prompt (") + e.what() + ")";
    }
  }
  m["outputs"] = outputs;
  write_file_atomic(dir + "/metrics.json", [&](std::ostream& os) { os << m.dump(2) << "\n"; });
  return m;
}

}  // namespace ditto
