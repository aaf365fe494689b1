// Wan-VAE 2.1's decoder against diffusers' AutoencoderKLWan on a tiny random model
// (tests/fixtures/make_wan_vae_fixtures.py): the feature-cached decode (one latent frame at a time, as
// WanPipeline decodes), the same in longer chunks, diffusers' spatial tiling and the tiles shared
// between ranks, bfloat16 against float32, and VAE directories that do not fit their config. Open-Sora
// 1.2's VAE against its own code's decode (tests/fixtures/opensora_vae_tiny, its README says how).
#include <gtest/gtest.h>

#include <functional>

#include "model/safetensors.h"
#include "model/family.h"
#include "model/opensora_vae.h"
#include "model/wan_vae.h"
#include "pipeline/video_job.h"

#include "test_util.h"

using namespace ditto;
using ditto::test::rel_err;
using ditto::test::run_command;
using ditto::test::temp_dir;

namespace {

std::string vae_dir() { return std::string(DITTO_SOURCE_DIR) + "/tests/fixtures/wan_vae_tiny"; }

const std::map<std::string, at::Tensor>& runs() {
  static const auto r = load_safetensors(vae_dir() + "/decode_runs.safetensors");
  return r;
}

const WanVaeDecoder& decoder() {
  static const WanVaeDecoder d = WanVaeDecoder::from_pretrained(vae_dir(), at::TensorOptions().dtype(at::kFloat));
  return d;
}

// Copies `from`'s config.json into `dir` (which holds the weights), edits it with `sed`, and expects
// `load(dir)` to fail with `text` in its message.
void expect_config_error(const std::string& from, const std::string& dir, const std::function<void(const std::string&)>& load,
                         const std::string& sed, const std::string& text) {
  run_command("cp " + from + "/config.json " + dir + "/ && sed -i '" + sed + "' " + dir + "/config.json");
  try {
    load(dir);
    ADD_FAILURE() << "loaded after " << sed;
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

double max_abs(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace

// The fixture's z is the transformer's normalised latent; diffusers decoded z * std + mean.
TEST(WanVae, DecodeMatchesDiffusers) {
  const auto vae = WanVae(std::make_shared<WanVaeDecoder>(decoder()));
  const at::Tensor frames = vae.decode(runs().at("z"), 0);
  ASSERT_EQ(frames.sizes(), runs().at("frames").sizes());  // [1, 3, 9, 32, 48]: 3 latent frames -> 1 + 4 + 4
  EXPECT_LT(max_abs(frames, runs().at("frames")), 1e-5);  // float32's floor over ~40 layers (measured 3.2e-6)
  EXPECT_GT(runs().at("frames").std().item<double>(), 0.1);  // the reference is not flat
  EXPECT_EQ(vae.frame_rounding(), FrameRounding::Truncate);
  const LatentShape s = vae.latent_shape(81, 480, 832);
  EXPECT_EQ(s.channels, 4);
  EXPECT_EQ(s.frames, 21);
  EXPECT_EQ(s.height, 60);
  EXPECT_EQ(s.width, 104);
  EXPECT_THROW(vae.latent_shape(80, 480, 832), std::exception);
}

// Chunks of several latent frames carry the same frames between them as one at a time.
TEST(WanVae, ChunksOfAnyLengthDecodeTheSame) {
  const at::Tensor z = decoder().denormalize(runs().at("z"));
  const at::Tensor one = decoder().decode_latent(z, 1);
  for (int chunk : {2, 3, 8}) EXPECT_LT(max_abs(decoder().decode_latent(z, chunk), one), 1e-5) << chunk;
  // Without the carried frames (each latent frame alone) the result differs: the carry is tested.
  const at::Tensor alone = decoder().decode_latent(z.narrow(2, 1, 1), 1);
  EXPECT_GT(max_abs(alone, one.narrow(2, 1, 1)), 1e-3);
}

TEST(WanVae, TiledDecodeMatchesDiffusersTiling) {
  const VaeTiling tiling{32, 24};
  const at::Tensor z = decoder().denormalize(runs().at("z"));
  const at::Tensor tiled = decoder().blend_tiles(decoder().decode_tiles(z, tiling), z, tiling);
  EXPECT_LT(max_abs(tiled, runs().at("tiled")), 1e-5);
  // Tiles are another computation than the whole frame's decode (its attention and convolutions see
  // across tile borders): with 4-latent-pixel tiles on this tiny model, far from it.
  EXPECT_GT(max_abs(tiled, runs().at("frames")), 1e-2);
  // Shared among ranks, each decoding its tiles: the union is the one-rank tiled decode, bit for bit.
  for (int ranks : {2, 3}) {
    std::vector<at::Tensor> all(4);
    for (int r = 0; r < ranks; ++r)
      for (int k = r; k < 4; k += ranks) {
        EXPECT_FALSE(all[k].defined());
        all[k] = decoder().decode_tile(z, tiling, k);
      }
    EXPECT_TRUE(at::equal(decoder().blend_tiles(all, z, tiling), tiled)) << ranks;
  }
  EXPECT_THROW(decoder().decode_tiles(z, VaeTiling{30, 24}), std::exception);  // not a multiple of 8
  EXPECT_THROW(decoder().blend_tiles(std::vector<at::Tensor>(4), z, tiling), std::exception);
}

TEST(WanVae, Bfloat16StaysCloseToFloat32) {
  const WanVaeDecoder bf16 = WanVaeDecoder::from_pretrained(vae_dir(), at::TensorOptions().dtype(at::kBFloat16));
  const at::Tensor z = decoder().denormalize(runs().at("z"));
  const at::Tensor out = bf16.decode_latent(z);
  EXPECT_EQ(out.scalar_type(), at::kFloat);
  const double e = rel_err(out, runs().at("frames"));
  EXPECT_GT(e, 1e-4);  // it did run in bfloat16
  EXPECT_LT(e, 0.15);  // measured 0.094; diffusers' own bfloat16 decode of this model is 0.072 off
}

TEST(WanVae, DirectoriesThatDoNotFitAreRefusedByName) {
  const std::string d = temp_dir();
  run_command("cp " + vae_dir() + "/config.json " + vae_dir() + "/diffusion_pytorch_model.safetensors " + d + "/");
  const auto expect_error = [&](const std::string& sed, const std::string& text) {
    expect_config_error(vae_dir(), d, [](const std::string& dir) { WanVaeDecoder::from_pretrained(dir, at::TensorOptions().dtype(at::kFloat)); },
                        sed, text);
  };
  expect_error("s/\"num_res_blocks\": 2/\"num_res_blocks\": 3/", "missing: decoder.up_blocks.0.resnets.3.");
  expect_error("s/\"base_dim\": 4/\"base_dim\": 8/", "decoder.conv_in.weight");
  expect_error("s/\"is_residual\": false/\"is_residual\": true/", "Wan 2.2 TI2V-5B");
  expect_error("s/\"scale_factor_spatial\": 8/\"scale_factor_spatial\": 16/", "scale_factor_spatial is 16 but the stages give 8");
  expect_error("s/\"z_dim\": 4/\"z_dim\": 5/", "latents_mean and latents_std must have z_dim = 5 values");
  expect_error("s/\"AutoencoderKLWan\"/\"AutoencoderKL\"/", "not AutoencoderKLWan");
  // A latent of the wrong width is refused by shape.
  EXPECT_THROW(decoder().decode_latent(at::zeros({1, 5, 1, 2, 2})), std::exception);
  // load_vae finds the kind from the directory and refuses what it does not decode.
  run_command("cp " + vae_dir() + "/config.json " + d + "/ && sed -i 's/\"AutoencoderKLWan\"/\"AutoencoderKLCogVideoX\"/' " + d +
              "/config.json");
  try {
    load_vae(d, VaeOptions{});
    ADD_FAILURE() << "a CogVideoX VAE was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("'AutoencoderKLCogVideoX' is not a VAE ditto decodes"), std::string::npos) << e.what();
  }
  EXPECT_EQ(load_vae(vae_dir(), VaeOptions{})->name(), "wan2.1");
}

// Which VAE a job decodes with: its own, the pipeline's vae/, or none (the latent only); one that
// does not fit the model is refused before sampling.
TEST(WanVae, AJobFindsItsVaeAndRefusesOneThatDoesNotFit) {
  const std::string fixtures = std::string(DITTO_SOURCE_DIR) + "/tests/fixtures/";
  VideoJob job;
  job.frames = 17, job.height = 48, job.width = 64;
  const ModelOutline wan = read_outline(fixtures + "wan_tiny");
  EXPECT_FALSE(job_vae(job, fixtures + "wan_tiny", wan, at::kCPU)->can_decode());  // a transformer alone: latents only
  EXPECT_TRUE(job_vae(job, fixtures + "wan_tiny_t2v", wan, at::kCPU)->can_decode());  // the pipeline's vae/
  job.vae = vae_dir();
  EXPECT_EQ(job_vae(job, fixtures + "wan_tiny", wan, at::kCPU)->name(), "wan2.1");
  // Open-Sora's latents have the same shape here, but are another VAE's.
  const ModelOutline os = read_outline(fixtures + "opensora_stdit3_tiny");
  try {
    job_vae(job, fixtures + "opensora_stdit3_tiny", os, at::kCPU);
    ADD_FAILURE() << "a Wan VAE was accepted for Open-Sora latents";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("decodes wan2.1 latents; the model samples opensora-v1.2 latents"), std::string::npos)
        << e.what();
  }
  job.frames = 16;
  EXPECT_THROW(job_vae(job, fixtures + "wan_tiny", wan, at::kCPU), std::exception);  // not 4k + 1 frames
  // Tiles are checked with the job, before any sampling: multiples of 8 with 0 < stride <= tile.
  job.frames = 17;
  for (auto [tile, stride] : {std::pair<int, int>{100, 0}, {8, 0}, {32, 40}}) {
    job.vae_tile = tile, job.vae_tile_stride = stride;
    try {
      job_vae(job, fixtures + "wan_tiny", wan, at::kCPU);
      ADD_FAILURE() << "tile " << tile << " stride " << stride << " accepted";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find("multiples of 8 pixels"), std::string::npos) << e.what();
    }
  }
  // The same weights serve every tiling.
  job.vae_tile = 32, job.vae_tile_stride = 24;
  const auto a = job_vae(job, fixtures + "wan_tiny", wan, at::kCPU);
  job.vae_tile = 0, job.vae_tile_stride = 0;
  const auto b = job_vae(job, fixtures + "wan_tiny", wan, at::kCPU);
  EXPECT_NE(a.get(), b.get());
  EXPECT_EQ(&dynamic_cast<const WanVae&>(*a).decoder(), &dynamic_cast<const WanVae&>(*b).decoder());
}

// As diffusers, a frame no larger than one tile is decoded whole (one part), not cut into edge tiles.
TEST(WanVae, AFrameThatFitsOneTileIsNotTiled) {
  const auto d = std::make_shared<WanVaeDecoder>(decoder());
  const WanVae tiled(d, VaeTiling{32, 24}), whole(d);
  const at::Tensor small = runs().at("z").narrow(4, 0, 4);  // 4 x 4 latent pixels: one 32-pixel tile
  EXPECT_EQ(tiled.parts(small), 1);
  EXPECT_TRUE(at::equal(tiled.decode(small), whole.decode(small)));
  EXPECT_EQ(tiled.parts(runs().at("z")), 4);  // 4 x 6: 2 x 2 tiles
}

namespace {
std::string os_dir() { return std::string(DITTO_SOURCE_DIR) + "/tests/fixtures/opensora_vae_tiny"; }
}  // namespace

// 23 frames: a chunk of 5 latents -> 17 frames (3 padding frames dropped) and one of 2 -> 6 (2
// dropped); 6 frames: the remainder chunk alone. The temporal VAE's output and the frames, unclamped.
TEST(OpenSoraVae, DecodeMatchesOpenSorasOwnCode) {
  const auto ref = load_safetensors(os_dir() + "/decode_runs.safetensors");
  const auto vae = OpenSoraVae::from_pretrained(os_dir(), at::TensorOptions().dtype(at::kFloat));
  for (int frames : {23, 6}) {
    const at::Tensor z = ref.at("z_" + std::to_string(frames));
    const at::Tensor x = vae->decode_unclamped(z, frames);
    const at::Tensor want = ref.at("x_" + std::to_string(frames));
    ASSERT_EQ(x.sizes(), want.sizes()) << frames;
    EXPECT_LT(rel_err(x, want), 5e-6) << frames;  // measured 1.6e-6 (23 frames), 1.5e-6 (6)
    EXPECT_GT(want.std().item<double>(), 0.3);
    EXPECT_EQ(vae->parts(z), frames == 23 ? 2 : 1);
    // The first chunk's temporal output (the 2-D latent's frames).
    const auto& c = vae->config();
    std::vector<double> s = c.scale, h = c.shift;
    const at::Tensor zz = z.narrow(2, 0, std::min<int64_t>(5, z.size(2))) *
                              at::tensor(s, at::kDouble).to(at::kFloat).view({1, -1, 1, 1, 1}) +
                          at::tensor(h, at::kDouble).to(at::kFloat).view({1, -1, 1, 1, 1});
    EXPECT_LT(rel_err(vae->temporal_decode(zz, std::min(17, frames)), ref.at("temporal_" + std::to_string(frames))), 2e-6);
    EXPECT_EQ(vae->latent_shape(frames, 24, 32).frames, z.size(2));
  }
  // Without the frame count the latent's 7 frames decode into all 17 + 8 they hold.
  EXPECT_EQ(vae->decode(ref.at("z_23"), 0).size(2), 25);
  EXPECT_THROW(vae->decode(ref.at("z_23"), 30), std::exception);  // 30 frames are 9 latents, not 7
  const LatentShape s = vae->latent_shape(51, 240, 426);  // Open-Sora's "2s" at 240p: 15 x 30 x 53
  EXPECT_EQ(s.frames, 15);
  EXPECT_EQ(s.height, 30);
  EXPECT_EQ(s.width, 53);
  EXPECT_EQ(vae->frame_rounding(), FrameRounding::Round);
}

TEST(OpenSoraVae, Bfloat16StaysCloseToFloat32) {
  const auto ref = load_safetensors(os_dir() + "/decode_runs.safetensors");
  const auto bf16 = OpenSoraVae::from_pretrained(os_dir(), at::TensorOptions().dtype(at::kBFloat16));
  const at::Tensor x = bf16->decode_unclamped(ref.at("z_23"), 23);
  EXPECT_EQ(x.scalar_type(), at::kFloat);
  const double e = rel_err(x, ref.at("x_23"));
  EXPECT_GT(e, 1e-4);  // it did run in bfloat16
  EXPECT_LT(e, 0.1);
}

// Its chunks are independent: shared among ranks (each decoding whole chunks), the same frames.
TEST(OpenSoraVae, ChunksSharedAmongRanksGiveTheSameFrames) {
  const auto ref = load_safetensors(os_dir() + "/decode_runs.safetensors");
  const auto vae = load_vae(os_dir(), VaeOptions{});
  EXPECT_EQ(vae->name(), "opensora-v1.2");
  const at::Tensor z = ref.at("z_23");
  std::vector<at::Tensor> parts;
  for (int k = 0; k < vae->parts(z); ++k) {
    parts.push_back(vae->decode_part(z, k, 23));
    EXPECT_EQ(parts.back().sizes().vec(), vae->part_shape(z, k, 23));
  }
  EXPECT_TRUE(at::equal(vae->join_parts(parts, z), vae->decode(z, 23)));
  // A job with Open-Sora's transformer and this VAE fits; a Wan transformer does not.
  const std::string fixtures = std::string(DITTO_SOURCE_DIR) + "/tests/fixtures/";
  VideoJob job;
  job.frames = 23, job.height = 24, job.width = 32, job.vae = os_dir();
  EXPECT_TRUE(job_vae(job, "", read_outline(fixtures + "opensora_stdit3_tiny"), at::kCPU)->can_decode());
  job.frames = 17;
  EXPECT_THROW(job_vae(job, "", read_outline(fixtures + "wan_tiny"), at::kCPU), std::exception);
}

TEST(OpenSoraVae, DirectoriesThatDoNotFitAreRefusedByName) {
  const std::string d = temp_dir();
  run_command("cp " + os_dir() + "/model.safetensors " + d + "/");
  const auto expect_error = [&](const std::string& sed, const std::string& text) {
    expect_config_error(os_dir(), d, [](const std::string& dir) { OpenSoraVae::from_pretrained(dir, at::TensorOptions().dtype(at::kFloat)); },
                        sed, text);
  };
  expect_error("s/\"num_res_blocks\": 2/\"num_res_blocks\": 3/", "missing: temporal_vae.decoder.");
  expect_error("s/\"layers_per_block\": 1/\"layers_per_block\": 2/", "missing: spatial_vae.module.decoder.");
  expect_error("s/\"num_groups\": 2/\"num_groups\": 3/", "do not split into 3 groups");
  expect_error("s/\"VAE_Temporal_SD\"/\"VAE_3D\"/", "type 'VAE_3D' is not Open-Sora 1.2's temporal VAE");
}

// End to end: Open-Sora's transformer with its VAE given apart (--vae), the frames written; `ditto
// decode` of the saved latent (its frame count read from the file) gives the same frames on one rank
// and on two sharing the chunks.
TEST(OpenSoraVae, SampleDecodesAndDittoDecodeAgreesAtAnyRankCount) {
  const std::string d = temp_dir(), model = std::string(DITTO_SOURCE_DIR) + "/tests/fixtures/opensora_stdit3_tiny";
  auto r = ditto::test::run_ditto("sample --model " + model + " --vae " + os_dir() + " --random-caption 4 --steps 2 --frames 23 "
                                  "--height 24 --width 32 --png --no-mp4 --quiet --out " + d + "/s");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto m = nlohmann::json::parse(ditto::test::read_bytes(d + "/s/metrics.json"));
  EXPECT_EQ(m["decoding"]["parts"], 2) << m["decoding"];
  EXPECT_EQ(m["outputs"]["png_frames"], "frames");
  for (int np : {1, 2}) {
    const std::string out = d + "/dec" + std::to_string(np);
    r = ditto::test::run_ditto_mpi(np, "decode --vae " + os_dir() + " --latent " + d + "/s/latent.safetensors --png --no-mp4 "
                                       "--quiet --out " + out);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_FALSE(ditto::test::exists(out + "/frames/frame_0023.png"));
  }
  // Two ranks sharing the chunks write one rank's frames byte for byte; sample's own frames (the
  // latent in memory rather than read back) agree but for values on a rounding edge.
  size_t differ = 0, total = 0;
  for (int t = 0; t < 23; ++t) {
    char name[64];
    std::snprintf(name, sizeof name, "/frames/frame_%04d.png", t);
    const std::string one = ditto::test::read_bytes(d + "/dec1" + name), two = ditto::test::read_bytes(d + "/dec2" + name),
                      own = ditto::test::read_bytes(d + "/s" + name);
    EXPECT_TRUE(one == two) << name;
    ASSERT_EQ(one.size(), own.size()) << name;
    for (size_t i = 0; i < one.size(); ++i) differ += one[i] != own[i];
    total += one.size();
  }
  EXPECT_LT(static_cast<double>(differ) / static_cast<double>(total), 1e-3) << differ << " of " << total << " bytes";
}

// A decode that fails (DITTO_FAULT_INJECT=R:0 fails rank R's) keeps the sampled latent: sample writes it
// and metrics.json and exits 1 naming it; render records the job as failed with the latent kept in
// its partial directory; two ranks sharing the parts both stop with the error (neither waits).
TEST(OpenSoraVae, AFailedDecodeKeepsTheLatent) {
  const std::string d = temp_dir(), model = std::string(DITTO_SOURCE_DIR) + "/tests/fixtures/opensora_stdit3_tiny";
  const std::string video = " --random-caption 4 --steps 2 --frames 23 --height 24 --width 32 --no-mp4 --quiet ";
  auto r = ditto::test::run_command("DITTO_FAULT_INJECT=0:0 " + std::string(DITTO_BINARY) + " sample --model " + model +
                                    " --vae " + os_dir() + video + "--out " + d + "/s");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("decoding failed: injected fault at the decode"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ditto decode can retry it"), std::string::npos) << r.output;
  ASSERT_TRUE(ditto::test::exists(d + "/s/latent.safetensors"));
  const auto m = nlohmann::json::parse(ditto::test::read_bytes(d + "/s/metrics.json"));
  EXPECT_NE(m["outputs"]["video"].get<std::string>().find("not written: decoding failed"), std::string::npos) << m["outputs"];
  // The kept latent decodes.
  r = ditto::test::run_ditto("decode --vae " + os_dir() + " --latent " + d + "/s/latent.safetensors --no-mp4 --quiet --out " + d + "/dec");
  EXPECT_EQ(r.code, 0) << r.output;
  // Two ranks sharing the chunks, rank 1's decode failing: both end, with the error.
  r = ditto::test::run_ditto_mpi(2, "decode --vae " + os_dir() + " --latent " + d + "/s/latent.safetensors --no-mp4 --quiet --out " +
                                        d + "/dec2", "DITTO_FAULT_INJECT=1:0");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("injected fault at the decode"), std::string::npos) << r.output;
  EXPECT_FALSE(ditto::test::exists(d + "/dec2/metrics.json"));
  // render: the job fails, its latent kept where it was written.
  ditto::test::write_bytes(d + "/jobs.jsonl", R"({"random_caption": 4, "steps": 2, "frames": 23, "height": 24, "width": 32, "output": "a"})" "\n");
  r = ditto::test::run_command("DITTO_FAULT_INJECT=0:0 " + std::string(DITTO_BINARY) + " render --model " + model + " --vae " +
                               os_dir() + " --no-mp4 --quiet --jobs " + d + "/jobs.jsonl --out " + d + "/render");
  EXPECT_NE(r.code, 0);
  const auto failures = ditto::test::read_jsonl(d + "/render/failures.jsonl");
  ASSERT_EQ(failures.size(), 1u) << r.output;
  EXPECT_NE(failures[0]["error"].get<std::string>().find("decoding failed"), std::string::npos) << failures[0];
  EXPECT_TRUE(ditto::test::exists(d + "/render/.a.partial/latent.safetensors"));
  EXPECT_FALSE(ditto::test::exists(d + "/render/a"));
}
