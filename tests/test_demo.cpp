// The demo model's pieces: the clip generator, prompts, the text encoder's vocabulary, the
// adherence checker on true and wrong clips, PSNR/SSIM by hand, and training lowering the loss.
#include <gtest/gtest.h>

#include <c10/core/GradMode.h>

#include <array>
#include <cmath>
#include <regex>
#include <set>
#include <sstream>

#include "demo/adamw.h"
#include "pipeline/quality.h"
#include "demo/adherence.h"
#include "demo/train_loss.h"
#include "model/config.h"
#include "demo/demo_data.h"
#include "model/error.h"
#include "model/safetensors.h"
#include "demo/word_encoder.h"
#include "test_util.h"

using namespace ditto;

TEST(DemoData, DeterministicAndEncodesItsAttributes) {
  const auto all = all_demo_attributes();
  EXPECT_EQ(all.size(), 540u);  // 5 colours x 3 shapes x 9 motions x 4 backgrounds
  for (const auto& a : all) {
    const std::string p = demo_prompt(a);
    EXPECT_TRUE(parse_demo_prompt(p) == a) << p;
  }
  const DemoAttributes a{{0, 1, 1, 1}, 1, std::nullopt};  // a red square moving right fast on a gray background
  EXPECT_EQ(demo_prompt(a), "a red square moving right fast on a gray background");
  EXPECT_TRUE(at::equal(render_demo_clip(a, 7), render_demo_clip(a, 7)));
  EXPECT_FALSE(at::equal(render_demo_clip(a, 7), render_demo_clip(a, 8)));
  at::Tensor clip = render_demo_clip(a, 7);
  EXPECT_EQ(clip.sizes(), at::IntArrayRef({3, 16, 32, 32}));
  EXPECT_GE(clip.min().item<float>(), -1.0f);
  EXPECT_LE(clip.max().item<float>(), 1.0f);
  // The background's pixels: gray is flat, checkered alternates 4 x 4 cells (corner pixels are
  // background: the object's path runs through the middle).
  auto pixel = [](const at::Tensor& c, int t, int y, int x) { return std::lround((c[0][t][y][x].item<float>() + 1) * 127.5); };
  EXPECT_EQ(pixel(clip, 0, 0, 0), 110);
  DemoAttributes checkered = a;
  checkered.background = 2;
  at::Tensor cc = render_demo_clip(checkered, 7);
  EXPECT_EQ(pixel(cc, 3, 0, 0), 30);
  EXPECT_EQ(pixel(cc, 3, 0, 4), 90);
  EXPECT_EQ(pixel(cc, 3, 4, 4), 30);
  // Two objects and no background phrase.
  const DemoAttributes two = parse_demo_prompt("a red square still and a blue circle moving up slow");
  ASSERT_TRUE(two.second.has_value());
  EXPECT_EQ(two.background, -1);
  EXPECT_EQ(two.second->color, 2);
  EXPECT_EQ(two.second->direction, 2);
  EXPECT_EQ(demo_prompt(two), "a red square still and a blue circle moving up slow");
  EXPECT_THROW(render_demo_clip(two, 1), Error);  // a clip needs a background
  EXPECT_THROW(parse_demo_prompt("a purple square still on a black background"), Error);
  EXPECT_THROW(parse_demo_prompt("a red square moving sideways fast on a black background"), Error);
  EXPECT_THROW(parse_demo_prompt("a red square still and a red circle still"), Error);
  // The training distribution: deterministic, about the asked share of two-object scenes.
  int pairs = 0;
  for (uint64_t s = 0; s < 1000; ++s) {
    const DemoAttributes r = random_demo_attributes(s, 0.3);
    EXPECT_TRUE(r == random_demo_attributes(s, 0.3));
    if (r.second) {
      EXPECT_NE(r.second->color, r.color);
    }
    pairs += r.second.has_value();
  }
  EXPECT_NEAR(pairs, 300, 60);
  // Every prompt fits the demo config's caption length.
  size_t longest = 0;
  for (uint64_t s = 0; s < 1000; ++s) {
    std::istringstream in(demo_prompt(random_demo_attributes(s, 1.0)));
    size_t n = 0;
    for (std::string w; in >> w;) ++n;
    longest = std::max(longest, n);
  }
  EXPECT_EQ(longest, 17u);
  // The tools' prompt sets: evaluation prompts are never profiling or calibration prompts.
  std::set<std::string> fitted, evaluated;
  for (int k = 0; k < 32; ++k) fitted.insert(demo_prompt(demo_prompt_set(DemoPromptSet::Profile, k)));
  for (int k = 0; k < 16; ++k) fitted.insert(demo_prompt(demo_prompt_set(DemoPromptSet::Calibration, k)));
  for (int k = 0; k < 64; ++k) evaluated.insert(demo_prompt(demo_prompt_set(DemoPromptSet::Evaluation, k)));
  EXPECT_EQ(fitted.size(), 48u);
  EXPECT_EQ(evaluated.size(), 64u);
  for (const auto& p : evaluated) EXPECT_EQ(fitted.count(p), 0u) << p;
  EXPECT_GE(builtin_config("ditto-demo").model_max_length, 17);
}

