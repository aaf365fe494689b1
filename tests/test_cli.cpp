// The ditto command as a user runs it: error messages, determinism, outputs, and the CLI paths of
// the Open-Sora parity checks.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "model/safetensors.h"
#include "model/stdit3.h"
#include "test_util.h"

using namespace ditto;
using ditto::test::fixture;
using ditto::test::read_bytes;
using ditto::test::rel_err;
using ditto::test::run_ditto;
using ditto::test::temp_dir;

namespace {

void expect_failure(const std::string& args, const std::string& needle) {
  auto r = run_ditto(args);
  EXPECT_NE(r.code, 0) << args;
  EXPECT_NE(r.output.find(needle), std::string::npos) << "ditto " << args << "\nsaid: " << r.output;
}

const std::string kModel = "--config stdit3-tiny --random-weights --random-caption 4 --height 48 --width 72 --quiet ";
const std::string kTiny = kModel + "--frames 51 --steps 3 ";

}  // namespace

TEST(Cli, UsageAndHelp) {
  auto r = run_ditto("");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("usage: ditto COMMAND"), std::string::npos);
  r = run_ditto("sample --help");
  EXPECT_EQ(r.code, 0);
  for (const char* opt : {"--caption-embedding", "--init-noise", "--cfg-scale", "--random-weights", "--dtype"})
    EXPECT_NE(r.output.find(opt), std::string::npos) << opt;
  EXPECT_EQ(run_ditto("forward --help").code, 0);
  expect_failure("teleport", "unknown command 'teleport'");
  expect_failure("render", "the option '--jobs' is required");
}

TEST(Cli, BadInputsFailWithAClearMessage) {
  {  // without the demo model installed, no model is an error
    auto r = ditto::test::run_command("env DITTO_DEMO_MODEL=/nonexistent " + std::string(DITTO_BINARY) +
                                      " sample --random-caption 4");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.output.find("no model: pass --model DIR"), std::string::npos) << r.output;
  }
  expect_failure("sample --config stdit3-tiny --random-caption 4", "has no weights: pass --random-weights");
  expect_failure("sample --config stdit3-huge --random-weights --random-caption 4", "unknown model config 'stdit3-huge'");
  expect_failure("sample --model /nonexistent/model --random-caption 4", "'/nonexistent/model' is not a model directory");
  expect_failure("sample " + kTiny + "--dtype float8", "--dtype: unknown 'float8'");
  expect_failure("sample " + kTiny + "--bogus", "unrecognised option '--bogus'");
  expect_failure("sample " + kTiny + "--device tpu", "--device: unknown 'tpu'");
  expect_failure("sample " + kTiny + "--sampler heun", "unknown sampler 'heun'");
  expect_failure("sample " + kTiny + "--sampler unipc --sigma-grid linspace", "unknown grid 'linspace'");
  expect_failure("sample " + kTiny + "--cfg-scale-2 3", "this model has one expert");
  expect_failure("sample " + kTiny + "--sampler rflow --sigma-grid diffusers-0.37", "--sigma-grid is for the unipc sampler");
  expect_failure("sample " + kModel + "--steps 0", "steps must be positive, got 0");
  expect_failure("sample " + kModel + "--frames 16", "needs 1 frame or at least 17");
  expect_failure("sample --config stdit3-tiny --random-weights --prompt 'a cat'", "no text encoder");
  expect_failure("sample --config stdit3-tiny --random-weights", "give exactly one of --caption-embedding");
  const std::string dir = temp_dir();
  save_safetensors(dir + "/cap.safetensors", {{"emb", at::ones({8, 32})}});
  expect_failure("sample --config stdit3-tiny --random-weights --caption-embedding " + dir + "/cap.safetensors",
                 "has no tensor 'y'");
  save_safetensors(dir + "/cap.safetensors", {{"y", at::ones({8, 31})}});
  expect_failure("sample --config stdit3-tiny --random-weights --caption-embedding " + dir + "/cap.safetensors",
                 "caption_channels is 32");
  save_safetensors(dir + "/noise.safetensors", {{"z", at::ones({1, 4, 3, 6, 9})}});
  expect_failure("sample " + kTiny + "--init-noise " + dir + "/noise.safetensors", "does not match the latent");
  save_safetensors(dir + "/in.safetensors", {{"x", at::ones({1, 4, 3, 6, 9})}});
  expect_failure("forward --config stdit3-tiny --random-weights --inputs " + dir + "/in.safetensors --out " + dir +
                     "/o.safetensors",
                 "has no tensor 'timestep' (it has: x)");
}

