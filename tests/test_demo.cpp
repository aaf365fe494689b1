// The demo model's pieces: the clip generator, prompts, the text encoder's vocabulary, the
// adherence checker on true and wrong clips, PSNR/SSIM by hand, and training lowering the loss.
#include <gtest/gtest.h>

#include <regex>

#include "launcher/quality.h"
#include "model/demo_data.h"
#include "model/error.h"
#include "model/text_encoder.h"
#include "test_util.h"

using namespace ditto;

TEST(DemoData, DeterministicAndEncodesItsAttributes) {
  const auto all = all_demo_attributes();
  EXPECT_EQ(all.size(), 270u);
  for (const auto& a : all) {
    const std::string p = demo_prompt(a);
    EXPECT_TRUE(parse_demo_prompt(p) == a) << p;
  }
  const DemoAttributes a{0, 1, 1, 1, 1};  // a red square moving right fast on a gray background
  EXPECT_EQ(demo_prompt(a), "a red square moving right fast on a gray background");
  EXPECT_TRUE(at::equal(render_demo_clip(a, 7), render_demo_clip(a, 7)));
  EXPECT_FALSE(at::equal(render_demo_clip(a, 7), render_demo_clip(a, 8)));
  at::Tensor clip = render_demo_clip(a, 7);
  EXPECT_EQ(clip.sizes(), at::IntArrayRef({3, 16, 32, 32}));
  EXPECT_GE(clip.min().item<float>(), -1.0f);
  EXPECT_LE(clip.max().item<float>(), 1.0f);
  EXPECT_THROW(parse_demo_prompt("a purple square still on a black background"), Error);
  EXPECT_THROW(parse_demo_prompt("a red square moving sideways fast on a black background"), Error);
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
    w.background = 1 - a.background;
    EXPECT_FALSE(check_adherence(clip, w).background) << demo_prompt(a);
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
  TextEncoderConfig c;
  c.vocab = {"a", "red", "square"};
  c.dim = 16;
  c.max_tokens = 4;
  TextEncoder t = TextEncoder::random(c, 1, at::TensorOptions().dtype(at::kFloat));
  EXPECT_EQ(t.tokenize("A red, square!"), (std::vector<int64_t>{1, 2, 3, 0}));
  try {
    t.tokenize("a blue square");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'blue' is not in the text encoder's vocabulary (known words: a red square)"),
              std::string::npos)
        << e.what();
  }
  auto [y, mask] = t.encode({"a red square", "square"});
  EXPECT_EQ(y.sizes(), at::IntArrayRef({2, 1, 4, 16}));
  EXPECT_TRUE(at::equal(mask, at::tensor({1, 1, 1, 0, 1, 0, 0, 0}, at::kLong).reshape({2, 4})));
  const std::string dir = ditto::test::temp_dir();
  t.save(dir);
  TextEncoder back = TextEncoder::load(dir, at::TensorOptions().dtype(at::kFloat));
  EXPECT_TRUE(at::equal(back.encode({"a red square"}).first, t.encode({"a red square"}).first));
}

TEST(Training, AFewStepsLowerTheLossOnAFixedBatch) {
  const std::string dir = ditto::test::temp_dir();
  auto r = ditto::test::run_ditto("train --config ditto-demo-tiny --steps 30 --batch 2 --fixed-batch --log-every 1 "
                                  "--lr 3e-3 --warmup 1 --checkpoint-every 10 --quiet --threads 1 --out " + dir);
  ASSERT_EQ(r.code, 0) << r.output;
  std::regex line(R"(train step (\d+) loss ([0-9.eE+-]+))");
  std::vector<double> loss;
  for (std::sregex_iterator it(r.output.begin(), r.output.end(), line), end; it != end; ++it)
    loss.push_back(std::stod((*it)[2]));
  ASSERT_EQ(loss.size(), 30u) << r.output;
  EXPECT_LT(loss.back(), 0.6 * loss.front()) << "first " << loss.front() << " last " << loss.back();
  // The exported model and text encoder load, and resuming from the checkpoint continues.
  r = ditto::test::run_ditto("sample --model " + dir + " --prompt 'a red circle still on a black background' "
                             "--steps 2 --quiet --no-mp4 --out " + dir + "/sample");
  EXPECT_EQ(r.code, 0) << r.output;
  r = ditto::test::run_ditto("sample --model " + dir + " --prompt 'a pink circle still on a black background' --steps 2");
  EXPECT_NE(r.output.find("'pink' is not in the text encoder's vocabulary"), std::string::npos) << r.output;
  r = ditto::test::run_ditto("train --config ditto-demo-tiny --steps 32 --batch 2 --fixed-batch --log-every 1 --quiet "
                             "--threads 1 --out " + dir + " --resume " + dir + "/checkpoint.safetensors");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("train step 31 "), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("train step 30 "), std::string::npos) << r.output;
}