TEST(DemoData, OneFrameEqualsThatFrameOfTheClip) {
  // Moving, bouncing (fast, two objects) and still scenes; every frame, bit for bit.
  for (const char* prompt : {"a red square moving left fast and a blue circle moving up slow on a checkered background",
                             "a green triangle moving down fast on a striped background",
                             "a white circle still on a gray background"}) {
    const DemoAttributes a = parse_demo_prompt(prompt);
    const at::Tensor clip = render_demo_clip(a, 77);
    for (int f = 0; f < clip.size(1); ++f)
      EXPECT_TRUE(at::equal(render_demo_frame(a, 77, f), clip.narrow(1, f, 1))) << prompt << " frame " << f;
  }
  EXPECT_THROW(render_demo_frame(parse_demo_prompt("a red circle still on a black background"), 1, 16), Error);
}

TEST(DemoData, ReversedMotionIsTheTwinWithTheOtherSign) {
  const DemoAttributes a = parse_demo_prompt("a red square moving left fast and a blue circle moving up slow on a checkered background");
  const DemoAttributes r = reversed_motion(a);
  EXPECT_EQ(demo_prompt(r), "a red square moving right fast and a blue circle moving down slow on a checkered background");
  EXPECT_TRUE(reversed_motion(r) == a);
  const DemoAttributes still = parse_demo_prompt("a white circle still and a green triangle moving down fast on a gray background");
  EXPECT_EQ(demo_prompt(reversed_motion(still)), "a white circle still and a green triangle moving up fast on a gray background");
  // Rendered from the same seed (as --sign-pairs renders twins), the checker reads each twin's own
  // direction and not the other's, for every one-object moving scene.
  int moving = 0;
  for (const auto& s : all_demo_attributes()) {
    if (s.is_still()) continue;
    const DemoAttributes twin = reversed_motion(s);
    const at::Tensor clip = render_demo_clip(twin, 500 + moving);
    EXPECT_TRUE(check_adherence(clip, twin).ok()) << demo_prompt(twin);
    EXPECT_FALSE(check_adherence(clip, s).direction) << demo_prompt(s);
    ++moving;
  }
  EXPECT_EQ(moving, 480);
}

TEST(Adherence, PassesEveryTrueClipAndFailsWrongOnes) {
  int checked = 0;
  for (const auto& a : all_demo_attributes()) {
    const at::Tensor clip = render_demo_clip(a, 1000 + checked);
    const Adherence ok = check_adherence(clip, a);
    EXPECT_TRUE(ok.ok()) << demo_prompt(a) << " -> " << ok.json().dump();
    // Each single wrong attribute is caught.
    DemoAttributes w = a;
    w.color = (a.color + 1) % 5;
    EXPECT_FALSE(check_adherence(clip, w).color) << demo_prompt(a);
    w = a;
    w.shape = (a.shape + 1) % 3;
    EXPECT_FALSE(check_adherence(clip, w).shape) << demo_prompt(a);
    w = a;
    w.background = (a.background + 1) % 4;
    EXPECT_FALSE(check_adherence(clip, w).background) << demo_prompt(a);
    w.background = -1;  // no background named: any fits
    EXPECT_TRUE(check_adherence(clip, w).background) << demo_prompt(a);
    if (!a.is_still()) {
      w = a;
      w.direction = a.direction ^ 1;  // left <-> right, up <-> down
      EXPECT_FALSE(check_adherence(clip, w).direction) << demo_prompt(a);
      w = a;
      w.speed = 1 - a.speed;
      EXPECT_FALSE(check_adherence(clip, w).speed) << demo_prompt(a);
      // Frames played backwards move the other way.
      EXPECT_FALSE(check_adherence(clip.flip({1}), a).direction) << demo_prompt(a);
    }
    ++checked;
  }
  // Two-object scenes: both objects are read; a wrong second object or a missing one fails.
  int passed = 0;
  const int scenes = 150;
  for (uint64_t s = 0; s < scenes; ++s) {
    const DemoAttributes a = random_demo_attributes(5000 + s, 1.0);
    const at::Tensor clip = render_demo_clip(a, s);
    const Adherence ok = check_adherence(clip, a);
    passed += ok.ok();
    EXPECT_TRUE(ok.color) << demo_prompt(a) << " -> " << ok.json().dump();
    DemoAttributes w = a;
    w.second->shape = (a.second->shape + 1) % 3;
    EXPECT_FALSE(check_adherence(clip, w).ok()) << demo_prompt(a);
    w = a;
    w.second->color = (a.second->color + 1) % 5;
    if (w.second->color == a.color) w.second->color = (w.second->color + 1) % 5;
    EXPECT_FALSE(check_adherence(clip, w).color) << demo_prompt(a);
    w = a;
    w.second.reset();
    w.color = 0;  // a one-object prompt whose colour is not shown
    while (w.color == a.color || w.color == a.second->color) ++w.color;
    EXPECT_FALSE(check_adherence(clip, w).color) << demo_prompt(a);
  }
  // Where the objects cross, one hides part of the other: nearly every scene still reads right.
  EXPECT_GE(passed, scenes * 9 / 10) << passed << " of " << scenes;
  // Noise shows nothing.
  at::manual_seed(0);
  EXPECT_FALSE(check_adherence(at::rand({3, 16, 32, 32}) * 2 - 1, all_demo_attributes()[0]).ok());
}

