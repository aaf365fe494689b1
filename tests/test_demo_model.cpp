// The shipped demo model: it loads strictly, `ditto sample --prompt` uses it with no other flag, and
// the videos it samples for a handful of held-out prompts show what the prompts ask for.
#include <gtest/gtest.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "pipeline/quality.h"
#include "demo/adherence.h"
#include "demo/demo_data.h"
#include "model/family.h"
#include "model/safetensors.h"
#include "model/stdit3.h"
#include "demo/word_encoder.h"
#include "test_util.h"

using namespace ditto;

namespace {
const std::string kDemo = std::string(DITTO_SOURCE_DIR) + "/models/ditto-demo";
}

TEST(DemoModel, DefaultModelOfDittoSample) {
  const std::string d = ditto::test::temp_dir();
  auto r = ditto::test::run_ditto("sample --prompt 'a red circle moving right slow' --steps 4 --quiet --no-mp4 --out " + d);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_GT(ditto::test::read_bytes(d + "/video.y4m").size(), 16u * 256 * 256 * 3);
  r = ditto::test::run_ditto("sample --prompt 'a red hexagon moving right slow' --steps 4 --out " + d);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("'hexagon' is not in the text encoder's vocabulary"), std::string::npos) << r.output;
}

TEST(DemoModel, ShippedWeightsLoadStrictly) {
  STDiT3 model = STDiT3::from_pretrained(kDemo, at::TensorOptions().dtype(at::kFloat));
  EXPECT_EQ(model.config().latent_space, LatentSpace::Pixel);
  WordEncoder text = WordEncoder::load(kDemo, at::TensorOptions().dtype(at::kFloat));
  EXPECT_EQ(text.config().dim, model.config().caption_channels);
  // Every prompt of the data set tokenizes.
  for (const auto& a : all_demo_attributes()) EXPECT_NO_THROW(text.tokenize(demo_prompt(a)));
}


TEST(DemoModel, SampledVideosShowTheirPromptedColourShapeAndBackground) {
  // The first evaluation prompts (none of them a profiling or calibration prompt), each sampled by
  // `ditto sample` with its defaults and read back by the adherence checker; metrics.json reports the
  // same reading. The shipped model draws the prompted colour, background, direction and speed for
  // every evaluation prompt (64 of 64) and the shape for 62 (MODEL_CARD.md: all attributes at once 62
  // of 64). Here colour and background are required for 7 of 8, shape 6, direction 7 and the whole
  // prompt 6 (the shipped model: 8 of 8 whole).
  const std::string d = ditto::test::temp_dir();
  constexpr int kPrompts = 8;
  int color = 0, shape = 0, background = 0, direction = 0, all = 0;
  std::string report;
  for (int k = 0; k < kPrompts; ++k) {
    const DemoAttributes a = demo_prompt_set(DemoPromptSet::Evaluation, k);
    const std::string out = d + "/" + std::to_string(k);
    auto r = ditto::test::run_ditto("sample --prompt '" + demo_prompt(a) + "' --seed " + std::to_string(k) +
                                    " --quiet --no-mp4 --threads 1 --out " + out);
    ASSERT_EQ(r.code, 0) << r.output;
    SafetensorsFile f(out + "/latent.safetensors");
    const Adherence adh = check_adherence(f.tensor("z", at::TensorOptions().dtype(at::kFloat))[0], a);
    const auto metrics = nlohmann::json::parse(ditto::test::read_bytes(out + "/metrics.json"));
    EXPECT_EQ(metrics.at("adherence"), adh.json());
    color += adh.color;
    shape += adh.shape;
    background += adh.background;
    direction += adh.direction;
    all += adh.ok();
    report += demo_prompt(a) + ": " + adh.json().dump() + "\n";
  }
  EXPECT_GE(color, 7) << report;
  EXPECT_GE(shape, 6) << report;
  EXPECT_GE(background, 7) << report;
  EXPECT_GE(direction, 7) << report;
  EXPECT_GE(all, 6) << report;
  std::cout << all << " of " << kPrompts << " pass every attribute\n" << report;
}

TEST(DemoModel, AdherenceIsReportedOnlyWhereTheCheckerApplies) {
  const std::string d = ditto::test::temp_dir();
  // A clip larger than the training clips: not checked, and said so.
  auto r = ditto::test::run_ditto("sample --prompt 'a red circle still' --steps 2 --height 64 --width 64 --quiet "
                                  "--no-mp4 --out " + d);
  ASSERT_EQ(r.code, 0) << r.output;
  auto m = nlohmann::json::parse(ditto::test::read_bytes(d + "/metrics.json"));
  EXPECT_NE(m.at("adherence").get<std::string>().find("not checked: the checker reads clips of 16 frames of 32x32"),
            std::string::npos) << m.dump();
}

