// The demo's trainer (`ditto train`): trains the demo text-to-video model (a pixel-space STDiT plus ditto's own text
// encoder) on procedurally generated clips with rectified flow, AdamW, caption dropout for CFG, EMA
// weights, periodic checkpoints and resume.
#include <sys/stat.h>

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <random>
#include <sstream>
#include <tuple>

#include "demo/adamw.h"
#include "demo/demo_data.h"
#include "demo/train_loss.h"
#include "demo/trainer.h"
#include "demo/word_encoder.h"
#include "model/error.h"
#include "model/family.h"
#include "model/layers.h"
#include "model/safetensors.h"
#include "model/sampler.h"
#include "model/stdit3.h"
#include "pipeline/model_options.h"
#include "pipeline/progress.h"

namespace ditto {

namespace {

struct Trainable {
  std::string name;  // "model.<param>" or "text.<param>"
  at::Tensor param, ema, m, v;
  bool decay;  // weight decay on matrices only
};

// bf16 autocast on CUDA for the guard's lifetime (nothing on the CPU).
class BfloatAutocast {
 public:
  explicit BfloatAutocast(bool on) : on_(on) {
    if (!on_) return;
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  }
  ~BfloatAutocast() {
    if (!on_) return;
    at::autocast::set_autocast_enabled(at::kCUDA, false);
    at::autocast::clear_cache();
  }
  BfloatAutocast(const BfloatAutocast&) = delete;
  BfloatAutocast& operator=(const BfloatAutocast&) = delete;