TEST(Quality, PsnrAndSsimByHand) {
  at::Tensor a = at::zeros({3, 2, 16, 16});
  at::Tensor b = a.clone();
  b[0][0][0][0] = 1.0;  // one pixel off by 1: MSE = 1 / 1536
  EXPECT_NEAR(psnr(b, a, 2.0), 10 * std::log10(4.0 * 1536), 1e-9);
  EXPECT_TRUE(std::isinf(psnr(a, a, 2.0)));
  EXPECT_NEAR(ssim(a + 0.3, a + 0.3, 2.0), 1.0, 1e-12);
  // A constant offset of a flat image: SSIM = (2 mx my + c1) / (mx^2 + my^2 + c1).
  const double c1 = std::pow(0.02, 2), mx = 0.5, my = 0.0;
  EXPECT_NEAR(ssim(a + 0.5, a, 2.0), (2 * mx * my + c1) / (mx * mx + my * my + c1), 1e-9);
}

TEST(TextEncoder, VocabularyAndShapes) {
  WordEncoderConfig c;
  c.vocab = {"a", "red", "square"};
  c.dim = 16;
  c.max_tokens = 4;
  WordEncoder t = WordEncoder::random(c, 1, at::TensorOptions().dtype(at::kFloat));
  EXPECT_EQ(t.tokenize("A red, square!"), (std::vector<int64_t>{1, 2, 3, 0}));
  try {
    t.tokenize("a blue square");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'blue' is not in the text encoder's vocabulary (known words: a red square)"),
              std::string::npos)
        << e.what();
  }
  auto [y, mask] = t.encode_batch({"a red square", "square"});
  EXPECT_EQ(y.sizes(), at::IntArrayRef({2, 1, 4, 16}));
  EXPECT_TRUE(at::equal(mask, at::tensor({1, 1, 1, 0, 1, 0, 0, 0}, at::kLong).reshape({2, 4})));
  const std::string dir = ditto::test::temp_dir();
  t.save(dir);
  WordEncoder back = WordEncoder::load(dir, at::TensorOptions().dtype(at::kFloat));
  EXPECT_TRUE(at::equal(back.encode_batch({"a red square"}).first, t.encode_batch({"a red square"}).first));
}

namespace {
// The losses `ditto train --log-every 1` printed, of its image steps or of its video steps.
std::vector<double> logged_losses(const std::string& output, bool image_steps) {
  std::regex line(R"(train step (\d+) loss ([0-9.eE+-]+) \(smoothed [0-9.eE+-]+\), lr [0-9.eE+-]+, [0-9.eE+-]+ (clips|frames)/s)");
  std::vector<double> loss;
  for (std::sregex_iterator it(output.begin(), output.end(), line), end; it != end; ++it)
    if (((*it)[3] == "frames") == image_steps) loss.push_back(std::stod((*it)[2]));
  return loss;
}

// The loss of the one step of `ditto train --config ditto-demo-tiny --steps 1 --image-batch 0 OPTIONS`.
double first_step_loss(const std::string& options) {
  auto r = ditto::test::run_ditto("train --config ditto-demo-tiny --steps 1 --image-batch 0 --log-every 1 --quiet "
                                  "--threads 1 --out " + ditto::test::temp_dir() + " " + options);
  EXPECT_EQ(r.code, 0) << r.output;
  const std::vector<double> loss = logged_losses(r.output, false);
  EXPECT_EQ(loss.size(), 1u) << r.output;
  return loss.empty() ? -1.0 : loss[0];
}
}  // namespace

