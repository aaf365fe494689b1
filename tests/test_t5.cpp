// The T5 and umT5 encoders and their SentencePiece tokenizer against transformers' T5EncoderModel / UMT5EncoderModel on tiny random
// models (tests/fixtures/make_t5_fixtures.py): the last hidden state of a padded batch in float32 and
// float64, the relative-position buckets, and checkpoints that do not fit their config.
#include <gtest/gtest.h>

#include "model/safetensors.h"
#include "model/t5.h"
#include "model/text_encoder.h"
#include "model/text_clean.h"
#include "model/tokenizer.h"

#include <nlohmann/json.hpp>
#include "test_util.h"

using namespace ditto;
using ditto::test::run_command;
using ditto::test::temp_dir;

namespace {

std::string dir_of(const std::string& name) { return std::string(DITTO_SOURCE_DIR) + "/tests/fixtures/" + name; }

// max |a - b| over max |b|.
double rel_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / b.to(at::kDouble).abs().max().item<double>();
}

void expect_matches(const std::string& name) {
  const auto ref = load_safetensors(dir_of(name) + "/reference.safetensors");
  const T5Encoder f32 = T5Encoder::from_pretrained(dir_of(name), at::TensorOptions().dtype(at::kFloat));
  const at::Tensor out = f32.encode(ref.at("input_ids"), ref.at("attention_mask"));
  ASSERT_EQ(out.sizes(), ref.at("last_hidden_state").sizes());
  EXPECT_LT(rel_diff(out, ref.at("last_hidden_state")), 2e-6) << name;
  // transformers computes the norms' variance and the softmax in float32 even in a float64 model, so
  // float64 agrees to float32's floor, not better (ditto's float64 is float64 throughout).
  const T5Encoder f64 = T5Encoder::from_pretrained(dir_of(name), at::TensorOptions().dtype(at::kDouble));
  const at::Tensor out64 = f64.encode(ref.at("input_ids"), ref.at("attention_mask"));
  EXPECT_EQ(out64.scalar_type(), at::kDouble);
  EXPECT_LT(rel_diff(out64, ref.at("last_hidden_state_f64")), 2e-6) << name;
}

}  // namespace

TEST(T5, EncoderMatchesTransformersT5v11) { expect_matches("t5_tiny"); }

TEST(T5, EncoderMatchesTransformersUmT5) { expect_matches("umt5_tiny"); }

TEST(T5, UmT5ReadsEveryLayersOwnBias) {
  // The same weights read as T5 (one shared bias) must not give umT5's output: the per-layer biases matter.
  const std::string d = temp_dir();
  run_command("cp " + dir_of("umt5_tiny") + "/* " + d + "/ && sed -i 's/\"umt5\"/\"t5\"/' " + d + "/config.json");
  try {
    T5Encoder::from_pretrained(d, at::TensorOptions().dtype(at::kFloat));
    ADD_FAILURE() << "umT5's per-layer biases were accepted as T5's";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("unexpected: encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"),
              std::string::npos)
        << e.what();
  }
}

TEST(T5, RelativeBuckets) {
  // num_buckets 32, max_distance 128: 16 per sign, exact below 8, logarithmic to 15 at 128 and beyond.
  const at::Tensor b = t5_relative_buckets(1, 600, 32, 128);  // key - query = 0 .. 599
  EXPECT_EQ(b[0][0].item<int64_t>(), 0);
  EXPECT_EQ(b[0][1].item<int64_t>(), 17);
  EXPECT_EQ(b[0][7].item<int64_t>(), 23);
  EXPECT_EQ(b[0][8].item<int64_t>(), 24);
  EXPECT_EQ(b[0][127].item<int64_t>(), 31);
  EXPECT_EQ(b[0][599].item<int64_t>(), 31);
  const at::Tensor n = t5_relative_buckets(600, 1, 32, 128);  // key - query = 0 .. -599
  EXPECT_EQ(n[7][0].item<int64_t>(), 7);
  EXPECT_EQ(n[12][0].item<int64_t>(), 9);  // 8 + floor(8 ln(12 / 8) / ln(16)) = 8 + floor(1.17)
  EXPECT_EQ(n[599][0].item<int64_t>(), 15);
}

