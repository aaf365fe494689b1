// The shipped demo model: it loads strictly, and `ditto sample --prompt` uses it with no other flag.
#include <gtest/gtest.h>

#include "model/demo_data.h"
#include "model/stdit3.h"
#include "model/text_encoder.h"
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
  TextEncoder text = TextEncoder::load(kDemo, at::TensorOptions().dtype(at::kFloat));
  EXPECT_EQ(text.config().dim, model.config().caption_channels);
  // Every prompt of the data set tokenizes.
  for (const auto& a : all_demo_attributes()) EXPECT_NO_THROW(text.tokenize(demo_prompt(a)));
}