TEST(Training, ImageStepsAndHeldOutEvaluation) {
  const std::string dir = ditto::test::temp_dir();
  // Every step an image step (single frames): the loss still falls on a fixed batch.
  auto r = ditto::test::run_ditto("train --config ditto-demo-tiny --steps 20 --batch 2 --image-batch 4 --image-every 1 "
                                  "--fixed-batch --log-every 1 --lr 3e-3 --warmup 1 --eval-every 20 --eval-clips 4 "
                                  "--quiet --threads 1 "
                                  "--out " + dir);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::vector<double> loss = logged_losses(r.output, true);
  ASSERT_EQ(loss.size(), 20u) << r.output;
  EXPECT_LT(loss.back(), 0.75 * loss.front()) << "first " << loss.front() << " last " << loss.back();
  // The held-out evaluation at the start and the end. At the start Open-Sora's initialisation has
  // zeroed every cross-attention output projection, so the caption cannot change the prediction: the
  // three losses are equal. Training makes them differ.
  std::regex eval(R"(eval step (\d+): loss \(by noise quarter\) own caption ([0-9.eE+-]+) \[[^\]]*\], )"
                  R"(another clip's ([0-9.eE+-]+) \[[^\]]*\], null ([0-9.eE+-]+) \[[^\]]*\], )"
                  R"(own with the motion wrong ([0-9.eE+-]+).*sign \(moving clips, direction reversed\) )"
                  R"(([0-9.eE+-]+)%, top quarter ([0-9.eE+-]+%|n/a))");
  std::vector<std::array<double, 7>> evals;
  for (std::sregex_iterator it(r.output.begin(), r.output.end(), eval), end; it != end; ++it)
    evals.push_back({std::stod((*it)[1]), std::stod((*it)[2]), std::stod((*it)[3]), std::stod((*it)[4]),
                     std::stod((*it)[5]), std::stod((*it)[6]), (*it)[7] == "n/a" ? 0.0 : std::stod((*it)[7])});
  ASSERT_EQ(evals.size(), 2u) << r.output;
  // The same evaluation of the EMA weights follows each: at step 0 they are the weights themselves.
  const std::regex eval_ema(R"(eval EMA step (\d+): loss \(by noise quarter\) own caption ([0-9.eE+-]+) )");
  std::vector<std::pair<int, double>> ema_evals;
  for (std::sregex_iterator it(r.output.begin(), r.output.end(), eval_ema), end; it != end; ++it)
    ema_evals.emplace_back(std::stoi((*it)[1]), std::stod((*it)[2]));
  ASSERT_EQ(ema_evals.size(), 2u) << r.output;
  EXPECT_EQ(ema_evals[0], std::make_pair(0, evals[0][1]));
  EXPECT_EQ(ema_evals[1].first, 20);
  EXPECT_NE(ema_evals[1].second, evals[1][1]);  // EMA 0.995 after 20 steps: still mostly the initial weights
  EXPECT_NE(ema_evals[1].second, evals[0][1]);
  EXPECT_EQ(evals[0][0], 0);
  EXPECT_EQ(evals[0][1], evals[0][2]);
  EXPECT_EQ(evals[0][1], evals[0][3]);
  EXPECT_EQ(evals[0][1], evals[0][4]);
  EXPECT_EQ(evals[0][5], 0);  // the sign gaps: no caption can matter yet
  EXPECT_EQ(evals[0][6], 0);
  EXPECT_EQ(evals[1][0], 20);
  EXPECT_NE(evals[1][1], evals[1][2]);
  EXPECT_NE(evals[1][1], evals[1][4]);  // the wrong-motion captions differ from the own ones
  EXPECT_NE(evals[1][5], 0);
  EXPECT_NE(evals[1][1], evals[0][1]);
  for (const auto& e : evals) EXPECT_TRUE(std::isfinite(e[1]) && e[1] > 0) << r.output;
  // Options checked: each bad option, and the error it gets.
  const std::pair<const char*, const char*> bad[] = {
      {"--image-every 0", "--image-every must be at least 1"},
      {"--eval-clips 6", "--eval-clips must be a positive multiple of 4"},
      {"--t-sampling cubic", "--t-sampling must be uniform, logit-normal or shifted"},
      {"--t-sampling shifted --t-shift 0", "--t-shift must be a positive number"},
      {"--restart-schedule", "--restart-schedule needs --resume"},
      {"--sign-pairs --batch 3", "--sign-pairs needs even --batch and --image-batch"},
      {"--sign-weight 1", "--sign-weight needs --sign-pairs"},
      {"--sign-pairs --sign-weight -1", "--sign-weight must be >= 0"},
      {"--word-identity -1", "--word-identity must be >= 0"},
  };
  for (const auto& [options, error] : bad) {
    r = ditto::test::run_ditto(std::string("train --config ditto-demo-tiny --steps 1 ") + options + " --out " + dir);
    EXPECT_NE(r.code, 0) << options;
    EXPECT_NE(r.output.find(error), std::string::npos) << options << ": " << r.output;
  }
}

