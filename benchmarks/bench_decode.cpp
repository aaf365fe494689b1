// The pipeline's stages around the transformer: Wan-VAE 2.1 decode time and peak memory at P = 1, 2,
// 4, ... ranks sharing the VAE's spatial tiles (groups split from the world, timed one after another
// in one run), the untiled one-rank decode beside them, and optionally a umT5 / T5 text encoding.
// Random weights of the real shapes (or a VAE directory), a random latent drawn alike on every rank.
// Launch under mpirun -np N (N >= the largest P); prints one table and writes the rows as JSON.
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dist/mpi_communicator.h"
#include "model/error.h"
#include "model/t5.h"
#include "model/wan_vae.h"
#include "pipeline/model_options.h"
#include "pipeline/timing.h"
#include "pipeline/version.h"
#include "pipeline/video_job.h"

using namespace ditto;

namespace {

struct Timed {
  double min = 0, median = 0;
  std::vector<double> seconds;  // every repeat's, in order
  int64_t peak = 0;  // bytes, the largest over the group's ranks
};

// `run` on every rank of `group`, `warmup` + `repeats` times; the slowest rank's time of each repeat.
template <class F>
Timed time_on(Communicator& group, const at::Device& dev, int warmup, int repeats, F run) {
  for (int i = 0; i < warmup; ++i) run();
  std::vector<double> s;
  reset_peak_memory(dev);
  for (int i = 0; i < repeats; ++i) {
    synchronize(dev);
    group.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    run();
    synchronize(dev);
    at::Tensor t = at::tensor({std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}, at::kDouble);
    group.all_reduce(t, ReduceOp::Max);
    s.push_back(t.item<double>());
  }
  std::vector<double> order = s;
  std::sort(s.begin(), s.end());
  at::Tensor peak = at::tensor({static_cast<double>(peak_memory_bytes(dev))}, at::kDouble);
  group.all_reduce(peak, ReduceOp::Max);
  return {s.front(), s[s.size() / 2], order, static_cast<int64_t>(peak.item<double>())};
}

std::vector<int> parse_ranks(const std::string& text) {
  std::vector<int> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    const int p = std::stoi(item);
    if (p < 1) fail("--ranks: positive counts, got ", item);
    out.push_back(p);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  MpiEnv mpi(&argc, &argv);
  std::string vae_dir, config, dtype_name_arg, device_name, ranks_text, encode, encoder_dir, json_path;
  int frames = 0, height = 0, width = 0, tile = 0, tile_stride = 0, chunk = 0, repeats = 0, warmup = 0, tokens = 0;
  bool untiled = false;
  po::options_description desc("options");
  // clang-format off
  desc.add_options()
    ("vae", po::value(&vae_dir), "a diffusers AutoencoderKLWan directory (default: --config with random weights)")
    ("config", po::value(&config)->default_value("wan2.1"), "random-weight VAE: wan2.1 | wan-tiny")
    ("frames", po::value(&frames)->default_value(81), "video frames (4k + 1)")
    ("height", po::value(&height)->default_value(480), "pixels")
    ("width", po::value(&width)->default_value(832), "pixels")
    ("dtype", po::value(&dtype_name_arg)->default_value("bfloat16"), "float32 | bfloat16")
    ("tile", po::value(&tile)->default_value(256), "tile size in pixels (diffusers' default)")
    ("tile-stride", po::value(&tile_stride)->default_value(192), "tile stride in pixels")
    ("chunk", po::value(&chunk)->default_value(1), "latent frames per chunk")
    ("ranks", po::value(&ranks_text)->default_value("1,2,4"), "rank counts sharing the tiles (those above the world size are skipped)")
    ("untiled", po::bool_switch(&untiled), "also time the untiled decode on one rank")
    ("encode", po::value(&encode)->default_value("none"), "also time a random text encoder: umt5-xxl | t5-v1_1-xxl | umt5-tiny | none")
    ("text-encoder", po::value(&encoder_dir), "also time this T5 / umT5 directory's encoder (transformers' layout) instead of --encode's random one")
    ("tokens", po::value(&tokens)->default_value(512), "prompt tokens for --encode / --text-encoder")
    ("repeats", po::value(&repeats)->default_value(3), "timed repetitions")
    ("warmup", po::value(&warmup)->default_value(1), "untimed repetitions")
    ("device", po::value(&device_name)->default_value("cpu"), "cpu | cuda (GPU = local rank)")
    ("json", po::value(&json_path), "write the rows as JSON here");
  // clang-format on
  try {
    po::variables_map vm;
    if (!parse_command_line("bench_decode", "VAE decode (and text encoding) time and memory", desc, {argv + 1, argv + argc}, vm))
      return 0;
    const at::Device dev = bench_device(device_name, mpi);
    const at::ScalarType dtype = parse_dtype(dtype_name_arg);
    if (dtype != at::kFloat && dtype != at::kBFloat16) fail("--dtype: float32 or bfloat16");
    const at::TensorOptions options = at::TensorOptions().device(dev).dtype(dtype);
    MpiCommunicator world(MPI_COMM_WORLD);
    const int r = world.rank();
    const std::vector<int> ranks_list = parse_ranks(ranks_text);
    const bool decoding = untiled || !ranks_list.empty();
    std::shared_ptr<const WanVaeDecoder> decoder;
    at::Tensor z;
    if (decoding) {
      decoder = std::make_shared<const WanVaeDecoder>(vae_dir.empty() ? WanVaeDecoder::random(wan_vae_builtin_config(config), 0, options)
                                                                       : WanVaeDecoder::from_pretrained(vae_dir, options));
      const LatentShape ls = wan_latent_shape(decoder->config().z_dim, frames, height, width);
      at::Generator zgen = at::make_generator<at::CPUGeneratorImpl>(1);
      z = at::randn({1, ls.channels, ls.frames, ls.height, ls.width}, zgen, at::TensorOptions().dtype(at::kFloat)).to(dev);
      if (r == 0)
        std::printf("# Wan-VAE 2.1 decode (%s): latent %dx%dx%dx%d -> %d frames of %dx%d, %s on %s, tiles of %d px every %d, "
                    "chunks of %d latent frames; ditto %s\n",
                    vae_dir.empty() ? ("random " + config).c_str() : vae_dir.c_str(), ls.channels, ls.frames, ls.height, ls.width,
                    frames, height, width, dtype_name(dtype).c_str(), dev.str().c_str(), tile, tile_stride, chunk,
                    ditto_git_sha().c_str());
    } else if (r == 0) {
      std::printf("# text encoding, %s on %s; ditto %s\n", dtype_name(dtype).c_str(), dev.str().c_str(), ditto_git_sha().c_str());
    }
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(2);
    if (r == 0) {
      std::printf("| stage | ranks | parts | min (s) | median (s) | speedup vs 1 rank | frames/s | peak memory (GB/rank) | max |diff| vs 1 rank |\n");
      std::printf("|---|---|---|---|---|---|---|---|---|\n");
    }
    nlohmann::ordered_json rows = nlohmann::json::array();
    at::Tensor reference;  // one rank's tiled frames (rank 0)
    double one_rank = 0;
    const auto row = [&](const std::string& stage, int P, int parts, const Timed& t, double diff) {
      if (r != 0) return;
      // Speedup of the tiles shared by P ranks over the same tiles on one rank (the untiled decode is
      // another computation: no speedup, no difference).
      const bool shared = stage == "decode (tiled)";
      const double speedup = shared && one_rank > 0 ? one_rank / t.median : shared ? 1.0 : NAN;
      std::printf("| %s | %d | %d | %.3f | %.3f | %s | %.1f | %.2f | %s |\n", stage.c_str(), P, parts, t.min, t.median,
                  shared ? (std::to_string(speedup).substr(0, 4) + "x").c_str() : "", frames / t.median, t.peak / 1e9,
                  shared ? std::to_string(diff).c_str() : "");
      nlohmann::ordered_json j = {{"stage", stage}, {"ranks", P}, {"parts", parts}, {"min_s", t.min}, {"median_s", t.median},
                                  {"seconds", t.seconds},
                                  {"frames_per_s", frames / t.median}, {"peak_memory_bytes", t.peak}};
      if (shared) j["speedup_vs_1_rank"] = speedup, j["max_abs_diff_vs_1_rank"] = diff;
      rows.push_back(j);
    };
    if (untiled) {
      std::unique_ptr<Communicator> g = world.split(r == 0 ? 0 : 1, r);
      Timed t;
      at::Tensor frames_out;
      const WanVae whole(decoder, VaeTiling{}, chunk);
      if (r == 0) t = time_on(*g, dev, warmup, repeats, [&] { frames_out = decode_on_group(whole, z, frames, *g); });
      world.barrier();
      row("decode (untiled)", 1, 1, t, 0);
    }
    const std::unique_ptr<WanVae> tiled = decoding ? std::make_unique<WanVae>(decoder, VaeTiling{tile, tile_stride}, chunk) : nullptr;
    for (int P : ranks_list) {
      if (P > world.size()) {
        if (r == 0) std::printf("| decode (tiled) | %d | skipped: the world has %d ranks |\n", P, world.size());
        continue;
      }
      const bool in = r < P;
      std::unique_ptr<Communicator> g = world.split(in ? 0 : 1, r);
      Timed t;
      at::Tensor frames_out;
      if (in) t = time_on(*g, dev, warmup, repeats, [&] { frames_out = decode_on_group(*tiled, z, frames, *g); });
      world.barrier();
      double diff = 0;
      if (r == 0) {
        if (!reference.defined()) reference = frames_out, one_rank = P == 1 ? t.median : 0;
        diff = (frames_out - reference).abs().max().item<double>();
      }
      row("decode (tiled)", P, tiled->parts(z), t, diff);
    }
    if (encode != "none" || !encoder_dir.empty()) {
      std::unique_ptr<Communicator> g = world.split(r == 0 ? 0 : 1, r);
      if (r == 0) {
        const T5Encoder enc = encoder_dir.empty() ? T5Encoder::random(t5_builtin_config(encode), 0, options)
                                                  : T5Encoder::from_pretrained(encoder_dir, options);
        if (!encoder_dir.empty()) encode = enc.config().model_type + " (" + encoder_dir + ")";
        const at::Tensor ids = at::randint(enc.config().vocab_size, {1, tokens}, gen, at::TensorOptions().dtype(at::kLong)).to(dev);
        const at::Tensor mask = at::ones({1, tokens}, at::TensorOptions().dtype(at::kLong).device(dev));
        const Timed t = time_on(*g, dev, warmup, repeats, [&] { (void)enc.encode(ids, mask); });
        std::printf("| encode %s, %d tokens | 1 | 1 | %.3f | %.3f | | | %.2f | |\n", encode.c_str(), tokens, t.min, t.median,
                    t.peak / 1e9);
        rows.push_back({{"stage", "encode " + encode}, {"tokens", tokens}, {"ranks", 1}, {"min_s", t.min}, {"median_s", t.median},
                        {"seconds", t.seconds},
                        {"peak_memory_bytes", t.peak}});
      }
      world.barrier();
    }
    if (r == 0 && !json_path.empty())
      std::ofstream(json_path) << nlohmann::ordered_json{{"ditto_version", ditto_version()}, {"ditto_git_sha", ditto_git_sha()},
                                                         {"device", dev.str()}, {"dtype", dtype_name(dtype)},
                                                         {"vae", vae_dir.empty() ? "random:" + config : vae_dir},
                                                         {"frames", frames}, {"height", height}, {"width", width},
                                                         {"tile", tile}, {"tile_stride", tile_stride}, {"chunk", chunk},
                                                         {"world", world.size()}, {"rows", rows}}
                                      .dump(2)
                               << "\n";
  } catch (const std::exception& e) {
    mpi.abort(std::string("bench_decode: ") + e.what());
  }
  return 0;
}