TEST(Cli, SameSeedSameBytes) {
  const std::string d = temp_dir();
  ASSERT_EQ(run_ditto("sample " + kTiny + "--seed 5 --out " + d + "/a").code, 0);
  ASSERT_EQ(run_ditto("sample " + kTiny + "--seed 5 --out " + d + "/b").code, 0);
  ASSERT_EQ(run_ditto("sample " + kTiny + "--seed 6 --out " + d + "/c").code, 0);
  const std::string a = read_bytes(d + "/a/latent.safetensors");
  EXPECT_GT(a.size(), 1000u);
  EXPECT_EQ(a, read_bytes(d + "/b/latent.safetensors"));
  EXPECT_NE(a, read_bytes(d + "/c/latent.safetensors"));
  auto m = nlohmann::json::parse(read_bytes(d + "/a/metrics.json"));
  EXPECT_EQ(m["run"]["seed"], 5);
  EXPECT_EQ(m["run"]["steps"], 3);
  EXPECT_EQ(m["timing"]["step_s"].size(), 3u);
  EXPECT_EQ(m["run"]["latent_shape"], nlohmann::json({1, 4, 15, 6, 9}));
  EXPECT_GT(m["timing"]["flops_per_step_per_rank"].get<double>(), 0);
}

TEST(Cli, PixelSpaceModelWritesAVideo) {
  const std::string d = temp_dir();
  STDiT3Config c = builtin_config("stdit3-tiny");
  c.in_channels = 3;
  c.latent_space = LatentSpace::Pixel;
  STDiT3::random(c, 3, at::TensorOptions().dtype(at::kFloat)).save_pretrained(d + "/model");
  auto r = run_ditto("sample --model " + d + "/model --random-caption 3 --frames 4 --height 10 --width 12 --steps 2 " +
                     "--no-timestep-transform --png --no-mp4 --upscale 1 --quiet --out " + d + "/out");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string y4m = read_bytes(d + "/out/video.y4m");
  const std::string header = "YUV4MPEG2 W12 H10 F24:1 Ip A1:1 C444\n";
  ASSERT_EQ(y4m.substr(0, header.size()), header);
  EXPECT_EQ(y4m.size(), header.size() + 4 * (6 + 3 * 12 * 10));
  for (int t = 0; t < 4; ++t) {
    char name[64];
    std::snprintf(name, sizeof name, "/out/frames/frame_%04d.png", t);
    const std::string png = read_bytes(d + name);
    ASSERT_GT(png.size(), 8u) << name;
    EXPECT_EQ(png.substr(1, 3), "PNG");
  }
  // MP4 through ffmpeg (scripts/setup.sh installs it): ffprobe confirms the codec, size and frame count.
  ASSERT_EQ(std::system("ffprobe -version >/dev/null 2>&1"), 0) << "ffmpeg/ffprobe missing: run scripts/setup.sh";
  r = run_ditto("sample --model " + d + "/model --random-caption 3 --frames 4 --height 10 --width 12 --steps 2 " +
                "--no-timestep-transform --y4m --quiet --out " + d + "/mp4");
  // The default upscale makes the shorter side at least 256 pixels: 10 px -> x26.
  EXPECT_EQ(read_bytes(d + "/mp4/video.y4m").substr(0, 22), "YUV4MPEG2 W312 H260 F2");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string mp4 = read_bytes(d + "/mp4/video.mp4");
  ASSERT_GT(mp4.size(), 100u);
  EXPECT_EQ(mp4.substr(4, 4), "ftyp");
  const auto probe = ditto::test::run_command("ffprobe -v error -count_frames -select_streams v:0 -show_entries "
                                              "stream=codec_name,width,height,nb_read_frames -of csv=p=0 " + d +
                                              "/mp4/video.mp4");
  EXPECT_EQ(probe.output, "h264,312,260,4\n");
  const auto m = nlohmann::json::parse(read_bytes(d + "/mp4/metrics.json"));
  for (const char* stage : {"text_encoding_s", "sample_s", "decoding_s", "video_encoding_s"})
    EXPECT_GE(m["timing"].value(stage, -1.0), 0.0) << stage << " missing from " << m["timing"];
}