TEST(Training, TwinLossEqualsTheFormulaInFloat64) {
  at::Tensor e = at::randn({6, 3, 2, 4, 4}, at::TensorOptions().dtype(at::kDouble));
  const at::Tensor captioned = at::tensor({1, 0, 1}).to(at::kBool);
  const int64_t per_clip = e[0].numel();
  // Plain: the mean square error, whatever `captioned` says.
  double plain = 0;
  for (int64_t i = 0; i < e.numel(); ++i) plain += std::pow(e.view(-1)[i].item<double>(), 2);
  plain /= e.numel();
  EXPECT_NEAR(training_loss(e, 0, captioned).item<double>(), plain, 1e-12);
  EXPECT_NEAR(training_loss(e, 0, at::Tensor()).item<double>(), plain, 1e-12);
  // With twins: plus 2.5 x the difference part of the captioned pairs (pair 1 has the null caption).
  double extra = 0;
  for (int p : {0, 2}) {
    const at::Tensor a = e[2 * p].reshape(-1), b = e[2 * p + 1].reshape(-1);
    double d = 0;
    for (int64_t k = 0; k < per_clip; ++k) d += std::pow(a[k].item<double>() - b[k].item<double>(), 2);
    extra += d / per_clip / 4;
  }
  EXPECT_NEAR(training_loss(e, 2.5, captioned).item<double>(), plain + 2.5 * extra / 3, 1e-12);
  // The split it rests on: a pair's mean loss is the mean part plus the difference part.
  const at::Tensor a = e[0], b = e[1];
  EXPECT_NEAR(((a.pow(2).mean() + b.pow(2).mean()) / 2).item<double>(),
              ((a + b).pow(2).mean() / 4 + (a - b).pow(2).mean() / 4).item<double>(), 1e-12);
  EXPECT_THROW(training_loss(e.narrow(0, 0, 5), 1, captioned), Error);
  EXPECT_THROW(training_loss(e, 1, at::ones({2}, at::kBool)), Error);
}

TEST(Training, WordIdentityLossIsTheCrossEntropyOverTheVocabulary) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(3);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor y = at::randn({2, 1, 3, 4}, g, f64), embedding = at::randn({4, 4}, g, f64);  // 3 words + padding
  const at::Tensor ids = at::tensor({1, 3, 0, 2, 0, 0}, at::kLong).view({2, 3});
  double expected = 0;
  int valid = 0;
  for (int b = 0; b < 2; ++b)
    for (int l = 0; l < 3; ++l) {
      const int64_t id = ids[b][l].item<int64_t>();
      if (id == 0) continue;
      double logits[3], top = -1e300, sum = 0;
      for (int v = 0; v < 3; ++v) {
        logits[v] = at::dot(y[b][0][l], embedding[v + 1]).item<double>();
        top = std::max(top, logits[v]);
      }
      for (double z : logits) sum += std::exp(z - top);
      expected += top + std::log(sum) - logits[id - 1];
      ++valid;
    }
  EXPECT_NEAR(word_identity_loss(y, ids, embedding).item<double>(), expected / valid, 1e-12);
  EXPECT_NEAR(word_identity_loss(y.squeeze(1), ids, embedding).item<double>(), expected / valid, 1e-12);
  EXPECT_THROW(word_identity_loss(y, ids.narrow(1, 0, 2), embedding), Error);
  // In ditto train: the first step's loss grows by the weighted term.
  EXPECT_GT(first_step_loss("--batch 2 --word-identity 0.5"), first_step_loss("--batch 2") + 0.1);  // ln(24) / 2 = 1.6 for an untrained encoder
}

TEST(Training, SignPairsAddTheDifferenceTermOfCaptionedPairsOnly) {
  // The first step's loss (the same weights, twins and noise in every run): the extra term adds to it
  // when the pairs keep their captions, and nothing when caption dropout takes every caption.
  auto first_loss = [](const std::string& extra) { return first_step_loss("--batch 4 --sign-pairs " + extra); };
  const double plain = first_loss("--caption-dropout 0"), weighted = first_loss("--caption-dropout 0 --sign-weight 3");
  EXPECT_GT(weighted, plain * 1.0001);
  EXPECT_EQ(first_loss("--caption-dropout 1"), first_loss("--caption-dropout 1 --sign-weight 3"));
}