TEST(T5, CheckpointsThatDoNotFitTheirConfigAreRefusedByName) {
  const std::string d = temp_dir();
  run_command("cp " + dir_of("t5_tiny") + "/* " + d + "/ && sed -i 's/\"num_layers\": 3/\"num_layers\": 4/' " + d +
              "/config.json");
  try {
    T5Encoder::from_pretrained(d, at::TensorOptions().dtype(at::kFloat));
    ADD_FAILURE() << "a 3-layer checkpoint loaded as 4 layers";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("missing: encoder.block.3."), std::string::npos) << e.what();
  }
  run_command("sed -i 's/\"num_layers\": 4/\"num_layers\": 3/; s/\"gated-gelu\"/\"gated-silu\"/' " + d + "/config.json");
  try {
    T5Encoder::from_pretrained(d, at::TensorOptions().dtype(at::kFloat));
    ADD_FAILURE() << "an unsupported activation was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("field 'feed_forward_proj': 'gated-silu' is not supported"), std::string::npos)
        << e.what();
  }
  const T5Encoder ok = T5Encoder::from_pretrained(dir_of("t5_tiny"), at::TensorOptions().dtype(at::kFloat));
  EXPECT_THROW(ok.encode(at::full({1, 3}, 128, at::kLong), at::ones({1, 3}, at::kLong)), std::exception);
}

// The SentencePiece tokenizer against transformers' T5Tokenizer on the same spiece.model
// (tests/fixtures/spm_tiny, made by make_tokenizer_fixtures.py): punctuation, an HTML entity (not
// unescaped: that is the prompt cleaning's job), accents, CJK, runs of spaces, tabs and newlines, emoji,
// an over-long prompt (truncated to 15 pieces + EOS) and the empty prompt (EOS alone).
TEST(Tokenizer, SentencePieceGivesTransformersIds) {
  const SentencePieceTokenizer tok = SentencePieceTokenizer::load(dir_of("spm_tiny"));
  EXPECT_EQ(tok.eos_id(), 1);
  EXPECT_EQ(tok.pad_id(), 0);
  const nlohmann::json ref = nlohmann::json::parse(ditto::test::read_bytes(dir_of("spm_tiny") + "/tokens.json"));
  const int L = ref["max_length"];
  ASSERT_EQ(ref["rows"].size(), 10u);
  for (const auto& row : ref["rows"]) {
    const TokenIds t = tok.encode(row["text"].get<std::string>(), L);
    EXPECT_EQ(t.ids, row["input_ids"].get<std::vector<int64_t>>()) << row["text"];
    EXPECT_EQ(t.mask, row["attention_mask"].get<std::vector<int64_t>>()) << row["text"];
  }
}

TEST(Tokenizer, AFileThatIsNotAModelIsRefusedByName) {
  const std::string d = temp_dir();
  ditto::test::write_bytes(d + "/spiece.model", "not a model");
  try {
    SentencePieceTokenizer::load(d);
    ADD_FAILURE() << "a text file loaded as a SentencePiece model";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("'" + d + "/spiece.model' is not a SentencePiece model"), std::string::npos) << e.what();
  }
  EXPECT_THROW(SentencePieceTokenizer::load(d + "/missing.model"), std::exception);
}

// Wan's prompt cleaning against Python's (html.unescape twice, re's \s runs, strip), entity by entity.
TEST(Tokenizer, WanPromptCleaningIsPythons) {
  const nlohmann::json ref = nlohmann::json::parse(ditto::test::read_bytes(dir_of("spm_tiny") + "/tokens.json"));
  ASSERT_GE(ref["wan_clean"].size(), 9u);
  for (const auto& row : ref["wan_clean"])
    EXPECT_EQ(wan_prompt_clean(row["text"].get<std::string>()), row["clean"].get<std::string>()) << row["text"];
}

// `ditto encode` on a tiny umT5 with its SentencePiece model: the prompt cleaned, tokenized to 16,
// encoded, trimmed to its real tokens and zero-padded back, as Wan's pipelines do in Python.
// Open-Sora 1.2's prompt preparation (the aesthetic-score suffix, clean_caption twice) against its own
// code's output on prompts with URLs, markup, entities, @names, CJK, dashes and quotes, IP addresses,
// file names, product codes, punctuation runs and Unicode case (tests/fixtures/opensora_captions).
TEST(Tokenizer, OpenSoraPromptPreparationIsOpenSoras) {
  const auto j = nlohmann::json::parse(ditto::test::read_bytes(dir_of("opensora_captions") + "/captions.json"));
  int n = 0;
  for (const auto& c : j.at("cases")) {
    EXPECT_EQ(opensora_prompt(c.at("prompt").get<std::string>()), c.at("cleaned").get<std::string>()) << c.at("prompt");
    ++n;
  }
  EXPECT_GE(n, 20);
  EXPECT_EQ(opensora_prompt("A Cat", -1), "a cat");  // no score asked for
  // std::regex recurses per character: prompts are bounded (T5 keeps 300 tokens of them anyway).
  EXPECT_NO_THROW(opensora_prompt("\"" + std::string(4000, 'a') + "\""));
  EXPECT_THROW(opensora_prompt(std::string(5000, ' ')), std::exception);
}

