// Every cache policy preset side by side on the same prompts and seeds: wall-clock speedup against
// `none`, the fraction of block-stack compute skipped, PSNR and SSIM of the result against the
// uncached one and, on the demo model, prompt adherence. Prints one table, writes JSON rows.
// Launch under mpirun to measure with sequence parallelism (every rank shares each video).
#include <dirent.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cache/cache_runner.h"
#include "dist/mpi_communicator.h"
#include "dist/video_sampler.h"
#include "pipeline/model_options.h"
#include "pipeline/version.h"
#include "pipeline/timing.h"
#include "pipeline/quality.h"
#include "demo/adherence.h"
#include "demo/demo.h"
#include "demo/demo_data.h"
#include "model/error.h"
#include "model/text_encoder.h"

using namespace ditto;

namespace {

struct Preset {
  std::string label, policy;
  PolicyOptions options;
};

std::vector<Preset> presets() {
  return {{"none", "none", {}},
          {"static interval=2", "static", {{"interval", "2"}}},
          {"static interval=3", "static", {{"interval", "3"}}},
          {"pab 2/4/6", "pab", {}},
          {"adacache fast", "adacache", {{"preset", "fast"}}},
          {"adacache slow", "adacache", {{"preset", "slow"}}},
          {"adacache fast+moreg", "adacache", {{"preset", "fast"}, {"moreg", "1"}}},
          {"adacache fast per-unit", "adacache", {{"preset", "fast"}, {"per", "unit"}}},
          {"adacache slow per-unit", "adacache", {{"preset", "slow"}, {"per", "unit"}}},
          {"teacache 0.1", "teacache", {{"threshold", "0.1"}}},
          {"teacache 0.2", "teacache", {{"threshold", "0.2"}}},
          {"fbcache 0.08", "fbcache", {{"threshold", "0.08"}}},
          {"magcache E=0.12 K=2", "magcache", {{"threshold", "0.12"}, {"K", "2"}}},
          {"magcache E=0.24 K=4", "magcache", {{"threshold", "0.24"}, {"K", "4"}}},
          {"easycache 0.05", "easycache", {{"threshold", "0.05"}}},
          {"easycache 0.1", "easycache", {{"threshold", "0.1"}}}};
}

std::vector<std::string> list_directory(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) fail("cannot read the directory '", dir, "'");
  while (dirent* e = ::readdir(d)) out.push_back(e->d_name);
  ::closedir(d);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  MpiEnv mpi(&argc, &argv);
  ModelOptions mo;
  int steps = 0, videos = 0, frames = 0, height = 0, width = 0;
  double cfg_scale = 0, flow_shift = -1;
  std::string json_path, only, blockcache_dir, magcache_ratios;
  bool negative_motion = false;
  po::options_description desc("options");
  add_model_options(desc, mo);
  // clang-format off
  desc.add_options()
    ("steps", po::value(&steps)->default_value(30), "sampling steps")
    ("videos", po::value(&videos)->default_value(8), "prompts x seeds per policy (demo prompts, or random captions)")
    ("cfg-scale", po::value(&cfg_scale)->default_value(0), "guidance scale (0: the model's default, see ditto sample --help)")
    ("flow-shift", po::value(&flow_shift)->default_value(-1), "rflow timestep shift s (t' = s t / (1 + (s - 1) t); 0: none; -1: the model's default)")
    ("frames", po::value(&frames)->default_value(0), "frames (0: the model's default)")
    ("height", po::value(&height)->default_value(0), "height in pixels (0: model default)")
    ("width", po::value(&width)->default_value(0), "width in pixels (0: model default)")
    ("blockcache", po::value(&blockcache_dir), "also run every schedule-delta-D.json in this directory (from ditto profile), and with calibration-delta-D.safetensors (from ditto calibrate) when present")
    ("magcache-ratios", po::value(&magcache_ratios), "MagCache's ratios for its rows (magcache.json from ditto profile; default: the model's published table)")
    ("only", po::value(&only), "run only these policies (comma-separated names; none always runs first)")
    ("negative-motion", po::bool_switch(&negative_motion), "demo prompts: guide away from the prompt with every moving object's direction reversed (a negative prompt; still prompts keep the null caption)")
    ("json", po::value(&json_path), "write the rows as JSON here");
  // clang-format on
  try {
    po::variables_map vm;
    if (!parse_command_line("bench_cache", "cache policies side by side", desc, {argv + 1, argv + argc}, vm)) return 0;
    register_demo();
    default_to_demo_model(mo);
    const at::TensorOptions options = resolve_tensor_options(mo, mpi);
    const std::unique_ptr<DiT> model = load_model(mo, options);
    const ModelOutline& outline = model->outline();
    const ModelFamily& family = family_of(outline);
    const DiTShape& cfg = outline.shape;
    const std::unique_ptr<VAE> vae = family.vae(outline);
    const bool pixel = vae->name() == "pixel";
    const TextEncoderKind* text_kind = text_encoder_kind(mo.model_dir);
    const bool demo = pixel && text_kind && text_kind->name == "ditto-words";  // demo prompts and the adherence checker
    const SamplingDefaults defaults = family.sampling(outline);
    if (cfg_scale == 0) cfg_scale = defaults.cfg_scale;
    if (!frames) frames = defaults.frames;
    if (!height) height = defaults.height;
    if (!width) width = defaults.width;
    const LatentShape ls = vae->latent_shape(frames, height, width);
    SamplerOptions so;
    so.name = defaults.sampler;
    so.steps = steps;
    so.timestep_transform = defaults.timestep_transform;
    so.shift = flow_shift < 0 ? defaults.flow_shift : flow_shift;
    const std::unique_ptr<Sampler> sampler =
        make_sampler(so, so.name == "rflow" && defaults.timestep_transform && family.timestep_transform
                             ? family.timestep_transform(outline, {frames, height, width}, options.dtype().toScalarType())
                             : TimestepTransform());
    const std::vector<int> experts = experts_per_step(outline, sampler->timesteps(), NAN);
    MpiCommunicator world(MPI_COMM_WORLD);
    Communicator* sp = world.size() > 1 ? &world : nullptr;

    // The same requests for every policy.
    std::vector<VideoRequest> requests;
    std::vector<DemoAttributes> attributes;
    const std::shared_ptr<const TextEncoder> text = demo ? find_text_encoder(mo.model_dir) : nullptr;
    for (int v = 0; v < videos; ++v) {
      VideoRequest req;
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1000 + v);
      req.z0 = at::randn({1, ls.channels, ls.frames, ls.height, ls.width}, gen, at::kFloat);
      if (demo) {
        attributes.push_back(demo_prompt_set(DemoPromptSet::Evaluation, v));
        const Caption cap = text->encode(demo_prompt(attributes.back()));
        req.caption_y = cap.y;
        req.caption_mask = cap.mask;
        if (negative_motion) {
          DemoAttributes reversed = attributes.back();
          bool moving = false;
          for (DemoObject* o : {static_cast<DemoObject*>(&reversed), reversed.second ? &*reversed.second : nullptr})
            if (o && !o->is_still()) o->direction ^= 1, moving = true;  // left <-> right, up <-> down
          if (moving) {
            const Caption neg = text->encode(demo_prompt(reversed));
            req.negative_y = neg.y;
            req.negative_mask = neg.mask;
          }
        }
        // A model without a learned null caption (Wan) guides away from the empty prompt, as sample does.
        if (!req.negative_y.defined() && !model->null_caption().defined()) {
          const Caption none = text->empty();
          req.negative_y = none.y;
          req.negative_mask = none.mask;
        }
      } else {
        req.caption_y = at::randn({1, 1, cfg.caption_tokens, cfg.caption_channels}, gen, at::kFloat);
        req.caption_mask = at::ones({1, cfg.caption_tokens}, at::kLong);
        add_benchmark_unconditional(req, *model);
      }
      req.height = float(height);
      req.width = float(width);
      req.cfg_scale = cfg_scale;
      if (outline.experts > 1) req.experts = experts, req.cfg_scale_2 = std::isnan(defaults.cfg_scale_2) ? cfg_scale : defaults.cfg_scale_2;
      requests.push_back(req);
    }
    // One untimed video of two steps first: the baseline's time must not carry the process's one-time
    // costs (thread pools, the allocator's first touches, GPU kernel selection), which made cached
    // rows that computed everything look faster than the uncached one at small sizes.
    {
      SamplerOptions warm_options = so;
      warm_options.steps = std::min(2, steps);
      const std::unique_ptr<Sampler> warm = make_sampler(warm_options);
      VideoRequest warm_request = requests.front();
      if (outline.experts > 1) warm_request.experts = experts_per_step(outline, warm->timesteps(), NAN);
      sample_video(*model, *warm, warm_request, {sp, nullptr});
      synchronize(options.device());
    }
    std::vector<at::Tensor> reference;
    nlohmann::ordered_json rows = nlohmann::json::array();
    double base_s = 0;
    if (world.rank() == 0) {
      std::printf("# cache policies: %s, latent %dx%dx%d, %d steps, flow shift %.2f, cfg %.1f, %d videos, %s %s, %d rank(s)\n",
                  model_source(mo).c_str(), ls.frames, ls.height, ls.width, steps, so.shift, cfg_scale, videos,
                  options.device().str().c_str(), dtype_name(options.dtype().toScalarType()).c_str(), world.size());
      std::printf("| policy | compute | speedup | PSNR (dB) | SSIM |%s\n",
                  demo ? " adherence | colour / shape / direction / speed / background | compute still / slow / fast |" : "");
      std::printf("|---|---|---|---|---|%s\n", demo ? "---|---|---|" : "");
    }
    std::vector<Preset> all_presets = presets();
    if (!blockcache_dir.empty()) {
      std::vector<std::pair<double, std::string>> found;
      for (const auto& f : list_directory(blockcache_dir)) {
        double d = 0;
        if (std::sscanf(f.c_str(), "schedule-delta-%lf.json", &d) == 1) found.push_back({d, f});
      }
      std::sort(found.begin(), found.end());
      for (const auto& [d, f] : found) {
        char label[64];
        std::snprintf(label, sizeof label, "blockcache delta=%g", d);
        all_presets.push_back({label, "blockcache", {{"schedule", blockcache_dir + "/" + f}}});
        const std::string cal = blockcache_dir + "/calibration-delta-" + f.substr(15, f.size() - 15 - 5) + ".safetensors";
        if (std::ifstream(cal))
          all_presets.push_back({std::string(label) + " +scale-shift", "blockcache",
                                 {{"schedule", blockcache_dir + "/" + f}, {"calibration", cal}}});
      }
    }
    for (const auto& preset : all_presets) {
      if (!only.empty() && preset.policy != "none" && ("," + only + ",").find("," + preset.policy + ",") == std::string::npos)
        continue;
      PolicyOptions popts = preset.options;
      if (preset.policy == "magcache" && !magcache_ratios.empty()) popts["ratios"] = magcache_ratios;
      std::unique_ptr<CachePolicy> policy;
      try {
        policy = make_cache_policy(preset.policy, popts, policy_context(outline, steps));
      } catch (const Error& e) {  // a policy this model cannot run (MoReg under Ulysses, MagCache without ratios)
        rows.push_back({{"policy", preset.label}, {"skipped", e.what()}});
        if (world.rank() == 0) std::printf("| %s | n/a: %s |\n", preset.label.c_str(), e.what());
        continue;
      }
      CacheRunner runner(*model, *policy, sp);
      double seconds = 0, psnr_sum = 0, ssim_sum = 0, computed = 0, total = 0;
      int adherent = 0, finite = 0;
      // Demo only: compute by the prompted motion of the first object (still, slow, fast), the
      // content-adaptivity an adaptive policy should show (fast videos get more compute).
      std::array<double, 3> motion_computed{}, motion_total{};
      // Demo only: how many videos show each prompted attribute (colour, shape, direction, speed, background).
      std::array<int, 5> attribute_ok{};
      nlohmann::json per_video = nlohmann::json::array();  // demo: what the checker read in each video
      for (int v = 0; v < videos; ++v) {
        runner.begin_video(sampler->timesteps(), experts);
        world.barrier();
        const auto t0 = std::chrono::steady_clock::now();
        at::Tensor z = sample_video(*model, *sampler, requests[v], {sp, nullptr}, nullptr, runner.token_forward());
        synchronize(options.device());
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const auto rep = runner.report();
        computed += rep["units_computed"].get<double>();
        total += rep["units_total"].get<double>();
        if (demo) {
          const int m = attributes[v].is_still() ? 0 : 1 + attributes[v].speed;
          motion_computed[m] += rep["units_computed"].get<double>();
          motion_total[m] += rep["units_total"].get<double>();
        }
        if (preset.policy == "none") reference.push_back(z);
        const at::Tensor& ref = reference[v];
        const double range = pixel ? 2.0 : (ref.max() - ref.min()).item<double>();
        const at::Tensor zz = pixel ? z.clamp(-1, 1) : z, rr = pixel ? ref.clamp(-1, 1) : ref;
        const double p = psnr(zz, rr, range);
        if (std::isfinite(p)) psnr_sum += p, ++finite;
        ssim_sum += ssim(zz, rr, range);
        if (demo) {
          const Adherence a = check_adherence(z[0], attributes[v]);
          adherent += a.ok();
          const auto each = a.attributes();
          for (int k = 0; k < 5; ++k) attribute_ok[k] += each[k];
          nlohmann::json seen = a.json();
          seen["prompt"] = demo_prompt(attributes[v]);
          per_video.push_back(seen);
        }
      }
      at::Tensor slowest = at::tensor({seconds}, at::kDouble);
      world.all_reduce(slowest, ReduceOp::Max);
      seconds = slowest.item<double>();
      if (preset.policy == "none") base_s = seconds;
      const double psnr_mean = finite ? psnr_sum / finite : INFINITY;
      nlohmann::ordered_json row = {{"policy", preset.label},         {"compute_fraction", computed / total},
                                    {"seconds", seconds},             {"speedup", base_s / seconds},
                                    {"psnr_db", finite ? psnr_mean : -1}, {"ssim", ssim_sum / videos}};
      const char* motions[3] = {"still", "slow", "fast"};
      std::string by_motion;
      if (demo) {
        row["adherence"] = static_cast<double>(adherent) / videos;
        for (int k = 0; k < 5; ++k)
          row["adherence_" + std::string(Adherence::kAttributes[k])] = static_cast<double>(attribute_ok[k]) / videos;
        row["videos"] = per_video;
        for (int m = 0; m < 3; ++m) {
          char cell[16] = "-";
          if (motion_total[m] > 0) {
            row["compute_fraction_" + std::string(motions[m])] = motion_computed[m] / motion_total[m];
            std::snprintf(cell, sizeof cell, "%.1f%%", 100 * motion_computed[m] / motion_total[m]);
          }
          by_motion += (m ? " / " : " ") + std::string(cell);
        }
      }
      rows.push_back(row);
      if (world.rank() == 0) {
        char adh[160] = "";
        if (demo)
          std::snprintf(adh, sizeof adh, " %d/%d | %d / %d / %d / %d / %d |%s |", adherent, videos, attribute_ok[0],
                        attribute_ok[1], attribute_ok[2], attribute_ok[3], attribute_ok[4], by_motion.c_str());
        std::printf("| %s | %.1f%% | %.2fx | %s | %.4f |%s\n", preset.label.c_str(), 100 * computed / total,
                    base_s / seconds, finite ? std::to_string(psnr_mean).substr(0, 5).c_str() : "inf",
                    ssim_sum / videos, adh);
        std::fflush(stdout);
      }
    }
    if (world.rank() == 0 && !json_path.empty())
      std::ofstream(json_path) << nlohmann::ordered_json{{"ditto_version", ditto_version()}, {"ditto_git_sha", ditto_git_sha()}, {"model", model_source(mo)}, {"steps", steps}, {"flow_shift", so.shift},
                                                         {"videos", videos}, {"ranks", world.size()},
                                                         {"rows", rows}}.dump(2)
                               << "\n";
  } catch (const std::exception& e) {
    mpi.abort(std::string("bench_cache: ") + e.what());
  }
  return 0;
}