TEST(Training, AdamWStepEqualsTheFormula) {
  // Two groups (with and without weight decay), step 3 from non-zero moments, gradients whose global
  // norm is above the clipping norm (scale 0.5) and below it (no scaling); the reference is the AdamW
  // formula written out per tensor in float64.
  for (const double grad_scale : {1.0, 1e-3}) {
    at::manual_seed(5);
    const auto f64 = at::TensorOptions().dtype(at::kDouble);
    std::vector<at::Tensor> p0 = {at::randn({3, 4}, f64), at::randn({4}, f64), at::randn({2, 2}, f64)};
    std::vector<at::Tensor> g0, m0, v0, e0;
    for (const auto& p : p0) {
      g0.push_back(at::randn(p.sizes(), f64) * grad_scale);
      m0.push_back(at::randn(p.sizes(), f64) * 0.1);
      v0.push_back(at::rand(p.sizes(), f64) * 0.01);
      e0.push_back(at::randn(p.sizes(), f64));
    }
    const double lr = 0.01, wd = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8, decay = 0.99, max_norm = 0.5;
    const int k = 3;
    double norm2 = 0;
    for (const auto& g : g0) norm2 += g.pow(2).sum().item<double>();
    const double clip = std::min(1.0, max_norm / (std::sqrt(norm2) + 1e-6));
    EXPECT_EQ(clip < 1, grad_scale == 1.0) << "the two cases clip and do not";
    std::vector<AdamWGroup> groups(2);
    groups[0].weight_decay = wd;
    for (size_t i = 0; i < p0.size(); ++i) {
      AdamWGroup& g = groups[i == 1 ? 1 : 0];  // the vector goes without decay
      at::Tensor p = p0[i].clone().requires_grad_(true);
      p.mutable_grad() = g0[i].clone();
      g.params.push_back(p);
      g.m.push_back(m0[i].clone());
      g.v.push_back(v0[i].clone());
      g.ema.push_back(e0[i].clone());
    }
    AdamWSettings s;
    s.max_grad_norm = max_norm;
    s.ema_decay = decay;
    {
      c10::NoGradGuard no_grad;
      adamw_step(groups, lr, k, s);
    }
    for (size_t i = 0; i < p0.size(); ++i) {
      const AdamWGroup& g = groups[i == 1 ? 1 : 0];
      const size_t j = i == 2 ? 1 : 0;  // position within its group
      const double w = i == 1 ? 0 : wd;
      const at::Tensor grad = g0[i] * clip;
      const at::Tensor m = b1 * m0[i] + (1 - b1) * grad;
      const at::Tensor v = b2 * v0[i] + (1 - b2) * grad * grad;
      const at::Tensor p = p0[i] - lr * w * p0[i] -
                           lr * (m / (1 - std::pow(b1, k))) / ((v / (1 - std::pow(b2, k))).sqrt() + eps);
      const at::Tensor ema = decay * e0[i] + (1 - decay) * p;
      EXPECT_TRUE(at::allclose(g.params[j].detach(), p, 1e-12, 1e-12)) << "param " << i << " scale " << grad_scale;
      EXPECT_TRUE(at::allclose(g.m[j], m, 1e-12, 1e-12)) << i;
      EXPECT_TRUE(at::allclose(g.v[j], v, 1e-12, 1e-12)) << i;
      EXPECT_TRUE(at::allclose(g.ema[j], ema, 1e-12, 1e-12)) << i;
    }
  }
}

TEST(Training, MaxSecondsStopsWithACheckpointAndTheModel) {
  // A limit any step outlasts: the run stops after its first step of 50, with the checkpoint at step 1
  // and the exported model, and a resume goes on from step 2 with the schedule of 50 steps.
  const std::string dir = ditto::test::temp_dir();
  auto r = ditto::test::run_ditto("train --config ditto-demo-tiny --steps 50 --batch 2 --image-batch 4 --log-every 1 "
                                  "--max-seconds 1e-6 --quiet --threads 1 --out " + dir);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("--max-seconds 1e-06 reached after step 1 of 50"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("train step 2 "), std::string::npos) << r.output;
  EXPECT_EQ(SafetensorsFile(dir + "/checkpoint.safetensors").metadata().at("step"), "1");
  r = ditto::test::run_ditto("sample --model " + dir + " --prompt 'a red circle still' --steps 1 --quiet --no-mp4 --out " +
                             dir + "/sample");
  EXPECT_EQ(r.code, 0) << r.output;
  r = ditto::test::run_ditto("train --config ditto-demo-tiny --steps 50 --batch 2 --image-batch 4 --log-every 1 --quiet "
                             "--max-seconds 1e-6 --threads 1 --out " + dir + " --resume " + dir + "/checkpoint.safetensors");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("train step 2 loss"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("reached after step 2 of 50"), std::string::npos) << r.output;
  r = ditto::test::run_ditto("train --config ditto-demo-tiny --steps 2 --max-seconds -1 --out " + dir);
  EXPECT_NE(r.output.find("--max-seconds must be >= 0"), std::string::npos) << r.output;
}