TEST(Tokenizer, DittoEncodeWritesWansPromptEmbedding) {
  const std::string d = temp_dir();
  run_command("cp " + dir_of("umt5_tiny") + "/config.json " + dir_of("umt5_tiny") + "/model.safetensors " +
              dir_of("spm_tiny") + "/spiece.model " + d + "/");
  const auto ref = load_safetensors(dir_of("umt5_tiny") + "/prompt_embeds.safetensors");
  const SafetensorsFile meta(dir_of("umt5_tiny") + "/prompt_embeds.safetensors");
  const std::string prompt = meta.metadata().at("prompt");
  const std::string quoted = ditto::test::shell_quote(prompt);
  auto r = ditto::test::run_ditto("encode --text-encoder " + d + " --prompt " + quoted + " --max-sequence-length 16 --out " +
                                  d + "/emb.safetensors");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto got = load_safetensors(d + "/emb.safetensors");
  EXPECT_TRUE(at::equal(got.at("mask"), ref.at("mask"))) << got.at("mask");
  EXPECT_LT(rel_diff(got.at("y"), ref.at("y")), 2e-6);
  const int64_t n = ref.at("mask").sum().item<int64_t>();
  ASSERT_LT(n, 16) << "the fixture's prompt must leave padding";
  EXPECT_EQ(got.at("y").narrow(0, n, 16 - n).abs().max().item<float>(), 0.0f) << "padding rows must be zero (Wan)";
  r = ditto::test::run_ditto("encode --text-encoder " + dir_of("umt5_tiny") + " --prompt x --out " + d + "/x.safetensors");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("has no tokenizer: spiece.model"), std::string::npos) << r.output;
}

