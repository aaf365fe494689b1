// `ditto train`: trains the demo text-to-video model (a pixel-space STDiT plus ditto's own text
// encoder) on procedurally generated clips with rectified flow, AdamW, caption dropout for CFG, EMA
// weights, periodic checkpoints and resume.
#include <sys/stat.h>

#include <ATen/autocast_mode.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <random>

#include "launcher/common.h"
#include "launcher/progress.h"
#include "model/demo_data.h"
#include "model/error.h"
#include "model/safetensors.h"
#include "model/text_encoder.h"

namespace ditto {

namespace {

struct Trainable {
  std::string name;  // "model.<param>" or "text.<param>"
  at::Tensor param, ema, m, v;
  bool decay;  // weight decay on matrices only
};

}  // namespace

int run_train(const std::vector<std::string>& args, const MpiEnv& mpi) {
  std::string out_dir, resume, config_name;
  int steps = 0, batch = 0, checkpoint_every = 0, threads = 0, warmup = 0, log_every = 0;
  double lr = 0, ema_decay = 0, dropout = 0, wd = 0, two_objects = 0, final_lr = 0;
  uint64_t seed = 0;
  bool quiet = false, fixed_batch = false;
  po::options_description desc("options");
  // clang-format off
  desc.add_options()
    ("out", po::value(&out_dir)->default_value("train_out"), "directory: checkpoint.safetensors while training, the model (EMA weights) at the end")
    ("config", po::value(&config_name)->default_value("ditto-demo"), "model config to train")
    ("steps", po::value(&steps)->default_value(3000), "optimizer steps (total, including resumed ones)")
    ("batch", po::value(&batch)->default_value(8), "clips per step")
    ("lr", po::value(&lr)->default_value(5e-4), "AdamW learning rate (after a linear warm-up)")
    ("warmup", po::value(&warmup)->default_value(100), "warm-up steps")
    ("final-lr", po::value(&final_lr)->default_value(0.1), "the learning rate at the last step, as a fraction of --lr (cosine decay after the warm-up)")
    ("two-objects", po::value(&two_objects)->default_value(0.3), "fraction of clips with two objects")
    ("weight-decay", po::value(&wd)->default_value(0.01), "AdamW weight decay (matrices only)")
    ("ema", po::value(&ema_decay)->default_value(0.995), "EMA decay of the exported weights")
    ("caption-dropout", po::value(&dropout)->default_value(0.1), "probability of training a clip with the null caption (for CFG)")
    ("checkpoint-every", po::value(&checkpoint_every)->default_value(200), "steps between checkpoints")
    ("resume", po::value(&resume), "continue from this checkpoint.safetensors")
    ("seed", po::value(&seed)->default_value(0), "seed of the initial weights and the data stream")
    ("threads", po::value(&threads)->default_value(0), "CPU threads (0: LibTorch's default)")
    ("log-every", po::value(&log_every)->default_value(50), "print the loss every N steps (0: never)")
    ("fixed-batch", po::bool_switch(&fixed_batch), "train on one fixed batch (a check that the loss goes down)")
    ("quiet", po::bool_switch(&quiet), "no progress output");
  // clang-format on
  po::variables_map vm;
  if (!parse_command_line("train", "train the demo text-to-video model", desc, args, vm)) return 0;
  if (mpi.size() > 1) fail("ditto train runs on one rank");
  ModelOptions mo;
  mo.threads = threads;
  const at::TensorOptions options = resolve_tensor_options(mo, mpi).dtype(at::kFloat);
  const STDiT3Config cfg = builtin_config(config_name);
  if (cfg.latent_space != LatentSpace::Pixel || cfg.in_channels != 3)
    fail("ditto train makes pixel-space RGB models; config '", config_name, "' is not one");
  TextEncoderConfig tc;
  tc.vocab = demo_vocabulary();
  tc.dim = cfg.caption_channels;
  tc.max_tokens = cfg.model_max_length;
  STDiT3 init = STDiT3::training_init(cfg, seed, options);
  TextEncoder text = TextEncoder::random(tc, seed + 1, options);

  // Every trained tensor with its EMA and Adam moments (buffers rope.freqs and y_embedding stay fixed).
  std::vector<Trainable> params;
  std::map<std::string, at::Tensor> model_weights = init.weights();
  for (auto& [name, t] : model_weights) {
    if (name == "rope.freqs" || name == "y_embedder.y_embedding") continue;
    params.push_back({"model." + name, t, t.detach().clone(), at::zeros_like(t), at::zeros_like(t), t.dim() >= 2});
  }
  for (auto& [name, t] : text.weights())
    params.push_back({"text." + name, t, t.detach().clone(), at::zeros_like(t), at::zeros_like(t),
                      t.dim() >= 2 && name.find("embedding") == std::string::npos});
  int start = 0;
  if (!resume.empty()) {
    SafetensorsFile f(resume);
    for (auto& p : params) {
      for (auto [prefix, dst] : {std::pair{"", &p.param}, {"ema.", &p.ema}, {"adam_m.", &p.m}, {"adam_v.", &p.v}}) {
        const std::string key = prefix + p.name;
        if (!f.contains(key)) fail("checkpoint '", resume, "' has no tensor '", key, "' (another config?)");
        dst->copy_(f.tensor(key, options));
      }
    }
    start = std::stoi(f.metadata().at("step"));
  }
  for (auto& p : params) p.param.requires_grad_(true);
  STDiT3 model(cfg, model_weights);
  ::mkdir(out_dir.c_str(), 0755);

  auto save = [&](const std::string& path, int step, double loss) {
    NamedTensors t;
    for (const auto& p : params) {
      t.emplace_back(p.name, p.param.detach());
      t.emplace_back("ema." + p.name, p.ema);
      t.emplace_back("adam_m." + p.name, p.m);
      t.emplace_back("adam_v." + p.name, p.v);
    }
    save_safetensors(path, t, {{"step", std::to_string(step)}, {"loss", std::to_string(loss)}, {"config", config_name}});
  };

  const at::Tensor null_y = model.null_caption().detach();  // [1, 1, L, D]
  Progress progress(steps - start, "training", !quiet);
  const auto t0 = std::chrono::steady_clock::now();
  double loss_ema = -1;
  for (int step = start; step < steps; ++step) {
    const auto ts = std::chrono::steady_clock::now();
    // The data stream is a function of the step, so a resumed run sees what it would have seen.
    std::mt19937_64 rng(seed * 1000003 + (fixed_batch ? 0 : step));
    std::vector<at::Tensor> clips;
    std::vector<std::string> prompts;
    for (int b = 0; b < batch; ++b) {
      DemoAttributes a = random_demo_attributes(rng(), two_objects);
      clips.push_back(render_demo_clip(a, rng()));
      // Some prompts leave the background out ("a red circle moving right slow"): any background fits.
      if (rng() % 4 == 0) a.background = -1;
      prompts.push_back(demo_prompt(a));
    }
    at::Tensor x0 = at::stack(clips).to(options);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(rng());
    at::Tensor noise = at::randn(x0.sizes(), gen, at::kFloat).to(options.device());
    // Uniform t, as Open-Sora's rectified flow trains: every sampling step's noise level gets trained,
    // the near-pure-noise start included (where the layout of the clip is decided).
    at::Tensor t = at::rand({batch}, gen, at::kFloat).to(options.device());
    at::Tensor drop = (at::rand({batch}, gen, at::kFloat) < dropout).to(options.device());
    auto [y, mask] = text.encode(prompts);
    y = at::where(drop.view({batch, 1, 1, 1}), null_y.expand_as(y), y);
    const at::Tensor tb = t.view({batch, 1, 1, 1, 1});
    ForwardArgs a;
    a.x = (1 - tb) * x0 + tb * noise;
    a.timestep = t * 1000;
    a.y = y;
    a.mask = mask;
    a.fps = at::full({1}, 24.0f, options);
    a.height = at::full({1}, 32.0f, options);
    a.width = at::full({1}, 32.0f, options);
    at::Tensor loss;
    {
      // bf16 autocast on the GPU (the weights, Adam moments and EMA stay float32).
      const bool cuda = options.device().is_cuda();
      if (cuda) {
        at::autocast::set_autocast_enabled(at::kCUDA, true);
        at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
      }
      at::Tensor pred = model.forward(a);
      if (cuda) {
        at::autocast::set_autocast_enabled(at::kCUDA, false);
        at::autocast::clear_cache();
      }
      loss = (pred.to(at::kFloat) - (x0 - noise)).pow(2).mean();
    }
    for (auto& p : params) p.param.mutable_grad() = at::Tensor();
    loss.backward();
    {
      c10::NoGradGuard no_grad;
      // Global gradient-norm clipping at 1, then AdamW.
      double norm2 = 0;
      for (auto& p : params) norm2 += p.param.grad().pow(2).sum().item<double>();
      const double clip = std::min(1.0, 1.0 / (std::sqrt(norm2) + 1e-6));
      // Linear warm-up, then cosine decay from lr to final_lr * lr at the last step.
      const double progress_frac = steps > warmup ? std::clamp((step + 1.0 - warmup) / (steps - warmup), 0.0, 1.0) : 1.0;
      const double cosine = final_lr + (1 - final_lr) * 0.5 * (1 + std::cos(M_PI * progress_frac));
      const double rate = lr * std::min(1.0, (step + 1.0) / warmup) * (step + 1 < warmup ? 1.0 : cosine);
      const double b1 = 0.9, b2 = 0.999, k = step + 1;
      for (auto& p : params) {
        at::Tensor g = p.param.grad() * clip;
        p.m.mul_(b1).add_(g, 1 - b1);
        p.v.mul_(b2).addcmul_(g, g, 1 - b2);
        at::Tensor update = (p.m / (1 - std::pow(b1, k))) / ((p.v / (1 - std::pow(b2, k))).sqrt() + 1e-8);
        if (p.decay) update = update + wd * p.param;
        p.param.sub_(update * rate);
        p.ema.mul_(ema_decay).add_(p.param, 1 - ema_decay);
      }
    }
    const double l = loss.item<double>();
    loss_ema = loss_ema < 0 ? l : 0.98 * loss_ema + 0.02 * l;
    const double step_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    progress.update(step + 1 - start, step_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (log_every > 0 && (step + 1) % log_every == 0)
      std::cerr << "train step " << step + 1 << " loss " << l << " (smoothed " << loss_ema << "), "
                << batch / step_s << " clips/s\n";
    if ((step + 1) % checkpoint_every == 0 || step + 1 == steps) save(out_dir + "/checkpoint.safetensors", step + 1, loss_ema);
  }
  progress.finish();

  // Export the EMA weights as a model directory.
  std::map<std::string, at::Tensor> ema_model = init.weights(), ema_text;
  for (const auto& p : params) {
    if (p.name.rfind("model.", 0) == 0) ema_model[p.name.substr(6)] = p.ema;
    else ema_text[p.name.substr(5)] = p.ema;
  }
  for (auto& [name, t] : ema_model) t = t.detach().clone();
  STDiT3(cfg, ema_model).save_pretrained(out_dir);
  TextEncoder(tc, ema_text).save(out_dir);
  std::cerr << "ditto train: wrote " << out_dir << " (config.json, model.safetensors, text_encoder.safetensors; "
            << "final smoothed loss " << loss_ema << ")\n";
  return 0;
}

}  // namespace ditto
