// One video rendered by one video group (see video_job.h).
#include "pipeline/video_job.h"

#include <csignal>

#include <sys/stat.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <thread>
#include <memory>
#include <mutex>
#include <optional>

#include "cache/cache_runner.h"
#include "dist/dsp_layout.h"
#include "dist/mpi_communicator.h"
#include "dist/nccl_communicator.h"
#include "dist/ulysses_layout.h"
#include "dist/video_sampler.h"
#include "model/atomic_file.h"
#include "model/error.h"
#include "model/layers.h"
#include "model/t5.h"
#include "model/host_sync.h"
#include "model/safetensors.h"
#include "model/sampler.h"
#include "pipeline/timing.h"
#include "pipeline/version.h"
#include "pipeline/video_writer.h"

namespace ditto {

namespace {

// The text encoder a job's prompts go through: its text_encoder when given (a T5 / umT5 apart from
// the model, as Open-Sora's), else the model directory's own (null: none).
std::shared_ptr<const TextEncoder> job_text_encoder(const VideoJob& job, const std::string& model_dir,
                                                    const ModelOutline& model) {
  const int tokens = model.shape.caption_tokens;
  if (job.max_sequence_length > tokens)
    fail("--max-sequence-length ", job.max_sequence_length, ": the model reads at most ", tokens, " caption tokens");
  const int keep = job.max_sequence_length > 0 ? job.max_sequence_length : tokens;
  if (!job.text_encoder.empty()) return load_t5_text_encoder(job.text_encoder, keep);
  const TextEncoderKind* kind = text_encoder_kind(model_dir);
  if (kind && kind->name == "t5") return load_t5_text_encoder(model_dir, keep);  // a pipeline's own
  if (job.max_sequence_length > 0) fail("--max-sequence-length applies to T5 / umT5 text encoders; this model's is not one");
  return find_text_encoder(model_dir);
}

// A caption of fewer tokens than the model reads, padded with masked-out zero rows.
Caption padded_caption(Caption c, int tokens) {
  const int64_t have = c.y.size(2);
  if (have == tokens) return c;
  Caption p;
  p.y = at::zeros({1, 1, tokens, c.y.size(3)}, c.y.options());
  p.y.narrow(2, 0, have).copy_(c.y);
  p.mask = at::zeros({1, tokens}, c.mask.options());
  p.mask.narrow(1, 0, have).copy_(c.mask);
  return p;
}

// A prompt through the job's text encoder.
Caption encode_prompt(const std::string& prompt, const VideoJob& job, const std::string& model_dir,
                      const ModelOutline& model) {
  const std::shared_ptr<const TextEncoder> text = job_text_encoder(job, model_dir, model);
  if (!text)
    fail("this model has no text encoder of its own: give --text-encoder DIR (T5 for Open-Sora), a caption "
         "embedding file, or a random caption");
  if (text->channels() != model.shape.caption_channels || text->tokens() > model.shape.caption_tokens)
    fail("the text encoder's output (", text->tokens(), " x ", text->channels(), ") does not match the model's caption (",
         model.shape.caption_tokens, " x ", model.shape.caption_channels, ")");
  return padded_caption(text->encode(prompt), model.shape.caption_tokens);
}

std::optional<Caption> resolve_negative_caption(const VideoJob& job, const std::string& model_dir,
                                                const ModelOutline& model) {
  if (!job.negative_prompt.empty() && !job.negative_caption_file.empty())
    fail("give a negative prompt or a negative caption embedding file, not both");
  if (job.negative_prompt.empty() && job.negative_caption_file.empty()) return std::nullopt;
  if (!guidance_enabled(job.cfg_scale) && !(job.cfg_scale_2 >= 0 && guidance_enabled(job.cfg_scale_2)))
    fail("a negative prompt steers the guidance, which is off at cfg scale 1: set a cfg scale, or drop the negative prompt");
  return job.negative_prompt.empty()
             ? load_caption_embedding(job.negative_caption_file, model.shape.caption_tokens, model.shape.caption_channels)
             : encode_prompt(job.negative_prompt, job, model_dir, model);
}

// A caption made on rank 0 of the video group only (a text encoder is loaded and run once per group,
// not on every rank) and broadcast to the others. A failure there is every rank's failure, announced
// before any data moves, so no rank waits in a collective the others never enter.
Caption shared_caption(const std::function<Caption()>& make, Communicator& group, const DiTShape& shape) {
  if (group.size() == 1) return make();
  const bool root = group.rank() == 0;
  Caption c;
  std::string error;
  if (root) {
    try {
      c = make();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  at::Tensor failed = at::tensor({error.empty() ? 0.0 : 1.0}, at::kDouble);
  group.broadcast(failed, 0);
  if (failed.item<double>() != 0) {
    if (root) fail(error);
    fail("the prompt could not be encoded on rank 0 of the group (see its error)");
  }
  if (!root) {
    c.y = at::zeros({1, 1, shape.caption_tokens, shape.caption_channels}, at::kFloat);
    c.mask = at::zeros({1, shape.caption_tokens}, at::kLong);
  }
  c.y = c.y.contiguous();
  c.mask = c.mask.to(at::kLong).contiguous();
  group.broadcast(c.y, 0);
  group.broadcast(c.mask, 0);
  return c;
}

std::vector<int64_t> shape_of(const LatentShape& s) { return {1, s.channels, s.frames, s.height, s.width}; }

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

// DITTO_FAULT_INJECT=RANK:STEP makes that world rank throw at the start of that step;
// DITTO_FAULT_INJECT=RANK:STEP:stop makes it stop itself there (SIGSTOP, as a hung or frozen process
// would), RANK:STEP:sleep makes it pause 3 s, a slow rank (tests of the job-wide abort and of --timeout).
void maybe_inject_fault(int rank, int step) {
  const char* spec = std::getenv("DITTO_FAULT_INJECT");
  int fr = -1, fs = -1;
  char how[8] = {0};
  const int n = spec ? std::sscanf(spec, "%d:%d:%7s", &fr, &fs, how) : 0;
  if (n < 2 || fr != rank || fs != step) return;
  if (n == 3 && std::string(how) == "stop") {
    std::raise(SIGSTOP);
    return;
  }
  if (n == 3 && std::string(how) == "sleep") {
    std::this_thread::sleep_for(std::chrono::seconds(3));
    return;
  }
  fail("injected fault at ", step ? "step " + std::to_string(step) : std::string("the decode"), " (DITTO_FAULT_INJECT=", spec, ")");
}

}  // namespace

RgbVideo to_rgb_video(const at::Tensor& video, int fps, int upscale, FrameRounding rounding) {
  if (upscale <= 0)
    upscale = std::max<int64_t>(1, (256 + std::min(video.size(3), video.size(4)) - 1) / std::min(video.size(3), video.size(4)));
  const at::Tensor x = video[0].to(at::kCPU, at::kFloat).clamp(-1, 1);
  // Round: (x + 1) * 127.5 rounded; truncate: ((x + 1) / 2 * 255) cut toward zero, as diffusers'
  // export_to_video and the official Wan code write frames (its float32 arithmetic, step by step).
  at::Tensor u8 = rounding == FrameRounding::Round ? ((x + 1) * 127.5).round() : ((x / 2 + 0.5).clamp(0, 1) * 255).trunc();
  u8 = u8.to(at::kByte).permute({1, 2, 3, 0});
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

LatentFile read_latent_file(const std::string& path, at::ScalarType dtype) {
  SafetensorsFile f(path);
  const char* name = f.contains("z") ? "z" : f.contains("z0") ? "z0" : nullptr;
  if (!name) fail("'", path, "' has no tensor 'z' or 'z0' (a latent)");
  LatentFile l{f.tensor(name, at::TensorOptions().dtype(dtype)), f.metadata()};
  if (l.z.dim() == 4) l.z = l.z.unsqueeze(0);
  if (l.z.dim() != 5 || l.z.size(0) != 1) fail("'", path, "': the latent must be [1, C, T, H, W], got ", shape_string(l.z.sizes()));
  return l;
}

VaeOptions vae_options(const VideoJob& job, const at::Device& device) {
  if (job.vae_tile_stride > 0 && job.vae_tile <= 0) fail("--vae-tile-stride needs --vae-tile");
  if (job.vae_tile > 0) {
    const int stride = job.vae_tile_stride > 0 ? job.vae_tile_stride : job.vae_tile * 3 / 4 / 8 * 8;
    if (job.vae_tile % 8 || stride % 8 || stride <= 0 || stride > job.vae_tile)
      fail("--vae-tile ", job.vae_tile, " / --vae-tile-stride ", stride, ": tiles and strides are multiples of 8 pixels with "
           "0 < stride <= tile (the stride defaults to 3/4 of the tile)");
  }
  VaeOptions o;
  o.options = at::TensorOptions().device(device).dtype(job.vae_dtype == "bfloat16" ? at::kBFloat16 : at::kFloat);
  o.chunk = job.vae_chunk > 0 ? job.vae_chunk : 1;
  o.tile = job.vae_tile;
  o.tile_stride = job.vae_tile > 0 ? (job.vae_tile_stride > 0 ? job.vae_tile_stride : job.vae_tile * 3 / 4 / 8 * 8) : 0;
  return o;
}

std::shared_ptr<const VAE> job_vae(const VideoJob& job_in, const std::string& model_dir, const ModelOutline& model,
                                   const at::Device& device) {
  const VideoJob job = with_model_defaults(job_in, model);
  std::shared_ptr<const VAE> geometry = family_of(model).vae(model);
  const std::string dir = !job.vae.empty() ? job.vae : model_dir.empty() ? "" : pipeline_vae_dir(model_dir);
  if (dir.empty()) return geometry;
  std::shared_ptr<const VAE> vae = load_vae(dir, vae_options(job, device));
  if (vae->name() != geometry->name())
    fail("the VAE '", dir, "' decodes ", vae->name(), " latents; the model samples ", geometry->name(), " latents");
  const LatentShape want = geometry->latent_shape(job.frames, job.height, job.width);
  const LatentShape got = vae->latent_shape(job.frames, job.height, job.width);
  if (want.channels != got.channels || want.frames != got.frames || want.height != got.height || want.width != got.width)
    fail("the VAE '", dir, "' (", vae->name(), ") does not fit the model (", geometry->name(), " latents): for ", job.frames,
         " frames at ", job.height, "x", job.width, " it decodes latents of ", got.channels, "x", got.frames, "x", got.height, "x",
         got.width, ", the model samples ", want.channels, "x", want.frames, "x", want.height, "x", want.width);
  return vae;
}

at::Tensor decode_on_group(const VAE& vae, const at::Tensor& latent, int frames, Communicator& group) {
  const int P = group.size(), r = group.rank();
  const int n = vae.parts(latent);
  // DITTO_FAULT_INJECT=R:0 fails rank R of the group's decode (tests).
  if (P == 1 || n == 1) {
    if (r != 0) return {};
    maybe_inject_fault(r, 0);
    return vae.decode(latent, frames).to(at::kCPU, at::kFloat).contiguous();
  }
  // Part k is decoded by rank k % P, padded to the largest part's shape, and gathered.
  std::vector<std::vector<int64_t>> shapes;
  std::vector<int64_t> big;
  for (int k = 0; k < n; ++k) {
    shapes.push_back(vae.part_shape(latent, k, frames));
    if (big.empty()) big = shapes.back();
    for (size_t d = 0; d < big.size(); ++d) big[d] = std::max(big[d], shapes.back()[d]);
  }
  int64_t big_numel = 1;
  for (int64_t d : big) big_numel *= d;
  const int per = (n + P - 1) / P;
  at::Tensor mine = at::zeros({per, big_numel}, at::kFloat);
  std::string error;
  try {
    maybe_inject_fault(r, 0);
    for (int i = 0; i < per; ++i) {
      const int k = r + i * P;
      if (k >= n) break;
      const at::Tensor part = vae.decode_part(latent, k, frames).to(at::kCPU, at::kFloat);
      at::Tensor slot = mine[i].view(big);
      for (size_t d = 0; d < big.size(); ++d) slot = slot.narrow(static_cast<int64_t>(d), 0, part.size(static_cast<int64_t>(d)));
      slot.copy_(part);
    }
  } catch (const std::exception& e) {
    error = error_text(e);
  }
  // A rank that failed fails the group's decode on every rank (none waits for its tiles).
  at::Tensor failed = at::tensor({error.empty() ? 0.0 : 1.0}, at::kDouble);
  group.all_reduce(failed, ReduceOp::Max);
  if (failed.item<double>() != 0) fail(error.empty() ? "decoding failed on another rank of the group (see its error)" : error);
  // Gathered one round of parts at a time, in pieces of at most 2^25 values per rank (MPI's int
  // counts; no rank holds more than P pieces beside its own parts); rank 0 keeps them.
  at::Tensor got = r == 0 ? at::empty({n, big_numel}, at::kFloat) : at::Tensor();
  const int64_t piece = int64_t{1} << 25;
  for (int i = 0; i < per; ++i)
    for (int64_t off = 0; off < big_numel; off += piece) {
      const int64_t len = std::min(piece, big_numel - off);
      std::vector<at::Tensor> recv;
      for (int q = 0; q < P; ++q) recv.push_back(at::empty({len}, at::kFloat));
      group.all_gather(mine[i].narrow(0, off, len).contiguous(), recv);
      if (r == 0)
        for (int q = 0; q < P && q + i * P < n; ++q) got[q + i * P].narrow(0, off, len).copy_(recv[q]);
    }
  if (r != 0) return {};
  std::vector<at::Tensor> parts(n);
  for (int k = 0; k < n; ++k) {
    at::Tensor t = got[k].view(big);
    for (size_t d = 0; d < big.size(); ++d) t = t.narrow(static_cast<int64_t>(d), 0, shapes[k][d]);
    parts[k] = t.to(latent.device());
  }
  return vae.join_parts(std::move(parts), latent).to(at::kCPU, at::kFloat).contiguous();
}

namespace {
std::string text_encoder_name(const std::string& model_dir) {
  const TextEncoderKind* kind = text_encoder_kind(model_dir);
  return kind ? kind->name : "none";
}
}  // namespace

Caption resolve_caption(const VideoJob& job, const std::string& model_dir, const ModelOutline& model) {
  const int sources = !job.caption_file.empty() + (job.random_caption > 0) + !job.prompt.empty();
  if (sources != 1) fail("give exactly one caption source: a prompt, a caption embedding file or a random caption");
  const DiTShape& sh = model.shape;
  if (!job.prompt.empty()) return encode_prompt(job.prompt, job, model_dir, model);
  return job.caption_file.empty() ? random_caption(job.random_caption, job.seed, sh.caption_tokens, sh.caption_channels)
                                  : load_caption_embedding(job.caption_file, sh.caption_tokens, sh.caption_channels);
}

VideoJob with_model_defaults(VideoJob job, const ModelOutline& model) {
  const SamplingDefaults d = family_of(model).sampling(model);
  if (job.frames == 0) job.frames = d.frames;
  if (job.height == 0) job.height = d.height;
  if (job.width == 0) job.width = d.width;
  if (job.steps == 0) job.steps = d.steps;
  if (job.fps == 0) job.fps = d.fps;
  if (model.experts < 2 && !std::isnan(job.cfg_scale_2))
    fail("cfg_scale_2 is the second expert's guidance; this model has one expert (--cfg-scale guides it)");
  if (model.experts < 2 && !std::isnan(job.expert_boundary))
    fail("expert_boundary is where the experts of a model of two switch; this model has one");
  // Given --cfg-scale alone, both experts use it (diffusers' guidance_scale_2 rule); given neither,
  // each has the model's.
  if (model.experts > 1 && std::isnan(job.cfg_scale_2))
    job.cfg_scale_2 = !std::isnan(job.cfg_scale) ? job.cfg_scale : std::isnan(d.cfg_scale_2) ? d.cfg_scale : d.cfg_scale_2;
  if (model.experts > 1 && std::isnan(job.expert_boundary)) job.expert_boundary = model.expert_boundary;
  if (std::isnan(job.cfg_scale)) job.cfg_scale = d.cfg_scale;
  if (job.sampler.empty()) job.sampler = d.sampler;
  if (std::isnan(job.flow_shift)) job.flow_shift = d.flow_shift;
  return job;
}

void use_prompt_set(VideoJob& job, const std::string& model_dir, const ModelOutline& model, const std::string& set,
                    int p, int s, int seeds, uint64_t base_seed) {
  const TextEncoderKind* kind = text_encoder_kind(model_dir);
  if (kind && kind->prompt_set) {
    job.prompt = kind->prompt_set(set, p);
    job.seed = base_seed + s;
  } else {
    job.random_caption = std::max(1, model.shape.caption_tokens / 2);
    job.seed = base_seed + static_cast<uint64_t>(p) * seeds + s;
  }
}

namespace {
std::mutex annotators_mutex;  // NOLINT: guards annotators()
std::vector<OutputAnnotator>& annotators() {
  static std::vector<OutputAnnotator> a;
  return a;
}
}  // namespace

void register_output_annotator(OutputAnnotator annotator) {
  std::lock_guard<std::mutex> g(annotators_mutex);
  annotators().push_back(std::move(annotator));
}

namespace {
struct MemoryNeed {
  double need, latent, batch;
  int64_t tokens;
};
MemoryNeed memory_need(const ModelOutline& model, const VideoJob& job, const WorldLayout& wl, const at::TensorOptions& options) {
  const LatentShape ls = family_of(model).vae(model)->latent_shape(job.frames, job.height, job.width);
  const TokenGrid grid = token_grid(ls.frames, ls.height, ls.width, model.shape.patch);
  const double guided = guidance_enabled(job.cfg_scale) || (job.cfg_scale_2 >= 0 && guidance_enabled(job.cfg_scale_2));
  const double batch = guided && wl.cfg == 1 ? 2 : 1;
  const double tokens = std::ceil(static_cast<double>(grid.tokens()) / std::max(1, wl.sp));
  const double element = static_cast<double>(c10::elementSize(options.dtype().toScalarType()));
  const double state = std::max(4.0, element);
  const double latent = static_cast<double>(ls.channels) * ls.frames * ls.height * ls.width * state * 4;
  const double activations = batch * tokens * model.shape.hidden_size * (4 * state + 16 * element);
  return {latent + activations, latent, batch, grid.tokens()};
}
}  // namespace

double job_memory_need(const ModelOutline& model, const VideoJob& job, const WorldLayout& wl, const at::TensorOptions& options) {
  return memory_need(model, with_model_defaults(job, model), wl, options).need;
}

void check_job_memory(const ModelOutline& model, const VideoJob& job_in, const WorldLayout& wl,
                      const at::TensorOptions& options) {
  const VideoJob job = with_model_defaults(job_in, model);
  const MemoryNeed m = memory_need(model, job, wl, options);
  const double need = m.need, latent = m.latent, batch = m.batch;
  const int64_t available = available_memory_bytes(options.device());
  if (need > static_cast<double>(available)) {
    char text[320];
    std::snprintf(text, sizeof text,
                  "this job needs about %.3g GB on %s (%d frames at %dx%d: %lld tokens, batch %.0f, %.3g GB of latent) "
                  "and about %.3g GB is available: use fewer frames or a smaller size, more sequence-parallel ranks, "
                  "or a larger device",
                  need / 1e9, options.device().str().c_str(), job.frames, job.height, job.width,
                  static_cast<long long>(m.tokens), batch, latent / 1e9, static_cast<double>(available) / 1e9);
    fail(text);
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

RenderedVideo render_video(const DiT& model, const std::string& model_dir, const std::string& model_description,
                           const at::TensorOptions& options, const WorldLayout& wl, const VideoJob& job_in,
                           const VideoGroupComms& comms, const StepHook& on_step, const RunnerSetup& setup) {
  const ModelOutline& outline = model.outline();
  const ModelFamily& family = family_of(outline);
  const auto dev = options.device();
  const VideoJob job = with_model_defaults(job_in, outline);
  if (job.steps <= 0) fail("steps must be positive, got ", job.steps);
  // Prompts go through the text encoder on one rank of the group; files and random captions are read
  // (drawn) on every rank alike.
  const auto t_text = std::chrono::steady_clock::now();
  const Caption cap = job.prompt.empty() ? resolve_caption(job, model_dir, outline)
                                         : shared_caption([&] { return resolve_caption(job, model_dir, outline); },
                                                          *comms.video, outline.shape);
  std::optional<Caption> negative;
  if (job.negative_prompt.empty()) negative = resolve_negative_caption(job, model_dir, outline);
  else
    negative = shared_caption([&] { return *resolve_negative_caption(job, model_dir, outline); }, *comms.video, outline.shape);
  double text_encoding_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_text).count();

  // A text encoder left on the device (umT5-XXL: 11 GB) gives way when the video needs the room.
  if (dev.is_cuda() && job_memory_need(outline, job, wl, options) > static_cast<double>(available_memory_bytes(dev)) &&
      release_t5_text_encoders(dev))
    release_cached_memory(dev);
  check_job_memory(outline, job, wl, options);
  layers::reset_attention_kernels_used();  // metrics.json reports this video's kernels
  // The initial latent, drawn whole (never per shard) so the result does not depend on the layout.
  // The VAE is loaded (and checked against the model) before sampling, not after.
  // Every rank of the group loads it; one that cannot fails the job on all of them (none samples alone).
  std::shared_ptr<const VAE> vae;
  {
    std::string error;
    try {
      vae = job.decode ? job_vae(job, model_dir, outline, dev) : std::shared_ptr<const VAE>(family.vae(outline));
    } catch (const std::exception& e) {
      error = error_text(e);
    }
    at::Tensor failed = at::tensor({error.empty() ? 0.0 : 1.0}, at::kDouble);
    comms.video->all_reduce(failed, ReduceOp::Max);
    if (failed.item<double>() != 0) fail(error.empty() ? "the VAE could not be loaded on another rank of the group (see its error)" : error);
  }
  const LatentShape ls = vae->latent_shape(job.frames, job.height, job.width);
  const auto z_dtype = options.dtype().toScalarType() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor z0;
  if (!job.init_noise.empty()) {
    z0 = read_latent_file(job.init_noise, z_dtype).z;
    if (z0.sizes().vec() != shape_of(ls))
      fail("init noise ", z0.sizes(), " does not match the latent ", at::IntArrayRef(shape_of(ls)), " of ", job.frames,
           " frames at ", job.height, "x", job.width, " (set frames/height/width to the noise's video size)");
  } else {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(job.seed);
    z0 = at::randn(shape_of(ls), gen, at::TensorOptions().dtype(at::kFloat)).to(z_dtype);
  }
  const TokenGrid grid = token_grid(ls.frames, ls.height, ls.width, outline.shape.patch);
  const std::string layout = wl.sp > 1 ? model.layout_for(wl.sp, grid) : model.parallel_layouts().front();

  SamplerOptions so;
  so.name = job.sampler;
  so.steps = job.steps;
  so.timestep_transform = job.timestep_transform && family.sampling(outline).timestep_transform;
  so.shift = job.flow_shift;
  so.grid = job.sigma_grid;
  const auto run_dtype = options.dtype().toScalarType();
  TimestepTransform transform;
  if (so.name == "rflow" && so.timestep_transform && !(so.shift > 0) && family.timestep_transform)
    transform = family.timestep_transform(outline, {job.frames, job.height, job.width}, run_dtype);
  auto sampler = make_sampler(so, transform);
  auto policy = make_cache_policy(job.cache, parse_policy_options(job.cache_opts), policy_context(outline, job.steps));

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
  req.cfg_scale_2 = job.cfg_scale_2;
  req.experts = experts_per_step(outline, sampler->timesteps(), job.expert_boundary);
  // A random caption is a benchmark's: on a model without a learned null caption its unconditional
  // branch reads the all-zero stand-in (a real caption needs a real negative/empty-prompt caption).
  const bool guided = guidance_enabled(job.cfg_scale) || (job.cfg_scale_2 >= 0 && guidance_enabled(job.cfg_scale_2));
  if (job.random_caption > 0 && guided) add_benchmark_unconditional(req, model);
  // A prompt on a model without a learned null caption (Wan) guides away from the empty prompt, as
  // diffusers' pipelines do when no negative prompt is given.
  bool empty_negative = false;
  if (!job.prompt.empty() && guided && !req.negative_y.defined() && !model.null_caption().defined()) {
    const auto t_empty = std::chrono::steady_clock::now();
    const Caption none = shared_caption(
        [&] {
          const std::shared_ptr<const TextEncoder> text = job_text_encoder(job, model_dir, outline);
          if (!text)
            fail("this model has no learned null caption and no text encoder of its own: guidance needs a negative "
                 "caption embedding");
          return padded_caption(text->empty(), outline.shape.caption_tokens);
        },
        *comms.video, outline.shape);
    text_encoding_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t_empty).count();
    req.negative_y = none.y;
    req.negative_mask = none.mask;
    empty_negative = true;
  }

  comms.sp->reset_counters();
  comms.cfg->reset_counters();
  CacheRunner cache(model, *policy, comms.video);
  if (setup) setup(cache);
  cache.begin_video(sampler->timesteps(), req.experts);
  // Step times come from device events read once at the end: no wait for the device per step.
  StepTimer timer(dev);
  const int64_t reads_before = host_reads();
  const auto t_loop = std::chrono::steady_clock::now();
  auto last = t_loop;
  timer.start();
  at::Tensor z = sample_video(model, *sampler, req, {comms.sp, comms.cfg}, [&](int i, const at::Tensor&) {
    timer.mark();
    const auto now = std::chrono::steady_clock::now();  // when the host queued the step
    if (on_step)
      on_step(i + 1, job.steps, std::chrono::duration<double>(now - last).count(),
              std::chrono::duration<double>(now - t_loop).count());
    last = now;
    maybe_inject_fault(wl.rank, i + 1);
  }, cache.token_forward());
  const std::vector<double> step_s = timer.seconds();
  const int64_t step_reads = host_reads() - reads_before;
  const double sample_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_loop).count();
  // Every rank of the group holds the same gathered latent, so every rank sees a NaN alike.
  if (!read_to_host(at::isfinite(z).all()).item<bool>())
    fail("the final latent has NaN or infinite values (diverged; try fewer cached steps or another dtype)");
  const int64_t peak = peak_memory_bytes(dev);
  at::Tensor peaks = at::tensor({peak}, at::kLong);
  std::vector<at::Tensor> all_peaks;
  for (int i = 0; i < comms.video->size(); ++i) all_peaks.push_back(at::empty({1}, at::kLong));
  comms.video->all_gather(peaks, all_peaks);

  const int64_t batch = guided && wl.cfg == 1 ? 2 : 1;
  const int64_t caption_tokens = cap.mask.ne(0).sum().item<int64_t>();
  const double flops = model.forward_flops(grid, batch, caption_tokens) / wl.sp;
  double steady = 0;  // mean over steps after the first (warm-up)
  for (size_t i = 1; i < step_s.size(); ++i) steady += step_s[i];
  steady = step_s.size() > 1 ? steady / (step_s.size() - 1) : step_s.front();

  RenderedVideo out;
  out.z = z;
  nlohmann::ordered_json& m = out.metrics;
  m["ditto_version"] = ditto_version();
  m["ditto_git_sha"] = ditto_git_sha();
  nlohmann::ordered_json model_json = model.describe();
  model_json["source"] = model_description;
  model_json["vae"] = vae->name();
  m["model"] = model_json;
  m["run"] = {{"device", dev.str()},
              {"dtype", dtype_name(options.dtype().toScalarType())},
              {"seed", job.seed},
              {"steps", job.steps},
              {"sampler", sampler->name()},
              {"timestep_transform", static_cast<bool>(transform)},
              {"flow_shift", so.shift},
              {"prompt", job.prompt},
              {"negative_prompt", empty_negative ? "(the empty prompt)" : job.negative_prompt},
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
              {"text_encoder", job.text_encoder.empty() ? text_encoder_name(model_dir) : job.text_encoder},
              {"latent_shape", shape_of(ls)},
              {"token_grid", {grid.t, grid.s()}},
              {"world", {{"size", wl.world}, {"dp", wl.dp}, {"cfg", wl.cfg}, {"sp", wl.sp}, {"dp_index", wl.dp_index}}},
              {"sequence_parallel_layout", wl.sp > 1 ? layout : "none"},
              {"exchange_groups", {{"ulysses_head_groups", ulysses_head_groups()}, {"dsp_frame_groups", dsp_frame_groups()}}},
              {"comm_backend", comms.backend},
              {"attention", {{"requested", layers::attention_backend()}, {"kernels_used", layers::attention_kernels_used()}}},
              {"cuda_graphs", cache.graph_refusal().empty() ? "on" : "off: " + cache.graph_refusal()}};
  m["timesteps"] = sampler->timesteps();
  if (outline.experts > 1) {
    m["run"]["cfg_scale_2"] = job.cfg_scale_2;
    m["run"]["expert_boundary"] = job.expert_boundary;
    m["experts"] = req.experts;  // per step, 0 = the high-noise expert
  }
  if (job.sampler == "unipc") m["run"]["sigma_grid"] = job.sigma_grid;
  std::vector<int64_t> peak_list;
  for (const auto& t : all_peaks) peak_list.push_back(t.item<int64_t>());
  m["timing"] = {{"text_encoding_s", text_encoding_s},
                 {"sample_s", sample_s},
                 {"step_s", step_s},
                 {"steady_step_s", steady},
                 {"step_timer", dev.is_cuda() ? "cuda events" : "wall clock"},
                 {"host_reads_per_step", static_cast<double>(step_reads) / job.steps},
                 {"flops_per_step_per_rank", flops},
                 {"tflops_per_s_per_rank", flops / steady / 1e12},
                 {"peak_memory_bytes_per_rank", peak_list}};
  m["communication"] = {{"sp", counters_json(*comms.sp)},
                        {"cfg", counters_json(*comms.cfg)},
                        {"sp_bytes_per_step", job.steps ? comms.sp->counters().total_bytes() / job.steps : 0}};
  m["cache"] = cache.report();
  out.vae = vae;
  if (job.decode && vae->can_decode()) {
    const auto t_decode = std::chrono::steady_clock::now();
    reset_peak_memory(dev);
    // A decode that fails (out of memory, say) leaves the sampled latent to be written: ditto decode can
    // retry it. Every rank fails alike (decode_on_group agrees on errors; one part: rank 0 alone).
    try {
      out.video = decode_on_group(*vae, z, job.frames, *comms.video);
    } catch (const std::exception& e) {
      out.decode_error = error_text(e);
      release_cached_memory(dev);
    }
    m["timing"]["decoding_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_decode).count();
    m["timing"]["decoding_peak_memory_bytes"] = peak_memory_bytes(dev);
    m["decoding"] = {{"vae", vae->name()}, {"parts", vae->parts(z)}, {"ranks", comms.video->size()},
                     {"dtype", job.vae_dtype}, {"tile", job.vae_tile}};
  }
  return out;
}

void write_frames(const std::string& dir, const at::Tensor& video, const VAE& vae, const VideoJob& job,
                  nlohmann::ordered_json& outputs, nlohmann::ordered_json& timing) {
  const auto seconds_since = [](std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  // Pixel-space demo clips are enlarged to be watchable; a VAE's frames are written at their size.
  const int upscale = job.upscale > 0 ? job.upscale : vae.name() == "pixel" ? 0 : 1;
  const RgbVideo rgb = to_rgb_video(video, job.fps, upscale, vae.frame_rounding());
  // The Y4M is ffmpeg's input; it is kept when asked for or when there is no MP4.
  write_y4m(dir + "/video.y4m", rgb);
  bool keep_y4m = true;
  if (job.mp4 && ffmpeg_available()) {
    const auto t0 = std::chrono::steady_clock::now();
    y4m_to_mp4(dir + "/video.y4m", dir + "/video.mp4");
    timing["video_encoding_s"] = seconds_since(t0);
    outputs["mp4"] = "video.mp4";
    keep_y4m = job.y4m;
  }
  if (keep_y4m) outputs["y4m"] = "video.y4m";
  else std::remove((dir + "/video.y4m").c_str());
  if (job.png) {
    make_dir(dir + "/frames");
    for (size_t t = 0; t < rgb.frames.size(); ++t) {
      char name[64];
      std::snprintf(name, sizeof name, "/frames/frame_%04zu.png", t);
      write_png(dir + name, rgb.width, rgb.height, rgb.frames[t].data());
    }
    outputs["png_frames"] = "frames";
  }
}

nlohmann::ordered_json write_video_outputs(const std::string& dir, const RenderedVideo& v, const VideoJob& job_in,
                                           const ModelOutline& model) {
  const VideoJob job = with_model_defaults(job_in, model);
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
                    {"sampler", run.at("sampler").get<std::string>()},
                    {"frames", std::to_string(run.at("frames").get<int>())}});
  outputs["latent"] = "latent.safetensors";
  nlohmann::ordered_json m = v.metrics;
  const std::shared_ptr<const VAE> vae = v.vae ? v.vae : std::shared_ptr<const VAE>(family_of(model).vae(model));
  if (v.video.defined()) {
    const at::Tensor& video = v.video;
    write_frames(dir, video, *vae, job, outputs, m["timing"]);
    std::vector<OutputAnnotator> extra;
    {
      std::lock_guard<std::mutex> g(annotators_mutex);
      extra = annotators();
    }
    for (const auto& annotate : extra) annotate(job, video, m);
  } else {
    outputs["video"] = "not written: " + (!v.decode_error.empty() ? "decoding failed: " + v.decode_error
                                          : vae->can_decode()      ? std::string("the video was not decoded")
                                                                   : vae->cannot_decode_reason());
  }
  m["outputs"] = outputs;
  write_file_atomic(dir + "/metrics.json", [&](std::ostream& os) { os << dump_json(m, 2) << "\n"; });
  return m;
}

}  // namespace ditto