// A diffusers pipeline directory with text_encoder/ and tokenizer/ is one --model: `ditto sample
// --prompt` gives the latent diffusers' WanPipeline makes from the same prompt string and initial noise
// (tests/fixtures/wan_tiny_t2v, made by make_wan_prompt_fixtures.py: prompt_clean, umT5 at the
// transformer's text length, the empty negative prompt, UniPC with flow shift 3, 4 steps, guidance 5).
TEST(Tokenizer, APipelineDirectoryTurnsAPromptIntoWanPipelinesLatent) {
  const std::string d = temp_dir(), pipe = dir_of("wan_tiny_t2v");
  const auto ref = load_safetensors(pipe + "/prompt_runs.safetensors");
  const std::string prompt = SafetensorsFile(pipe + "/prompt_runs.safetensors").metadata().at("prompt");
  save_safetensors(d + "/z.safetensors", {{"z", ref.at("z")}});
  const std::string quoted = ditto::test::shell_quote(prompt);
  auto r = ditto::test::run_ditto("sample --model " + pipe + " --prompt " + quoted + " --init-noise " + d +
                                  "/z.safetensors --sampler unipc --flow-shift 3 --steps 4 --cfg-scale 5 --frames 17 "
                                  "--height 48 --width 64 --png --quiet --out " + d + "/s");
  ASSERT_EQ(r.code, 0) << r.output;
  const at::Tensor z = load_safetensors(d + "/s/latent.safetensors").at("z");
  EXPECT_LT(rel_diff(z, ref.at("out")), 2e-6);
  const auto m = nlohmann::json::parse(ditto::test::read_bytes(d + "/s/metrics.json"));
  EXPECT_EQ(m["run"]["text_encoder"], "t5") << m["run"];
  // The pipeline's vae/ decodes: WanPipeline's frames (output_type "np", 8 bits as export_to_video
  // truncates them), read back from the PNG frames by ffmpeg, within one level where float32's floor
  // straddles a level's edge.
  EXPECT_EQ(m["model"]["vae"], "wan2.1");
  ASSERT_EQ(std::system("ffprobe -version >/dev/null 2>&1"), 0) << "ffmpeg/ffprobe missing: run scripts/setup.sh";
  ASSERT_EQ(ditto::test::run_command("ffmpeg -v error -i " + d + "/s/frames/frame_%04d.png -f rawvideo -pix_fmt rgb24 " + d +
                                     "/frames.rgb").code, 0);
  const std::string rgb = ditto::test::read_bytes(d + "/frames.rgb");
  const at::Tensor want = ref.at("frames_u8");  // [17, 48, 64, 3]
  ASSERT_EQ(rgb.size(), static_cast<size_t>(want.numel()));
  const at::Tensor got = at::from_blob(const_cast<char*>(rgb.data()), want.sizes(), at::kByte).to(at::kInt);
  const at::Tensor diff = (got - want.to(at::kInt)).abs();
  EXPECT_LE(diff.max().item<int>(), 1);
  EXPECT_LT(diff.gt(0).to(at::kDouble).mean().item<double>(), 0.01);
  EXPECT_GT(want.to(at::kDouble).std().item<double>(), 5);  // not a flat reference
  // The MP4: H.264, 17 frames of 64 x 48 (the VAE's frames are not enlarged).
  const auto probe = ditto::test::run_command("ffprobe -v error -count_frames -select_streams v:0 -show_entries "
                                              "stream=codec_name,width,height,nb_read_frames -of csv=p=0 " + d +
                                              "/s/video.mp4");
  EXPECT_EQ(probe.output, "h264,64,48,17\n");
  EXPECT_FALSE(ditto::test::exists(d + "/s/video.y4m"));  // ffmpeg's input, kept only with --y4m
  // ditto decode of the saved latent with the pipeline's VAE: the same frames, byte for byte.
  r = ditto::test::run_ditto("decode --vae " + pipe + " --latent " + d + "/s/latent.safetensors --png --no-mp4 --quiet --out " +
                             d + "/dec");
  ASSERT_EQ(r.code, 0) << r.output;
  for (int t = 0; t < 17; ++t) {
    char name[64];
    std::snprintf(name, sizeof name, "/frames/frame_%04d.png", t);
    EXPECT_EQ(ditto::test::read_bytes(d + "/dec" + name), ditto::test::read_bytes(d + "/s" + name)) << name;
  }
  EXPECT_TRUE(ditto::test::exists(d + "/dec/video.y4m"));  // no MP4: the Y4M is the video
  EXPECT_GE(m["timing"].value("decoding_s", -1.0), 0.0) << m["timing"];
  // The transformer alone with the text encoder named apart (as Open-Sora's separate repositories are
  // given): the same latent.
  r = ditto::test::run_ditto("sample --model " + pipe + "/transformer --text-encoder " + pipe + " --prompt " + quoted +
                             " --init-noise " + d + "/z.safetensors --sampler unipc --flow-shift 3 --steps 4 --cfg-scale 5 "
                             "--frames 17 --height 48 --width 64 --no-mp4 --quiet --out " + d + "/apart");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(at::equal(load_safetensors(d + "/apart/latent.safetensors").at("z"), z));
  // --max-sequence-length 4 keeps 4 tokens (EOS included) and pads to the transformer's 8, as the
  // official Wan code pads to 512: the same as encoding at 4 with `ditto encode` and sampling from the
  // files; and not the 8-token result.
  r = ditto::test::run_ditto("sample --model " + pipe + " --max-sequence-length 4 --prompt " + quoted + " --init-noise " +
                             d + "/z.safetensors --sampler unipc --flow-shift 3 --steps 4 --cfg-scale 5 --frames 17 "
                             "--height 48 --width 64 --no-mp4 --quiet --out " + d + "/short");
  ASSERT_EQ(r.code, 0) << r.output;
  for (const auto& [p, file] : {std::pair<std::string, std::string>{quoted, "pos"}, {"''", "neg"}})
    ASSERT_EQ(ditto::test::run_ditto("encode --text-encoder " + pipe + " --max-sequence-length 4 --prompt " + p +
                                     " --out " + d + "/" + file + ".safetensors").code, 0);
  r = ditto::test::run_ditto("sample --model " + pipe + "/transformer --caption-embedding " + d + "/pos.safetensors " +
                             "--negative-caption-embedding " + d + "/neg.safetensors --init-noise " + d +
                             "/z.safetensors --sampler unipc --flow-shift 3 --steps 4 --cfg-scale 5 --frames 17 "
                             "--height 48 --width 64 --no-mp4 --quiet --out " + d + "/files");
  ASSERT_EQ(r.code, 0) << r.output;
  const at::Tensor short_z = load_safetensors(d + "/short/latent.safetensors").at("z");
  EXPECT_TRUE(at::equal(short_z, load_safetensors(d + "/files/latent.safetensors").at("z")));
  EXPECT_GT(rel_diff(short_z, z), 1e-3) << "truncating the prompt changed nothing";
  // A render of two jobs with the prompt (the second job's embedding comes from the encoder's cache).
  std::string line = nlohmann::json({{"prompt", prompt}, {"init_noise", d + "/z.safetensors"}, {"sampler", "unipc"},
                                     {"flow_shift", 3}, {"steps", 4}, {"cfg_scale", 5}, {"frames", 17}, {"height", 48},
                                     {"width", 64}}).dump();
  ditto::test::write_bytes(d + "/jobs.jsonl", line.substr(0, line.size() - 1) + ", \"output\": \"a\"}\n" +
                                                  line.substr(0, line.size() - 1) + ", \"output\": \"b\"}\n");
  r = ditto::test::run_ditto("render --model " + pipe + " --no-mp4 --quiet --allow-dir " + d + " --jobs " + d +
                             "/jobs.jsonl --out " + d + "/render");
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* job : {"a", "b"})
    EXPECT_TRUE(at::equal(load_safetensors(d + "/render/" + job + "/latent.safetensors").at("z"), z)) << job;
  // Two ranks (Ulysses): rank 0 encodes the prompts and broadcasts them; the same latent.
  // The VAE's tiles are shared by the two ranks: the frames of a one-rank decode with the same tiles.
  r = ditto::test::run_ditto_mpi(2, "sample --model " + pipe + " --prompt " + quoted + " --init-noise " + d +
                                        "/z.safetensors --sampler unipc --flow-shift 3 --steps 4 --cfg-scale 5 --frames 17 "
                                        "--height 48 --width 64 --no-mp4 --quiet --sp 2 --vae-tile 32 --vae-tile-stride 24 "
                                        "--png --out " + d + "/sp2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_LT(rel_diff(load_safetensors(d + "/sp2/latent.safetensors").at("z"), z), 1e-5);
  const auto m2 = nlohmann::json::parse(ditto::test::read_bytes(d + "/sp2/metrics.json"));
  EXPECT_EQ(m2["decoding"]["parts"], 6) << m2["decoding"];  // 2 x 3 tiles of 32 pixels every 24
  EXPECT_EQ(m2["decoding"]["ranks"], 2) << m2["decoding"];
  r = ditto::test::run_ditto("decode --vae " + pipe + "/vae --latent " + d + "/sp2/latent.safetensors --vae-tile 32 "
                             "--vae-tile-stride 24 --png --no-mp4 --quiet --out " + d + "/sp2dec");
  ASSERT_EQ(r.code, 0) << r.output;
  for (int t = 0; t < 17; ++t) {
    char name[64];
    std::snprintf(name, sizeof name, "/frames/frame_%04d.png", t);
    EXPECT_EQ(ditto::test::read_bytes(d + "/sp2dec" + name), ditto::test::read_bytes(d + "/sp2" + name)) << name;
  }
  r = ditto::test::run_ditto("sample --model " + pipe + "/transformer --prompt x --steps 2 --frames 17 --height 48 "
                             "--width 64 --quiet --out " + d + "/none");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("give --text-encoder DIR"), std::string::npos) << r.output;
}

// The per-process cache of text encoders: one load per directory, length and device, dropped on request
// (render drops a GPU's encoders when a video needs their room).
TEST(T5, TextEncodersAreCachedAndReleasedPerDevice) {
  const std::string pipe = dir_of("wan_tiny_t2v");
  const auto a = load_t5_text_encoder(pipe, 8);
  EXPECT_EQ(a.get(), load_t5_text_encoder(pipe, 8).get());
  EXPECT_NE(a.get(), load_t5_text_encoder(pipe, 6).get());
  EXPECT_FALSE(release_t5_text_encoders(at::Device(at::kCUDA, 0)));  // none there
  EXPECT_TRUE(release_t5_text_encoders(at::kCPU));
  EXPECT_FALSE(release_t5_text_encoders(at::kCPU));
  const auto b = load_t5_text_encoder(pipe, 8);  // loaded again
  EXPECT_NE(a.get(), b.get());
  // The released one still encodes for whoever holds it, the same as the new one.
  EXPECT_TRUE(at::equal(a->encode("a red circle").y, b->encode("a red circle").y));
}