TEST(Training, AFewStepsLowerTheLossOnAFixedBatch) {
  const std::string dir = ditto::test::temp_dir();
  auto r = ditto::test::run_ditto("train --config ditto-demo-tiny --steps 30 --batch 2 --image-batch 0 --fixed-batch --log-every 1 "
                                  "--lr 3e-3 --warmup 1 --checkpoint-every 10 --ema 0 --quiet --threads 1 --out " + dir);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::vector<double> loss = logged_losses(r.output, false);
  ASSERT_EQ(loss.size(), 30u) << r.output;
  EXPECT_LT(loss.back(), 0.6 * loss.front()) << "first " << loss.front() << " last " << loss.back();
  // The learning-rate schedule of a resumed run (warm-up 4, lr 1e-3, final 10%, steps 30 -> 34):
  // continued, step 31 is at 90% of the cosine: 1e-3 * (0.1 + 0.9 * (1 + cos(0.9 pi)) / 2) = 1.22024e-4;
  // restarted, it is the first warm-up step: 1e-3 / 4.
  auto first_lr = [&](const std::string& extra, const std::string& out) {
    const std::string ck = out + ".safetensors";
    ditto::test::write_bytes(ck, ditto::test::read_bytes(dir + "/checkpoint.safetensors"));
    auto rr = ditto::test::run_ditto("train --config ditto-demo-tiny --steps 34 --batch 2 --image-batch 0 --log-every 1 "
                                     "--lr 1e-3 --warmup 4 --quiet --threads 1 --out " + out + " --resume " + ck + extra);
    std::smatch m;
    const std::regex lr(R"(train step 31 loss \S+ \(smoothed \S+\), lr ([0-9.eE+-]+),)");
    return std::regex_search(rr.output, m, lr) ? std::stod(m[1]) : (ADD_FAILURE() << rr.output, -1.0);
  };
  EXPECT_NEAR(first_lr("", dir + "/continued"), 1.22024e-4, 1e-8);
  EXPECT_NEAR(first_lr(" --restart-schedule", dir + "/restarted"), 2.5e-4, 1e-9);
  // The exported model and text encoder load, and resuming from the checkpoint continues.
  r = ditto::test::run_ditto("sample --model " + dir + " --prompt 'a red circle still on a black background' "
                             "--steps 2 --quiet --no-mp4 --out " + dir + "/sample");
  EXPECT_EQ(r.code, 0) << r.output;
  r = ditto::test::run_ditto("sample --model " + dir + " --prompt 'a pink circle still on a black background' --steps 2");
  EXPECT_NE(r.output.find("'pink' is not in the text encoder's vocabulary"), std::string::npos) << r.output;
  r = ditto::test::run_ditto("train --config ditto-demo-tiny --steps 32 --batch 2 --image-batch 0 --fixed-batch --log-every 1 --quiet "
                             "--threads 1 --out " + dir + " --resume " + dir + "/checkpoint.safetensors");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("train step 31 "), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("train step 30 "), std::string::npos) << r.output;
  // A new run that starts from the exported model (--ema 0 above: the last weights): its first loss
  // on the same fixed batch is far below a fresh model's first, and it counts from step 1.
  r = ditto::test::run_ditto("train --config ditto-demo-tiny --steps 2 --batch 2 --image-batch 0 --fixed-batch --log-every 1 "
                             "--quiet --threads 1 --out " + dir + "/again --init-from " + dir);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::vector<double> again = logged_losses(r.output, false);
  ASSERT_EQ(again.size(), 2u) << r.output;
  EXPECT_LT(again.front(), 0.8 * loss.front()) << "fresh " << loss.front() << ", from the model " << again.front();
  EXPECT_NE(r.output.find("train step 1 "), std::string::npos) << r.output;
  r = ditto::test::run_ditto("train --config ditto-demo --steps 1 --out " + dir + "/bad --init-from " + dir);
  EXPECT_NE(r.output.find("does not match its config"), std::string::npos) << r.output;
  r = ditto::test::run_ditto("train --config ditto-demo-fm --steps 1 --out " + dir + "/bad --init-from " + dir);
  EXPECT_NE(r.output.find("does not match its config"), std::string::npos) << r.output;
  r = ditto::test::run_ditto("train --config ditto-demo-tiny --steps 1 --out " + dir + "/bad --init-from " + dir +
                             " --resume " + dir + "/checkpoint.safetensors");
  EXPECT_NE(r.output.find("--init-from and --resume exclude each other"), std::string::npos) << r.output;
}

