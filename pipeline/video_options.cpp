// The table of video settings (see video_options.h).
#include "pipeline/video_options.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <sstream>

#include "model/atomic_file.h"
#include "model/error.h"
#include "pipeline/model_options.h"

namespace ditto {

namespace {

// How a setting's values are read and checked. `name` is how the source calls it: "--frames" on
// the command line, "'frames'" in a job file.
enum class Kind {
  Text,         // any string
  Count,        // an integer > 0 (frames, steps, ...)
  Seed,         // an integer >= 0 that fits 64 bits
  Guidance,     // a finite number >= 0
  FlowShift,    // a finite number >= 0 (0: no shift)
  Sampler,      // one of sampler_names()
  SigmaGrid,    // one of sampler_grid_names()
  VaeDtype,     // float32 | bfloat16
  Boundary,     // a timestep in (0, 1000)
  CacheOpts,    // KEY=VALUE items (repeatable option; an object or a list of strings in a job file)
  Switch,       // a command-line flag (no job field)
  Upscale,      // an integer >= 0 (command line only)
};

// Which model default fills a setting that is not given (none: a fixed default).
enum class ModelDefault { None, Frames, Height, Width, Steps, Fps, Guidance, Guidance2, Sampler, FlowShift, Boundary };

struct Setting {
  const char* flag;   // command-line name
  const char* field;  // job-file name ("" when not a job field)
  Kind kind;
  ModelDefault model_default;
  const char* fixed_default;  // shown when model_default is None ("" for none)
  const char* help;
  std::function<void(VideoJob&, const nlohmann::json&)> set;  // the checked value into a job
};


// clang-format off
const std::vector<Setting>& table() {
  static const std::vector<Setting> t = {
    {"prompt", "prompt", Kind::Text, ModelDefault::None, "", "text prompt (models with a text encoder of their own)",
     [](VideoJob& j, const nlohmann::json& v) { j.prompt = v; }},
    {"text-encoder", "text_encoder", Kind::Text, ModelDefault::None, "", "the prompt's text encoder when the model has none of its own: a T5 / umT5 directory (transformers' files and spiece.model, or a pipeline's text_encoder/ + tokenizer/), e.g. DeepFloyd/t5-v1_1-xxl for Open-Sora 1.2",
     [](VideoJob& j, const nlohmann::json& v) { j.text_encoder = v; }},
    {"max-sequence-length", "max_sequence_length", Kind::Count, ModelDefault::None, "", "T5 / umT5 prompts: keep at most N tokens (EOS included), the rest padded to the model's text length (as the official Wan code pads to 512); default: the model's text length",
     [](VideoJob& j, const nlohmann::json& v) { j.max_sequence_length = v; }},
    {"caption-embedding", "caption_embedding", Kind::Text, ModelDefault::None, "", "safetensors with y [L, C] (or [1, 1, L, C]) and optional mask [L]: the text encoder's output (T5 for Open-Sora)",
     [](VideoJob& j, const nlohmann::json& v) { j.caption_file = v; }},
    {"random-caption", "random_caption", Kind::Count, ModelDefault::None, "", "a random caption embedding with N valid tokens, drawn from the seed (benchmarks)",
     [](VideoJob& j, const nlohmann::json& v) { j.random_caption = v; }},
    {"negative-prompt", "negative_prompt", Kind::Text, ModelDefault::None, "", "guide away from this prompt: the guidance's unconditional branch reads it instead of the null caption",
     [](VideoJob& j, const nlohmann::json& v) { j.negative_prompt = v; }},
    {"negative-caption-embedding", "negative_caption_embedding", Kind::Text, ModelDefault::None, "", "the same from a caption embedding file (as --caption-embedding)",
     [](VideoJob& j, const nlohmann::json& v) { j.negative_caption_file = v; }},
    {"init-noise", "init_noise", Kind::Text, ModelDefault::None, "", "start from this latent (safetensors, tensor z or z0, [1, C, T, H, W]) instead of the seeded noise",
     [](VideoJob& j, const nlohmann::json& v) { j.init_noise = v; }},
    {"seed", "seed", Kind::Seed, ModelDefault::None, "42", "seed of the initial noise (drawn whole on the CPU, identical on every rank and device)",
     [](VideoJob& j, const nlohmann::json& v) { j.seed = v; }},
    {"frames", "frames", Kind::Count, ModelDefault::Frames, "", "frames of the video, in pixels' time (the model's VAE maps them to latent frames)",
     [](VideoJob& j, const nlohmann::json& v) { j.frames = v; }},
    {"height", "height", Kind::Count, ModelDefault::Height, "", "height in pixels",
     [](VideoJob& j, const nlohmann::json& v) { j.height = v; }},
    {"width", "width", Kind::Count, ModelDefault::Width, "", "width in pixels",
     [](VideoJob& j, const nlohmann::json& v) { j.width = v; }},
    {"steps", "steps", Kind::Count, ModelDefault::Steps, "", "sampling steps",
     [](VideoJob& j, const nlohmann::json& v) { j.steps = v; }},
    {"cfg-scale", "cfg_scale", Kind::Guidance, ModelDefault::Guidance, "", "classifier-free guidance scale (1 turns guidance off)",
     [](VideoJob& j, const nlohmann::json& v) { j.cfg_scale = v; }},
    {"fps", "fps", Kind::Count, ModelDefault::Fps, "", "frames per second (a model input, and the video's rate)",
     [](VideoJob& j, const nlohmann::json& v) { j.fps = v; }},
    {"cfg-scale-2", "cfg_scale_2", Kind::Guidance, ModelDefault::Guidance2, "", "a model of two experts (Wan 2.2): the low-noise expert's guidance, --cfg-scale being the high-noise one's (diffusers' guidance_scale_2; given --cfg-scale alone, both use it)",
     [](VideoJob& j, const nlohmann::json& v) { j.cfg_scale_2 = v; }},
    {"expert-boundary", "expert_boundary", Kind::Boundary, ModelDefault::Boundary, "", "a model of two experts (Wan 2.2): the high-noise expert denoises the steps with timestep t >= this, the low-noise one the rest",
     [](VideoJob& j, const nlohmann::json& v) { j.expert_boundary = v; }},
    {"sampler", "sampler", Kind::Sampler, ModelDefault::Sampler, "", "rflow (rectified flow; Euler on the flow-shifted grid) | unipc (flow-matching UniPC, order 2, as Wan samples) | euler (flow-matching Euler as diffusers' FlowMatchEulerDiscreteScheduler) | ddim (epsilon-prediction models)",
     [](VideoJob& j, const nlohmann::json& v) { j.sampler = v; }},
    {"sigma-grid", "sigma_grid", Kind::SigmaGrid, ModelDefault::None, "official", "unipc's noise levels: official (Wan's own sampler; diffusers up to 0.36) | diffusers-0.37 (the grid of diffusers 0.37 and later, slightly different)",
     [](VideoJob& j, const nlohmann::json& v) { j.sigma_grid = v; }},
    {"no-timestep-transform", "", Kind::Switch, ModelDefault::None, "", "rflow without the model family's resolution/length timestep transform (Open-Sora's)",
     [](VideoJob& j, const nlohmann::json& v) { j.timestep_transform = !v.get<bool>(); }},
    {"flow-shift", "flow_shift", Kind::FlowShift, ModelDefault::FlowShift, "", "the flow shift of rflow, unipc and euler: every noise level t' = s t / (1 + (s - 1) t) (s > 1: more steps at high noise, where layout and motion form; 0: none; replaces the timestep transform)",
     [](VideoJob& j, const nlohmann::json& v) { j.flow_shift = v; }},
    {"cache", "cache", Kind::Text, ModelDefault::None, "none", "caching policy: none | static | pab | adacache | teacache | fbcache | blockcache",
     [](VideoJob& j, const nlohmann::json& v) { j.cache = v; }},
    {"cache-opt", "cache_opts", Kind::CacheOpts, ModelDefault::None, "", "a policy option KEY=VALUE (repeatable), e.g. preset=slow, moreg=1, threshold=0.2, interval=3 (a job file: an object {\"key\": value} or a list of \"KEY=VALUE\")",
     [](VideoJob& j, const nlohmann::json& v) { j.cache_opts = v.get<std::vector<std::string>>(); }},
    {"schedule", "", Kind::Text, ModelDefault::None, "", "block-cache schedule file (made by ditto profile) for --cache blockcache; the same as --cache-opt schedule=FILE",
     [](VideoJob& j, const nlohmann::json& v) { j.cache_opts.push_back("schedule=" + v.get<std::string>()); }},
    {"vae", "vae", Kind::Text, ModelDefault::None, "", "the VAE that decodes the latent into frames: a diffusers AutoencoderKLWan directory (Wan 2.1 / 2.2 A14B: a Wan pipeline's vae/); a pipeline directory given as the model uses its own vae/; none: the latent is written, not decoded",
     [](VideoJob& j, const nlohmann::json& v) { j.vae = v; }},
    {"vae-dtype", "vae_dtype", Kind::VaeDtype, ModelDefault::None, "float32", "the VAE's dtype: float32 (as the official Wan code decodes) | bfloat16",
     [](VideoJob& j, const nlohmann::json& v) { j.vae_dtype = v; }},
    {"vae-tile", "vae_tile", Kind::Count, ModelDefault::None, "none", "decode in spatial tiles of N pixels (a multiple of 8; diffusers' tiled decode, 256 in its defaults): memory bounded by the tile, and the tiles shared among the video group's ranks (the frames are the same at any rank count; tiles blend, so they differ slightly from the untiled decode)",
     [](VideoJob& j, const nlohmann::json& v) { j.vae_tile = v; }},
    {"vae-tile-stride", "vae_tile_stride", Kind::Count, ModelDefault::None, "3/4 of the tile", "tiles start every N pixels (a multiple of 8, at most the tile; they blend over tile - N)",
     [](VideoJob& j, const nlohmann::json& v) { j.vae_tile_stride = v; }},
    {"vae-chunk", "vae_chunk", Kind::Count, ModelDefault::None, "1", "latent frames the VAE decodes at a time (the same frames at any N; memory grows with N)",
     [](VideoJob& j, const nlohmann::json& v) { j.vae_chunk = v; }},
    {"upscale", "", Kind::Upscale, ModelDefault::None, "0", "pixel videos: enlarge each pixel N x N in the video files (0: to at least 256 px)",
     [](VideoJob& j, const nlohmann::json& v) { j.upscale = v; }},
    {"png", "", Kind::Switch, ModelDefault::None, "", "also write PNG frames",
     [](VideoJob& j, const nlohmann::json& v) { j.png = v.get<bool>(); }},
    {"y4m", "", Kind::Switch, ModelDefault::None, "", "keep video.y4m (4:4:4, 8 bits, ffmpeg's input) beside video.mp4; without an MP4 (--no-mp4, no ffmpeg) it is always kept",
     [](VideoJob& j, const nlohmann::json& v) { j.y4m = v.get<bool>(); }},
    {"no-mp4", "", Kind::Switch, ModelDefault::None, "", "do not encode video.mp4 even when ffmpeg is installed",
     [](VideoJob& j, const nlohmann::json& v) { j.mp4 = !v.get<bool>(); }},
  };
  return t;
}
// clang-format on

std::string shown(const Setting& s, const ShownDefaults& d) {
  if (s.model_default == ModelDefault::None) return s.fixed_default;
  const std::string who = d.model.empty() ? "the model" : d.model;
  if (!d.sampling) return "the model's";
  const SamplingDefaults& m = *d.sampling;
  std::ostringstream os;
  switch (s.model_default) {
    case ModelDefault::Frames: os << m.frames; break;
    case ModelDefault::Height: os << m.height; break;
    case ModelDefault::Width: os << m.width; break;
    case ModelDefault::Steps: os << m.steps; break;
    case ModelDefault::Fps: os << m.fps; break;
    case ModelDefault::Guidance: os << m.cfg_scale; break;
    case ModelDefault::Guidance2:
      if (std::isnan(m.cfg_scale_2)) return "none: a one-expert model";
      os << m.cfg_scale_2;
      break;
    case ModelDefault::Boundary:
      if (!d.outline || d.outline->experts < 2) return "none: a one-expert model";
      os << d.outline->expert_boundary;
      break;
    case ModelDefault::Sampler: os << m.sampler; break;
    case ModelDefault::FlowShift: os << m.flow_shift << (m.flow_shift == 0 ? " (none)" : ""); break;
    default: break;
  }
  return os.str() + ", " + who + "'s";
}

// A setting whose value is one of a list (the sampler, the sigma grid); `name` as the user wrote it.
nlohmann::json checked_choice(const Setting& s, const std::string& name, const nlohmann::json& v) {
  static const std::vector<std::string> vae_dtypes = {"float32", "bfloat16"};
  const auto& names = s.kind == Kind::Sampler ? sampler_names() : s.kind == Kind::VaeDtype ? vae_dtypes : sampler_grid_names();
  std::string known;
  for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
  if (!v.is_string()) fail(name, " must be one of ", known);
  if (std::find(names.begin(), names.end(), v.get<std::string>()) == names.end())
    fail(name, ": unknown ", s.kind == Kind::Sampler ? "sampler" : s.kind == Kind::VaeDtype ? "dtype" : "grid", " '", v.get<std::string>(), "' (known: ", known, ")");
  return v;
}

// A command-line value as the JSON a job file would hold, checked by the same rules.
nlohmann::json from_text(const Setting& s, const std::string& text) {
  const std::string name = std::string("--") + s.flag;
  // The whole text read by `convert` (std::stoll, std::stod, ...), or an Error naming the option.
  auto whole = [&](const char* what, auto convert) {
    size_t used = 0;
    decltype(convert(text, &used)) v{};
    try {
      v = convert(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != text.size()) fail(name, ": '", text, "' is not ", what);
    return v;
  };
  auto integer = [&] { return whole("an integer", [](const std::string& t, size_t* u) { return std::stoll(t, u); }); };
  auto number = [&] { return whole("a number", [](const std::string& t, size_t* u) { return std::stod(t, u); }); };
  switch (s.kind) {
    case Kind::Count: {
      const int64_t v = integer();
      if (v <= 0 || v > 1000000) fail(name, " must be positive, got ", v, v > 0 ? " (at most 1000000)" : "");
      return v;
    }
    case Kind::Upscale: {
      const int64_t v = integer();
      if (v < 0 || v > 64) fail(name, " must be in 0..64, got ", v);
      return v;
    }
    case Kind::Seed: {
      if (!text.empty() && text[0] == '-') fail(name, " must be a non-negative integer, got ", text);
      return static_cast<uint64_t>(
          whole("a non-negative integer", [](const std::string& t, size_t* u) { return std::stoull(t, u); }));
    }
    case Kind::Guidance: {
      const double v = number();
      if (!(v >= 0) || !std::isfinite(v)) fail(name, " must be a number >= 0, got ", text);
      return v;
    }
    case Kind::FlowShift: {
      const double v = number();
      if (!(v >= 0) || !std::isfinite(v)) fail(name, ": the flow shift must be a positive number (0: none), got ", text);
      return v;
    }
    case Kind::Sampler:
    case Kind::SigmaGrid:
    case Kind::VaeDtype:
      return checked_choice(s, name, text);
    case Kind::Boundary: {
      const double v = number();
      if (!(v > 0 && v < 1000)) fail(name, " must be a timestep in (0, 1000), got ", text);
      return v;
    }
    default:
      return text;
  }
}

// A job file's value, checked; messages name the field as the job file does.
nlohmann::json from_json(const Setting& s, const nlohmann::json& v) {
  const std::string name = std::string("'") + s.field + "'";
  switch (s.kind) {
    case Kind::Text:
      if (!v.is_string()) fail(name, " must be a string");
      return v;
    case Kind::Count:
      if (!v.is_number_integer() || v.get<int64_t>() <= 0 || v.get<int64_t>() > 1000000)
        fail(name, " must be a positive integer");
      return v;
    case Kind::Seed:
      if (!v.is_number_unsigned()) fail(name, " must be a non-negative integer");
      return v;
    case Kind::Guidance:
      if (!v.is_number() || !(v.get<double>() >= 0) || !std::isfinite(v.get<double>())) fail(name, " must be a number >= 0");
      return v;
    case Kind::FlowShift:
      if (!v.is_number() || !(v.get<double>() >= 0) || !std::isfinite(v.get<double>()))
        fail(name, " must be a number >= 0 (0: no shift)");
      return v;
    case Kind::Sampler:
    case Kind::SigmaGrid:
    case Kind::VaeDtype:
      return checked_choice(s, name, v);
    case Kind::Boundary:
      if (!v.is_number() || !(v.get<double>() > 0 && v.get<double>() < 1000)) fail(name, " must be a timestep in (0, 1000)");
      return v;
    case Kind::CacheOpts: {
      std::vector<std::string> items;
      if (v.is_object()) {
        for (auto it = v.begin(); it != v.end(); ++it)
          items.push_back(it.key() + "=" + (it.value().is_string() ? it.value().get<std::string>() : dump_json(it.value())));
      } else if (v.is_array()) {
        for (const auto& e : v) {
          if (!e.is_string()) fail(name, " entries must be \"KEY=VALUE\" strings");
          items.push_back(e.get<std::string>());
        }
      } else {
        fail(name, " must be an object {\"key\": value} or a list of \"KEY=VALUE\"");
      }
      return items;
    }
    default:
      fail(name, " is not a job-file field");
  }
}

std::string flag_of(const std::string& arg) {
  if (arg.rfind("--", 0) != 0) return "";
  const auto eq = arg.find('=');
  return arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
}

}  // namespace

ShownDefaults shown_defaults(const std::vector<std::string>& args) {
  ModelOptions mo;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string f = flag_of(args[i]);
    const auto eq = args[i].find('=');
    const std::string value = eq != std::string::npos ? args[i].substr(eq + 1) : i + 1 < args.size() ? args[i + 1] : "";
    if (f == "model") mo.model_dir = value;
    if (f == "config") mo.config_name = value;
  }
  ShownDefaults d;
  try {
    if (mo.model_dir.empty() && mo.config_name.empty()) mo.model_dir = demo_model_dir();
    const ModelOutline outline = mo.model_dir.empty() ? builtin_outline(mo.config_name) : read_outline(mo.model_dir);
    d.model = mo.model_dir.empty() ? mo.config_name : mo.model_dir;
    d.sampling = family_of(outline).sampling(outline);
    d.outline = outline;
  } catch (const std::exception&) {
    // --help must work with a model it cannot read: its defaults are then "the model's".
  }
  return d;
}

void add_video_options(po::options_description& desc, const std::vector<std::string>& flags, const ShownDefaults& d) {
  for (const Setting& s : table()) {
    if (std::find(flags.begin(), flags.end(), s.flag) == flags.end()) continue;
    std::string help = s.help;
    const std::string def = shown(s, d);
    if (!def.empty()) help += " (default: " + def + ")";
    if (s.kind == Kind::Switch)
      desc.add_options()(s.flag, po::bool_switch(), help.c_str());
    else if (s.kind == Kind::CacheOpts)
      desc.add_options()(s.flag, po::value<std::vector<std::string>>()->composing(), help.c_str());
    else
      desc.add_options()(s.flag, po::value<std::string>(), help.c_str());
  }
}

void apply_video_options(const po::variables_map& vm, const std::vector<std::string>& flags, VideoJob& job) {
  for (const Setting& s : table()) {
    if (std::find(flags.begin(), flags.end(), s.flag) == flags.end() || !vm.count(s.flag)) continue;
    if (s.kind == Kind::Switch) {
      if (vm[s.flag].as<bool>()) s.set(job, true);
    } else if (s.kind == Kind::CacheOpts) {
      const auto items = vm[s.flag].as<std::vector<std::string>>();
      job.cache_opts.insert(job.cache_opts.end(), items.begin(), items.end());
    } else {
      s.set(job, from_text(s, vm[s.flag].as<std::string>()));
    }
  }
}

std::vector<std::string> all_video_flags() {
  std::vector<std::string> f;
  for (const Setting& s : table()) f.push_back(s.flag);
  return f;
}

bool apply_job_field(VideoJob& job, const std::string& field, const nlohmann::json& value) {
  for (const Setting& s : table())
    if (*s.field && field == s.field) {
      s.set(job, from_json(s, value));
      return true;
    }
  return false;
}

std::vector<std::string> job_setting_fields() {
  std::vector<std::string> f;
  for (const Setting& s : table())
    if (*s.field) f.push_back(s.field);
  return f;
}

}  // namespace ditto