TEST(OpenSoraParity, DittoForwardReproducesTheReference) {
  const std::string d = temp_dir();
  auto r = run_ditto("forward --model " + fixture("") + " --inputs " + fixture("forward_inputs.safetensors") +
                     " --out " + d + "/out.safetensors --dump");
  ASSERT_EQ(r.code, 0) << r.output;
  auto out = load_safetensors(d + "/out.safetensors");
  auto ref = load_safetensors(fixture("forward_out.safetensors"));
  for (const auto& [name, t] : ref) {
    ASSERT_TRUE(out.count(name)) << name;
    EXPECT_LT(rel_err(out.at(name), t), 1e-5) << name;
  }
  // float64 on the CPU runs too and agrees.
  r = run_ditto("forward --dtype float64 --model " + fixture("") + " --inputs " + fixture("forward_inputs.safetensors") +
                " --out " + d + "/out64.safetensors");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_LT(rel_err(load_safetensors(d + "/out64.safetensors").at("out"), ref.at("out")), 1e-5);
}

TEST(OpenSoraParity, DittoSampleReproducesTheReference) {
  const std::string d = temp_dir();
  const std::string in = fixture("sample_inputs.safetensors");
  auto r = run_ditto("sample --model " + fixture("") + " --caption-embedding " + in + " --init-noise " + in +
                     " --frames 51 --height 48 --width 72 --steps 5 --cfg-scale 7 --quiet --out " + d);
  ASSERT_EQ(r.code, 0) << r.output;
  auto z = load_safetensors(d + "/latent.safetensors").at("z");
  EXPECT_LT(rel_err(z, load_safetensors(fixture("sample_out.safetensors")).at("z")), 1e-5);
}

TEST(Cli, AFifoInPlaceOfAFileIsRefusedWithoutBlocking) {
  // A FIFO named as a caption embedding, a model's config.json or a job file would block a plain
  // open() forever; each is refused at once as not a regular file (timeout 60: a hang fails the test).
  const std::string d = ditto::test::temp_dir();
  ditto::test::run_command("mkfifo " + d + "/fifo && mkdir " + d + "/model && mkfifo " + d + "/model/config.json");
  const std::string ditto = "timeout 60 " + std::string(DITTO_BINARY) + " ";
  auto r = ditto::test::run_command(ditto + "sample --config stdit3-tiny --random-weights --caption-embedding " + d +
                                    "/fifo --frames 51 --height 48 --width 72 --steps 1 --quiet --out " + d + "/o1");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("not a regular file"), std::string::npos) << r.output;
  r = ditto::test::run_command(ditto + "sample --model " + d + "/model --random-caption 4 --quiet --out " + d + "/o2");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("not a regular file"), std::string::npos) << r.output;
  r = ditto::test::run_command(ditto + "render --config stdit3-tiny --random-weights --jobs " + d + "/fifo --out " + d + "/o3");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("not a regular file"), std::string::npos) << r.output;
}