 private:
  bool on_;
};

// The options of `ditto train` (see --help for each).
struct TrainOptions {
  std::string out_dir, resume, init_from, config_name;
  int steps = 0, batch = 0, checkpoint_every = 0, threads = 0, warmup = 0, log_every = 0, eval_every = 0;
  int image_batch = 0, image_every = 0, eval_clips = 0;
  double max_seconds = 0, t_shift = 0, sign_weight = 0, word_identity = 0;
  std::string t_sampling;
  double lr = 0, ema_decay = 0, dropout = 0, wd = 0, two_objects = 0, final_lr = 0;
  uint64_t seed = 0;
  bool quiet = false, fixed_batch = false, restart_schedule = false, sign_pairs = false;
};

// Parses and checks the options; false when --help was printed.
bool parse_train_options(const std::vector<std::string>& args, TrainOptions& o) {
  po::options_description desc("options");
  // clang-format off
  desc.add_options()
    ("out", po::value(&o.out_dir)->default_value("train_out"), "directory: checkpoint.safetensors while training, the model (EMA weights) at the end")
    ("config", po::value(&o.config_name)->default_value("ditto-demo"), "model config to train")
    ("steps", po::value(&o.steps)->default_value(3000), "optimizer steps (total, including resumed ones)")
    ("batch", po::value(&o.batch)->default_value(8), "clips per step")
    ("lr", po::value(&o.lr)->default_value(8e-4), "AdamW learning rate (after a linear warm-up)")
    ("warmup", po::value(&o.warmup)->default_value(200), "warm-up steps")
    ("final-lr", po::value(&o.final_lr)->default_value(0.1), "the learning rate at the last step, as a fraction of --lr (cosine decay after the warm-up)")
    ("image-batch", po::value(&o.image_batch)->default_value(128), "joint image-video training as Open-Sora does: the image steps train on this many single frames (one random frame of a clip each; 0: videos only). Images teach shape, colour and background at 1/16 of a clip's cost, videos the motion")
    ("image-every", po::value(&o.image_every)->default_value(2), "with --image-batch: every N-th step is an image step")
    ("t-sampling", po::value(&o.t_sampling)->default_value("uniform"), "how training draws noise levels t: uniform; logit-normal (sigmoid of a standard normal, as Open-Sora 1.2 and SD3 train: more weight on the middle, where shapes and colours are decided); or shifted (uniform u through the flow shift s u / (1 + (s - 1) u), s = --t-shift: more weight on high noise, where the layout and the motion are decided)")
    ("t-shift", po::value(&o.t_shift)->default_value(3.0), "the shift s of --t-sampling shifted (3: half the noise levels above 0.75)")
    ("word-identity", po::value(&o.word_identity)->default_value(0), "weight of an auxiliary text-encoder loss: every output token must point back at its own word among the input token embeddings (cross-entropy over the vocabulary), so words the diffusion loss has not yet made the encoder tell apart (left and right) stay apart (0: off)")
    ("two-objects", po::value(&o.two_objects)->default_value(0.3), "fraction of clips with two objects")
    ("sign-pairs", po::bool_switch(&o.sign_pairs), "draw every batch as pairs of twins: the same scene, frame, noise and noise level, the second with every object moving the opposite way. The pair's loss splits into the error of the pair's mean and of its difference; the difference is what only the direction words (left or right, up or down) can explain at high noise")
    ("sign-weight", po::value(&o.sign_weight)->default_value(0), "with --sign-pairs: extra weight on the difference part of each pair's loss, 1/4 mean((v_a - v_b) - (u_a - u_b))^2 (0: the plain loss of the pair's two clips; pairs trained with the null caption are left out of it)")
    ("weight-decay", po::value(&o.wd)->default_value(0.01), "AdamW weight decay (matrices only)")
    ("ema", po::value(&o.ema_decay)->default_value(0.995), "EMA decay of the exported weights")
    ("caption-dropout", po::value(&o.dropout)->default_value(0.1), "probability of training a clip with the null caption (for CFG)")
    ("checkpoint-every", po::value(&o.checkpoint_every)->default_value(200), "steps between checkpoints")
    ("max-seconds", po::value(&o.max_seconds)->default_value(0), "stop after the first step that ends this many seconds into the run (0: no limit), writing the checkpoint and the model (EMA weights) at that step; --resume the checkpoint to go on with the same schedule")
    ("resume", po::value(&o.resume), "continue from this checkpoint.safetensors")
    ("init-from", po::value(&o.init_from), "start from this model directory's weights (e.g. the shipped demo model; a new run: step 0, fresh optimizer state, the architecture of --config)")
    ("restart-schedule", po::bool_switch(&o.restart_schedule), "with --resume: warm up again and decay over this run's own steps (a new training phase) instead of continuing the schedule of steps 0..--steps")
    ("seed", po::value(&o.seed)->default_value(0), "seed of the initial weights and the data stream")
    ("threads", po::value(&o.threads)->default_value(0), "CPU threads (0: LibTorch's default)")
    ("log-every", po::value(&o.log_every)->default_value(50), "print the loss every N steps (0: never)")
    ("eval-every", po::value(&o.eval_every)->default_value(0), "every N steps (and at the start), the loss on a fixed held-out batch with its own captions, with each clip given another clip's caption, with the null caption, and with its own caption but the motion wrong: the gaps show whether the text conditioning, and its motion words, have taken hold (0: never)")
    ("eval-clips", po::value(&o.eval_clips)->default_value(32), "clips in the held-out batch (a multiple of 4)")
    ("fixed-batch", po::bool_switch(&o.fixed_batch), "train on one fixed batch (a check that the loss goes down)")
    ("quiet", po::bool_switch(&o.quiet), "no progress output");
  // clang-format on
  po::variables_map vm;
  if (!parse_command_line("train", "train the demo text-to-video model", desc, args, vm)) return false;
  if (o.t_sampling != "uniform" && o.t_sampling != "logit-normal" && o.t_sampling != "shifted")
    fail("--t-sampling must be uniform, logit-normal or shifted, got '", o.t_sampling, "'");
  if (o.t_sampling == "shifted" && !(o.t_shift > 0 && std::isfinite(o.t_shift)))
    fail("--t-shift must be a positive number, got ", o.t_shift);
  if (o.eval_clips < 4 || o.eval_clips % 4) fail("--eval-clips must be a positive multiple of 4, got ", o.eval_clips);
  if (o.image_every < 1) fail("--image-every must be at least 1, got ", o.image_every);
  if (o.max_seconds < 0) fail("--max-seconds must be >= 0, got ", o.max_seconds);
  if (o.restart_schedule && o.resume.empty()) fail("--restart-schedule needs --resume");
  if (!o.init_from.empty() && !o.resume.empty()) fail("--init-from and --resume exclude each other");
  if (o.sign_pairs && (o.batch % 2 || o.image_batch % 2))
    fail("--sign-pairs needs even --batch and --image-batch (pairs of twins), got ", o.batch, " and ", o.image_batch);
  if (!(o.sign_weight >= 0 && std::isfinite(o.sign_weight))) fail("--sign-weight must be >= 0, got ", o.sign_weight);
  if (o.sign_weight > 0 && !o.sign_pairs) fail("--sign-weight needs --sign-pairs");
  if (!(o.word_identity >= 0 && std::isfinite(o.word_identity))) fail("--word-identity must be >= 0, got ", o.word_identity);
  return true;
}

// Trains and exports the model (see the file comment); the options were checked.
int train(const TrainOptions& o, const MpiEnv& mpi) {
  // The options under their own names (the body below reads them so).
  const std::string& out_dir = o.out_dir;
  const std::string& resume = o.resume;
  const std::string& init_from = o.init_from;
  const std::string& config_name = o.config_name;
  const int& steps = o.steps;
  const int& batch = o.batch;
  const int& checkpoint_every = o.checkpoint_every;
  const int& threads = o.threads;
  const int& warmup = o.warmup;
  const int& log_every = o.log_every;
  const int& eval_every = o.eval_every;
  const int& image_batch = o.image_batch;
  const int& image_every = o.image_every;
  const int& eval_clips = o.eval_clips;
  const double& max_seconds = o.max_seconds;
  const double& t_shift = o.t_shift;
  const double& sign_weight = o.sign_weight;
  const double& word_identity = o.word_identity;
  const std::string& t_sampling = o.t_sampling;
  const double& lr = o.lr;
  const double& ema_decay = o.ema_decay;
  const double& dropout = o.dropout;
  const double& wd = o.wd;
  const double& two_objects = o.two_objects;
  const double& final_lr = o.final_lr;
  const uint64_t& seed = o.seed;
  const bool& quiet = o.quiet;
  const bool& fixed_batch = o.fixed_batch;
  const bool& restart_schedule = o.restart_schedule;
  const bool& sign_pairs = o.sign_pairs;
  ModelOptions mo;
  mo.threads = threads;
  const at::TensorOptions options = resolve_tensor_options(mo, mpi).dtype(at::kFloat);
  const ModelFamily& family = family_for_config(config_name);
  const ModelOutline outline = family.builtin_outline(config_name);
  if (family.vae(outline)->name() != "pixel" || outline.shape.in_channels != 3)
    fail("ditto train makes pixel-space RGB models; config '", config_name, "' is not one");
  if (!family.training_init || !family.from_weights || !family.save)
    fail("ditto train cannot train the ", family.name, " family's models");
  WordEncoderConfig tc;
  tc.vocab = demo_vocabulary();
  tc.dim = outline.shape.caption_channels;
  tc.max_tokens = outline.shape.caption_tokens;
  // Fresh weights (the family's training initialisation), or a model directory's as the start of a new run.
  if (!init_from.empty() && !family.training_from) fail("--init-from cannot start a ", family.name, " model");
  std::map<std::string, at::Tensor> model_weights = init_from.empty()
                                                        ? family.training_init(config_name, seed, options)
                                                        : family.training_from(init_from, config_name, seed, options);
  WordEncoder text = init_from.empty() ? WordEncoder::random(tc, seed + 1, options) : WordEncoder::load(init_from, options);
  if (!init_from.empty() && (text.config().vocab != tc.vocab || text.config().dim != tc.dim ||
                             text.config().max_tokens != tc.max_tokens))
    fail("--init-from '", init_from, "': its text encoder does not match config '", config_name,
         "' (vocabulary, width or length differ)");
  const std::map<std::string, at::Tensor> initial = model_weights;  // the fixed tensors, exported as they are

  // Every trained tensor with its EMA and Adam moments (the family's buffers and tables stay fixed).
  std::vector<Trainable> params;
  for (auto& [name, t] : model_weights) {
    if (family.frozen(name)) continue;
    params.push_back({"model." + name, t, t.detach().clone(), at::zeros_like(t), at::zeros_like(t), t.dim() >= 2});
  }
  for (auto& [name, t] : text.weights())
    params.push_back({"text." + name, t, t.detach().clone(), at::zeros_like(t), at::zeros_like(t),
                      t.dim() >= 2 && name.find("embedding") == std::string::npos});
  int start = 0;
  double resumed_loss = -1;  // the checkpoint's smoothed loss: the smoothing goes on from it
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
    if (f.metadata().count("loss")) resumed_loss = std::stod(f.metadata().at("loss"));
  }
  for (auto& p : params) p.param.requires_grad_(true);
  // AdamW: weight decay on the matrices only (gradient clipping at 1).
  std::vector<AdamWGroup> groups(2);
  groups[0].weight_decay = wd;
  for (auto& p : params) {
    AdamWGroup& g = groups[p.decay ? 0 : 1];
    g.params.push_back(p.param);
    g.m.push_back(p.m);
    g.v.push_back(p.v);
    g.ema.push_back(p.ema);
  }
  AdamWSettings adamw;
  adamw.ema_decay = ema_decay;
  const std::unique_ptr<DiT> model_ptr = family.from_weights(config_name, model_weights);
  const DiT& model = *model_ptr;
  const auto* stdit3 = dynamic_cast<const STDiT3*>(&model);
  const bool reads_frame_index = stdit3 && stdit3->config().reads_frame_index();
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