TEST(Training, InitFromAModelWithoutFrameModulationStartsItAtZero) {
  // ditto-demo-fm (and -fcm) from a ditto-demo model: the new frame_block starts at zero, so the first loss on a
  // fixed batch equals the one the same weights give without it; the exported model has it.
  const std::string dir = ditto::test::temp_dir();
  const std::string common = "--steps 1 --batch 1 --image-batch 0 --fixed-batch --log-every 1 --quiet --threads 1 ";
  auto r = ditto::test::run_ditto("train --config ditto-demo " + common + "--out " + dir + "/base");
  ASSERT_EQ(r.code, 0) << r.output;
  r = ditto::test::run_ditto("train --config ditto-demo " + common + "--out " + dir + "/plain --init-from " + dir + "/base");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::vector<double> plain = logged_losses(r.output, false);
  r = ditto::test::run_ditto("train --config ditto-demo-fm " + common + "--out " + dir + "/fm --init-from " + dir + "/base");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("'frame_block.weight' is new in this config"), std::string::npos) << r.output;
  const std::vector<double> fm = logged_losses(r.output, false);
  ASSERT_EQ(plain.size(), 1u);
  ASSERT_EQ(fm.size(), 1u);
  EXPECT_EQ(fm[0], plain[0]);
  EXPECT_TRUE(load_config(dir + "/fm/config.json").frame_modulation);
  EXPECT_EQ(load_safetensors(dir + "/fm/model.safetensors").count("frame_block.weight"), 1u);
  // Likewise the variant whose per-frame term also reads the timestep and the caption.
  r = ditto::test::run_ditto("train --config ditto-demo-fcm " + common + "--out " + dir + "/fcm --init-from " + dir + "/base");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::vector<double> fcm = logged_losses(r.output, false);
  ASSERT_EQ(fcm.size(), 1u);
  EXPECT_EQ(fcm[0], plain[0]);
  EXPECT_TRUE(load_config(dir + "/fcm/config.json").frame_caption_modulation);
  // A per-frame term trained on another input is not taken over silently.
  r = ditto::test::run_ditto("train --config ditto-demo-fcm " + common + "--out " + dir + "/bad --init-from " + dir + "/fm");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("its per-frame term reads the frame only"), std::string::npos) << r.output;
  r = ditto::test::run_ditto("train --config ditto-demo-fm " + common + "--out " + dir + "/bad --init-from " + dir + "/fcm");
  EXPECT_NE(r.output.find("its per-frame term reads the caption"), std::string::npos) << r.output;
  r = ditto::test::run_ditto("train --config ditto-demo " + common + "--out " + dir + "/bad --init-from " + dir + "/fcm");
  EXPECT_NE(r.output.find("this config has none; train it with --config ditto-demo-fcm"), std::string::npos) << r.output;
}

TEST(Training, TheWanDemoArchitectureTrainsAndSamplesWithTheEmptyPromptAsItsUnconditionalBranch) {
  // ditto train on the Wan family (full 3-D attention, no learned null caption: caption dropout and
  // the guidance's unconditional branch read the empty prompt, all rows zero); the export loads as a
  // Wan pixel-space model whose prompt-guided sample reads the empty prompt too.
  const std::string dir = ditto::test::temp_dir();
  auto r = ditto::test::run_ditto("train --config wan-demo-tiny --steps 25 --batch 2 --image-batch 0 --fixed-batch --log-every 1 "
                                  "--lr 3e-3 --warmup 1 --ema 0 --caption-dropout 0.5 --quiet --threads 1 --out " + dir);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::vector<double> loss = logged_losses(r.output, false);
  ASSERT_EQ(loss.size(), 25u) << r.output;
  EXPECT_LT(loss.back(), 0.7 * loss.front()) << "first " << loss.front() << " last " << loss.back();
  const auto config = nlohmann::json::parse(ditto::test::read_bytes(dir + "/config.json"));
  EXPECT_EQ(config["_class_name"], "WanTransformer3DModel");
  EXPECT_EQ(config["latent_space"], "pixel");
  r = ditto::test::run_ditto("sample --model " + dir + " --prompt 'a red circle moving right slow' --steps 3 --quiet --out " + dir + "/s");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto m = nlohmann::json::parse(ditto::test::read_bytes(dir + "/s/metrics.json"));
  EXPECT_EQ(m["model"]["family"], "wan");
  EXPECT_EQ(m["run"]["negative_prompt"], "(the empty prompt)");
  EXPECT_EQ(m["run"]["sampler"], "unipc");
  EXPECT_EQ(m["run"]["latent_shape"], nlohmann::json::array({1, 3, 16, 32, 32}));
  // --init-from starts a new run from the exported weights (the same config only).
  r = ditto::test::run_ditto("train --config wan-demo-tiny --steps 1 --batch 1 --image-batch 0 --quiet --threads 1 --init-from " +
                             dir + " --out " + dir + "/x");
  EXPECT_EQ(r.code, 0) << r.output;
  r = ditto::test::run_ditto("train --config wan-demo --steps 1 --init-from " + dir + " --out " + dir + "/y");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("its config is not config 'wan-demo'"), std::string::npos) << r.output;
}