TEST(Cli, IntegerCaptionsAndNonFiniteOutputsAreErrors) {
  // An integer caption embedding is not converted without a word; a forward whose output is NaN (the
  // weights hold NaN) fails and writes nothing.
  const std::string d = ditto::test::temp_dir();
  ditto::save_safetensors(d + "/int.safetensors", {{"y", at::ones({8, 32}, at::kLong)}});
  auto r = ditto::test::run_ditto("sample --config stdit3-tiny --random-weights --caption-embedding " + d +
                                  "/int.safetensors --frames 51 --height 48 --width 72 --steps 1 --quiet --out " + d + "/o");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("y is I64, a text encoder's output is floating point"), std::string::npos) << r.output;

  r = ditto::test::run_ditto("train --config ditto-demo-tiny --steps 1 --batch 1 --image-batch 0 --quiet --threads 1 --out " + d + "/m");
  ASSERT_EQ(r.code, 0) << r.output;
  auto w = ditto::load_safetensors(d + "/m/model.safetensors");
  ditto::NamedTensors t;
  for (auto& [name, x] : w) t.emplace_back(name, name == "final_layer.linear.bias" ? x * NAN : x);
  ditto::save_safetensors(d + "/m/model.safetensors", t);
  ditto::save_safetensors(d + "/in.safetensors", {{"x", at::randn({1, 3, 4, 32, 32})}, {"timestep", at::tensor({500.0f})},
                                                  {"y", at::randn({1, 1, 18, 16})}, {"fps", at::tensor({24.0f})},
                                                  {"height", at::tensor({32.0f})}, {"width", at::tensor({32.0f})}});
  r = ditto::test::run_ditto("forward --model " + d + "/m --inputs " + d + "/in.safetensors --out " + d + "/out.safetensors");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("NaN or infinite"), std::string::npos) << r.output;
  EXPECT_FALSE(std::ifstream(d + "/out.safetensors").good());
}

// --attention picks SDPA's kernel for every call and metrics.json says which ran: the math kernel
// gives the flash kernel's latent within float32 rounding; a kernel the device lacks is refused by name.
// --cuda-graphs on the CPU runs eagerly and metrics.json says why.
TEST(Cli, TheAttentionKernelIsChosenAndReported) {
  const std::string d = temp_dir();
  ASSERT_EQ(run_ditto("sample " + kTiny + "--seed 5 --out " + d + "/auto").code, 0);
  auto r = run_ditto("sample " + kTiny + "--seed 5 --attention math --cuda-graphs --out " + d + "/math");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto m_auto = nlohmann::json::parse(read_bytes(d + "/auto/metrics.json"));
  const auto m_math = nlohmann::json::parse(read_bytes(d + "/math/metrics.json"));
  EXPECT_EQ(m_auto["run"]["attention"]["requested"], "auto");
  EXPECT_EQ(m_auto["run"]["attention"]["kernels_used"], nlohmann::json({"flash"})) << m_auto["run"]["attention"];
  EXPECT_EQ(m_math["run"]["attention"]["kernels_used"], nlohmann::json({"math"})) << m_math["run"]["attention"];
  EXPECT_EQ(m_auto["run"]["cuda_graphs"], "off: not requested (--cuda-graphs)");
  EXPECT_EQ(m_math["run"]["cuda_graphs"], "off: the run is on the CPU");
  EXPECT_EQ(m_math["cache"]["cuda_graphs"], "off: the run is on the CPU");
  EXPECT_EQ(m_auto["run"]["exchange_groups"], nlohmann::json({{"ulysses_head_groups", 1}, {"dsp_frame_groups", 1}}));
  const at::Tensor a = load_safetensors(d + "/auto/latent.safetensors").at("z");
  const at::Tensor b = load_safetensors(d + "/math/latent.safetensors").at("z");
  EXPECT_LT(rel_err(b, a), 1e-5);
  expect_failure("sample " + kTiny + "--attention cudnn --out " + d + "/cudnn", "the 'cudnn' kernel (--attention) cannot run these inputs");
  expect_failure("sample " + kTiny + "--attention fast --out " + d + "/x", "--attention: unknown kernel 'fast'");
}