  // The caption-dropout caption: the learned null caption [1, 1, L, D] with the caption's mask, or for
  // a model without one (Wan) the empty prompt: no valid token (all rows zero, as the pipeline's
  // unconditional branch reads it).
  const at::Tensor learned_null = model.null_caption();
  const at::Tensor null_y = learned_null.defined() ? learned_null.detach().to(options) : text.empty().y.to(options);
  auto null_mask = [&](const at::Tensor& mask) { return learned_null.defined() ? mask : at::zeros_like(mask); };
  // A batch of clips and their prompts, drawn from rng (frame_index: an image step's [n, 1]).
  // With `single_frames`, each clip is cut to one random frame of it (an image step); the model is
  // told which frame it is (where the config has a temporal position embedding).
  struct Batch {
    at::Tensor x0, frame_index;
    std::vector<std::string> prompts;
    std::vector<DemoAttributes> attributes;  // what each prompt says
  };
  // With `pairs`, clips 2i and 2i + 1 are twins: one scene, render seed and frame, the second with the
  // motion reversed.
  auto make_batch = [&](std::mt19937_64& rng, int n, double two, bool single_frames = false, bool pairs = false) {
    // The random draws stay in one sequential order (the stream is a function of the seed and step);
    // only the rendering, the costly part, runs in parallel.
    struct Draw {
      DemoAttributes scene;  // what the clip shows
      uint64_t seed;
      int64_t frame;
    };
    std::vector<Draw> draws;
    Batch out;
    const int64_t frames = DemoClipSettings{}.frames;
    for (int b = 0; b < n; b += pairs ? 2 : 1) {
      DemoAttributes a = random_demo_attributes(rng(), two);
      Draw d{a, rng(), 0};
      if (single_frames) d.frame = static_cast<int64_t>(rng() % frames);
      // Some prompts leave the background out ("a red circle moving right slow"): any background fits.
      const bool unnamed_background = rng() % 4 == 0;
      for (int twin = 0; twin < (pairs ? 2 : 1); ++twin) {
        if (twin) {
          a = reversed_motion(a);
          d.scene = reversed_motion(d.scene);
        }
        draws.push_back(d);
        if (unnamed_background) a.background = -1;
        out.prompts.push_back(demo_prompt(a));
        out.attributes.push_back(a);
      }
    }
    std::vector<at::Tensor> clips(n);
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const Draw& d = draws[b];
        clips[b] = single_frames ? render_demo_frame(d.scene, d.seed, static_cast<int>(d.frame))
                                 : render_demo_clip(d.scene, d.seed);
      }
    });
    out.x0 = at::stack(clips).to(options);
    if (single_frames && reads_frame_index) {
      std::vector<int64_t> index;
      for (const Draw& d : draws) index.push_back(d.frame);
      out.frame_index = at::tensor(index).view({n, 1});
    }
    return out;
  };
  // The model's velocity at x_t = (1 - t) x0 + t noise toward the data (its target: x0 - noise): the
  // sampler's prediction from the model's output (Wan's flow points the other way).
  const DiTShape& shape = model.shape();
  auto velocity = [&](const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t, const at::Tensor& y,
                      const at::Tensor& mask, const at::Tensor& frame_index = {}) {
    const int64_t n = x0.size(0);
    const at::Tensor tb = t.view({n, 1, 1, 1, 1});
    DiTInputs a;
    a.x = (1 - tb) * x0 + tb * noise;
    a.timestep = t * 1000;
    a.y = y;
    a.mask = mask;
    a.frame_index = frame_index;
    if (stdit3) {  // Open-Sora's size and rate conditioning
      a.fps = at::full({1}, 24.0f, options);
      a.height = at::full({1}, static_cast<float>(x0.size(3)), options);
      a.width = at::full({1}, static_cast<float>(x0.size(4)), options);
    }
    // bf16 autocast on the GPU (the weights, Adam moments and EMA stay float32), off again however
    // the forward ends.
    const BfloatAutocast autocast(options.device().is_cuda());
    const at::Tensor out = model.forward(a).to(at::kFloat);
    const TokenGrid g = token_grid(x0.size(2), x0.size(3), x0.size(4), shape.patch);
    return layers::unpatchify(model.prediction(layers::patchify(out, shape.patch)), shape.patch, shape.in_channels, g.t,
                              g.h, g.w, g.tx, g.hx, g.wx);
  };
  // The rectified-flow loss per clip.
  auto flow_loss = [&](const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t, const at::Tensor& y,
                       const at::Tensor& mask, const at::Tensor& frame_index = {}) {
    return (velocity(x0, noise, t, y, mask, frame_index) - (x0 - noise)).pow(2).mean({1, 2, 3, 4});
  };
  // Held-out evaluation: one-object clips from a stream no training step draws (seed offset), at
  // noise levels spread evenly over (0, 1); the same noise for every caption variant. Drawn once.
  struct HeldOut {
    at::Tensor x0, noise, t;
    // Each clip's caption, the caption seven clips on, and its own caption with the motion wrong
    // (the opposite direction; "moving right slow" for a still object).
    std::vector<std::string> prompts, others, wrong_motion;
    at::Tensor moving;  // [n] 1 where the clip's object moves (its wrong motion is then the reverse), else 0
  } held;
  if (eval_every > 0) {
    const int n = eval_clips;
    std::mt19937_64 rng(seed * 1000003 + 0x5eed0000ULL);
    Batch b = make_batch(rng, n, 0.0);
    held.x0 = b.x0;
    held.prompts = b.prompts;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(rng());
    held.noise = at::randn(held.x0.sizes(), gen, at::kFloat).to(options.device());
    held.t = ((at::arange(n, at::kFloat) + 0.5) / n).to(options.device());
    for (int i = 0; i < n; ++i) held.others.push_back(held.prompts[(i + 7) % n]);  // never its own: n is a multiple of 4
    std::vector<float> moving;
    for (DemoAttributes a : b.attributes) {
      moving.push_back(a.is_still() ? 0.0f : 1.0f);
      if (a.is_still()) a.direction = 1;  // "moving right slow" (a still object's speed field is 0)
      else a = reversed_motion(a);
      held.wrong_motion.push_back(demo_prompt(a));
    }
    held.moving = at::tensor(moving);
  }
  // The held-out losses of the weights in the model now (`label` names them in the log).
  auto evaluate_weights = [&](int step, const char* label) {
    c10::NoGradGuard no_grad;
    const at::Tensor &x0 = held.x0, &noise = held.noise, &t = held.t;
    auto [y, mask] = text.encode_batch(held.prompts);
    auto [yo, masko] = text.encode_batch(held.others);
    // Per quarter of the noise range (t in (0, .25), ..., (.75, 1)) and overall.
    auto quarters = [](const at::Tensor& l) { return l.view({4, -1}).mean(1).cpu(); };
    const at::Tensor own_clip = flow_loss(x0, noise, t, y, mask), own = quarters(own_clip);
    const at::Tensor other = quarters(flow_loss(x0, noise, t, yo, masko));
    const at::Tensor null = quarters(flow_loss(x0, noise, t, null_y.expand_as(y), null_mask(mask)));
    auto [ym, maskm] = text.encode_batch(held.wrong_motion);
    const at::Tensor wrong_clip = flow_loss(x0, noise, t, ym, maskm);
    const at::Tensor wrong_motion = quarters(wrong_clip);
    // The sign alone: the moving clips with their direction reversed, in the top noise quarter (where
    // the noise says least about where the object is) and overall.
    const at::Tensor top_quarter = held.moving * (at::arange(held.moving.size(0)) >= held.moving.size(0) * 3 / 4);
    const at::Tensor own_cpu = own_clip.cpu(), wrong_cpu = wrong_clip.cpu();
    const double sign_own[2] = {(own_cpu * held.moving).sum().item<double>(), (own_cpu * top_quarter).sum().item<double>()};
    const double sign_wrong[2] = {(wrong_cpu * held.moving).sum().item<double>(), (wrong_cpu * top_quarter).sum().item<double>()};
    auto percent_gap = [](double own_loss, double wrong_loss) {
      return wrong_loss > 0 ? std::to_string(-100 * (1 - own_loss / wrong_loss)) + "%" : std::string("n/a (no moving clip)");
    };
    auto row = [](const char* what, const at::Tensor& l) {
      std::ostringstream o;
      o << what << " " << l.mean().item<double>() << " [";
      for (int q = 0; q < 4; ++q) o << (q ? " " : "") << l[q].item<double>();
      return o.str() + "]";
    };
    const double gain = 1 - own.mean().item<double>() / null.mean().item<double>();
    std::cerr << label << " step " << step << ": loss (by noise quarter) " << row("own caption", own) << ", "
              << row("another clip's", other) << ", " << row("null", null) << ", "
              << row("own with the motion wrong", wrong_motion) << "; own vs null " << -100 * gain
              << "%, own vs motion wrong " << -100 * (1 - own.mean().item<double>() / wrong_motion.mean().item<double>())
              << "% (the motion words are read where this is clearly negative); sign (moving clips, direction reversed) "
              << percent_gap(sign_own[0], sign_wrong[0]) << ", top quarter " << percent_gap(sign_own[1], sign_wrong[1]) << "\n";
  };
  // Both the training weights and their EMA (the weights `ditto train` exports): with small batches
  // the two part ways, and only the EMA ships.
  auto evaluate = [&](int step) {
    evaluate_weights(step, "eval");
    c10::NoGradGuard no_grad;
    std::vector<at::Tensor> training;
    for (auto& p : params) {
      training.push_back(p.param.detach().clone());
      p.param.detach().copy_(p.ema);
    }
    evaluate_weights(step, "eval EMA");
    for (size_t i = 0; i < params.size(); ++i) params[i].param.detach().copy_(training[i]);
  };

  // Linear warm-up, then cosine decay from lr to final_lr * lr at the last step; the schedule starts
  // at step 0, or at the resumed step with --restart-schedule.
  auto learning_rate = [&](int step) {
    const int s0 = restart_schedule ? start : 0, span = steps - s0;
    const double done = step + 1.0 - s0;
    const double progress_frac = span > warmup ? std::clamp((done - warmup) / (span - warmup), 0.0, 1.0) : 1.0;
    const double cosine = final_lr + (1 - final_lr) * 0.5 * (1 + std::cos(M_PI * progress_frac));
    return lr * std::min(1.0, done / warmup) * (done < warmup ? 1.0 : cosine);
  };

  if (eval_every > 0) evaluate(start);
  Progress progress(steps - start, "training", !quiet);
  const auto t0 = std::chrono::steady_clock::now();
  double loss_ema = resumed_loss;
  int stopped_at = 0;  // the step --max-seconds stopped the run after
  for (int step = start; step < steps; ++step) {
    const auto ts = std::chrono::steady_clock::now();
    // The data stream is a function of the step, so a resumed run sees what it would have seen.
    std::mt19937_64 rng(seed * 1000003 + (fixed_batch ? 0 : step));
    const bool image_step = image_batch > 0 && (step + 1) % image_every == 0;
    const int n = image_step ? image_batch : batch;
    const Batch b = make_batch(rng, n, two_objects, image_step, sign_pairs);
    const double data_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    const at::Tensor& x0 = b.x0;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(rng());
    // Twins share their noise, noise level and caption dropout.
    const int draws = sign_pairs ? n / 2 : n;
    auto per_draw = [&](const at::Tensor& v) { return sign_pairs ? v.repeat_interleave(2, 0) : v; };
    std::vector<int64_t> noise_shape = x0.sizes().vec();
    noise_shape[0] = draws;
    at::Tensor noise = per_draw(at::randn(noise_shape, gen, at::kFloat)).to(options.device());
    at::Tensor t = t_sampling == "logit-normal" ? at::sigmoid(at::randn({draws}, gen, at::kFloat)) : at::rand({draws}, gen, at::kFloat);
    if (t_sampling == "shifted") t = shift_noise_levels(t, t_shift);
    t = per_draw(t).to(options.device());
    at::Tensor drop = per_draw(at::rand({draws}, gen, at::kFloat) < dropout).to(options.device());
    auto [encoded, mask] = text.encode_batch(b.prompts);
    const at::Tensor y = at::where(drop.view({n, 1, 1, 1}), null_y.expand_as(encoded), encoded);
    const at::Tensor y_mask = at::where(drop.view({n, 1}), null_mask(mask), mask);
    const at::Tensor error = velocity(x0, noise, t, y, y_mask, b.frame_index) - (x0 - noise);
    at::Tensor loss =
        training_loss(error, sign_weight, sign_pairs ? drop.view({draws, 2}).select(1, 0).logical_not() : at::Tensor());
    if (word_identity > 0) {
      std::vector<int64_t> ids;
      for (const auto& p : b.prompts) {
        const std::vector<int64_t> w = text.tokenize(p);
        ids.insert(ids.end(), w.begin(), w.end());
      }
      const at::Tensor id = at::tensor(ids, at::kLong).view({n, -1});
      loss = loss + word_identity * word_identity_loss(encoded, id, text.weights().at("token_embedding"));
    }
    const double rate = learning_rate(step);
    for (auto& p : params) p.param.mutable_grad() = at::Tensor();
    loss.backward();
    {
      c10::NoGradGuard no_grad;
      adamw_step(groups, rate, step + 1, adamw);
    }
    const double l = loss.item<double>();
    loss_ema = loss_ema < 0 ? l : 0.98 * loss_ema + 0.02 * l;
    const double step_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    progress.update(step + 1 - start, step_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (log_every > 0 && (step + 1) % log_every == 0)
      std::cerr << "train step " << step + 1 << " loss " << l << " (smoothed " << loss_ema << "), lr " << rate << ", "
                << n / step_s << (image_step ? " frames/s (image step, data " : " clips/s (data ") << 1000 * data_s
                << " ms of " << 1000 * step_s << ")\n";
    if (eval_every > 0 && (step + 1) % eval_every == 0) evaluate(step + 1);
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const bool out_of_time = max_seconds > 0 && elapsed >= max_seconds && step + 1 < steps;
    if ((step + 1) % checkpoint_every == 0 || step + 1 == steps || out_of_time)
      save(out_dir + "/checkpoint.safetensors", step + 1, loss_ema);
    if (out_of_time) {
      stopped_at = step + 1;
      break;
    }
  }
  progress.finish();
  if (stopped_at > 0)
    std::cerr << "ditto train: --max-seconds " << max_seconds << " reached after step " << stopped_at << " of " << steps
              << "; resume with --resume " << out_dir << "/checkpoint.safetensors\n";

  // Export the EMA weights as a model directory.
  std::map<std::string, at::Tensor> ema_model, ema_text;
  for (const auto& [name, t] : initial) ema_model[name] = t.detach().clone();
  for (const auto& p : params) {
    if (p.name.rfind("model.", 0) == 0) ema_model[p.name.substr(6)] = p.ema.clone();
    else ema_text[p.name.substr(5)] = p.ema;
  }
  family.save(config_name, ema_model, out_dir);
  WordEncoder(tc, ema_text).save(out_dir);
  std::cerr << "ditto train: wrote " << out_dir << " (the model's config.json and weights, text_encoder.safetensors; "
            << "final smoothed loss " << loss_ema << ")\n";
  return 0;
}

}  // namespace

int run_train(const std::vector<std::string>& args, const MpiEnv& mpi) {
  TrainOptions o;
  if (!parse_train_options(args, o)) return 0;
  if (mpi.size() > 1) fail("ditto train runs on one rank");
  return train(o, mpi);
}

}  // namespace ditto