TEST(DemoModel, NegativePromptAndFlowShiftReachTheSampler) {
  const std::string d = ditto::test::temp_dir();
  const std::string base = "sample --prompt 'a red circle moving right fast' --steps 2 --seed 3 --quiet --no-mp4 ";
  auto r = ditto::test::run_ditto(base + "--out " + d + "/plain");
  ASSERT_EQ(r.code, 0) << r.output;
  r = ditto::test::run_ditto(base + "--negative-prompt 'a red circle moving left fast' --flow-shift 3 --out " + d + "/neg");
  ASSERT_EQ(r.code, 0) << r.output;
  auto m = nlohmann::json::parse(ditto::test::read_bytes(d + "/neg/metrics.json"));
  EXPECT_EQ(m["run"]["negative_prompt"], "a red circle moving left fast");
  EXPECT_EQ(m["run"]["flow_shift"], 3.0);
  // 2 steps: t = 1, 0.5; shifted by 3: 1, 1.5 / 2 = 0.75.
  EXPECT_EQ(m["timesteps"], nlohmann::json::array({1000.0, 750.0})) << m["timesteps"].dump();
  EXPECT_NE(ditto::test::read_bytes(d + "/neg/latent.safetensors"), ditto::test::read_bytes(d + "/plain/latent.safetensors"));
  // Bad negatives are errors that name the problem.
  r = ditto::test::run_ditto(base + "--negative-prompt 'a red hexagon' --out " + d + "/bad");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("'hexagon' is not in the text encoder's vocabulary"), std::string::npos) << r.output;
  r = ditto::test::run_ditto(base + "--negative-prompt 'a red circle' --cfg-scale 1 --out " + d + "/bad");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("off at cfg scale 1"), std::string::npos) << r.output;
  r = ditto::test::run_ditto(base + "--flow-shift -2 --out " + d + "/bad");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("flow shift must be a positive number"), std::string::npos) << r.output;
  // The job file's fields: the good line renders with them, the bad ones fail alone.
  ditto::test::write_bytes(d + "/jobs.jsonl",
      R"({"prompt": "a red circle moving right fast", "steps": 2, "seed": 3, "negative_prompt": "a red circle moving left fast", "flow_shift": 3, "output": "good"})" "\n"
      R"({"prompt": "a red circle", "steps": 2, "flow_shift": -1, "output": "shift"})" "\n"
      R"({"prompt": "a red circle", "steps": 2, "negative_prompt": "a blue circle", "negative_caption_embedding": "n.safetensors", "output": "both"})" "\n");
  r = ditto::test::run_ditto("render --no-mp4 --quiet --jobs " + d + "/jobs.jsonl --out " + d + "/render");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_EQ(ditto::test::read_bytes(d + "/render/good/latent.safetensors"), ditto::test::read_bytes(d + "/neg/latent.safetensors"));
  const std::string failures = ditto::test::read_bytes(d + "/render/failures.jsonl");
  EXPECT_NE(failures.find("'flow_shift' must be a number >= 0"), std::string::npos) << failures;
  EXPECT_NE(failures.find("give 'negative_prompt' or 'negative_caption_embedding', not both"), std::string::npos) << failures;
}

TEST(DemoModel, TheWanDemoLoadsStrictlyAndDrawsThePromptedColour) {
  // The shipped Wan demo (an early model: colour and background, not yet motion): it loads as a Wan
  // pixel-space model, and on four held-out prompts the checker reads the prompted colour every time
  // (63 of its 64 held-out prompts in benchmarks/results/wan-demo-cpu-2026-11-30).
  const std::string dir = std::string(DITTO_SOURCE_DIR) + "/models/wan-demo";
  const ModelOutline outline = read_outline(dir);
  EXPECT_EQ(outline.family, "wan");
  EXPECT_NO_THROW(load_dit(dir, at::TensorOptions().dtype(at::kFloat)));
  for (int p = 0; p < 4; ++p) {
    const std::string d = ditto::test::temp_dir();
    const DemoAttributes a = demo_prompt_set(DemoPromptSet::Evaluation, p);
    auto r = ditto::test::run_ditto("sample --model " + dir + " --prompt '" + demo_prompt(a) + "' --seed " +
                                    std::to_string(1000 + p) + " --quiet --no-mp4 --threads 2 --out " + d);
    ASSERT_EQ(r.code, 0) << r.output;
    const auto m = nlohmann::json::parse(ditto::test::read_bytes(d + "/metrics.json"));
    EXPECT_TRUE(m["adherence"]["color"].get<bool>()) << demo_prompt(a) << ": " << m["adherence"].dump();
  }
}
