// `ditto decode`: a saved latent (latent.safetensors of sample / render, or any file with z) through a
// VAE into a video: sample once, decode again with another VAE setting, or decode on other machines.
// Under mpirun the VAE's tiles (--vae-tile) are shared among the ranks, and rank 0 writes.
#include <chrono>
#include <iostream>

#include "dist/mpi_communicator.h"
#include "launcher/commands.h"
#include "model/atomic_file.h"
#include "model/checkpoint.h"
#include "model/error.h"
#include "model/safetensors.h"
#include "model/vae.h"
#include "pipeline/model_options.h"
#include "pipeline/timing.h"
#include "pipeline/version.h"
#include "pipeline/video_job.h"
#include "pipeline/video_options.h"

namespace ditto {

int run_decode(const std::vector<std::string>& args, const MpiEnv& mpi) {
  ModelOptions mo;
  std::string latent_path, out_dir;
  int frames = 0;
  po::options_description desc("options");
  // clang-format off
  desc.add_options()
    ("latent", po::value(&latent_path)->required(), "the latent: safetensors with z [1, C, T, H, W] (latent.safetensors of ditto sample / render)")
    ("out", po::value(&out_dir)->required(), "output directory: video.mp4 (or video.y4m), frames/ with --png, metrics.json")
    ("frames", po::value(&frames)->default_value(0), "the video's frame count (Open-Sora's latent leaves the last chunk's up to 3 open; 0: the latent file's 'frames' metadata, which ditto writes, else all the latent holds)")
    ("device", po::value(&mo.device), "cpu | cuda | cuda:N (default: cuda when a GPU is visible; under MPI, GPU = local rank)")
    ("threads", po::value(&mo.threads)->default_value(0), "CPU threads (0: LibTorch's default)")
    ("timeout", po::value(&mo.timeout)->default_value(600), "seconds a rank waits on its peers before it pings them (0: wait forever)")
    ("quiet", po::bool_switch(), "no progress output");
  // clang-format on
  const std::vector<std::string> flags = {"vae", "vae-dtype", "vae-tile", "vae-tile-stride", "vae-chunk", "fps", "png", "y4m", "no-mp4"};
  add_video_options(desc, flags, ShownDefaults{});
  po::variables_map vm;
  if (!parse_command_line("decode", "decode a saved latent into a video with a VAE", desc, args, vm)) return 0;
  VideoJob job;
  apply_video_options(vm, flags, job);
  if (job.vae.empty())
    fail("give --vae DIR: a diffusers AutoencoderKLWan directory, a pipeline directory with vae/, or Open-Sora 1.2's VAE");
  const at::TensorOptions options = resolve_tensor_options(mo, mpi);
  const auto dev = options.device();

  const auto t_load = std::chrono::steady_clock::now();
  if (frames < 0) fail("--frames must be >= 0, got ", frames);
  const LatentFile latent = read_latent_file(latent_path, at::kFloat);
  const at::Tensor& z = latent.z;
  if (frames == 0 && latent.metadata.count("frames")) {
    try {
      frames = std::stoi(latent.metadata.at("frames"));
    } catch (const std::exception&) {
      fail("'", latent_path, "': metadata 'frames' is not a number: ", dump_json(nlohmann::json(latent.metadata.at("frames"))));
    }
  }
  const VaeOptions vo = vae_options(job, dev);
  const std::shared_ptr<const VAE> vae = load_vae(job.vae, vo);
  if (job.fps <= 0) job.fps = vae->name() == "opensora-v1.2" ? 24 : 16;  // each reference's rate
  MpiCommunicator world(MPI_COMM_WORLD);
  synchronize(dev);
  world.barrier();
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

  reset_peak_memory(dev);
  const auto t0 = std::chrono::steady_clock::now();
  const at::Tensor video = decode_on_group(*vae, z.to(dev), frames, world);
  const double decoding_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  at::Tensor peak = at::tensor({peak_memory_bytes(dev)}, at::kLong);
  std::vector<at::Tensor> peaks;
  for (int i = 0; i < world.size(); ++i) peaks.push_back(at::empty({1}, at::kLong));
  world.all_gather(peak, peaks);
  if (world.rank() == 0) {
    make_dir(out_dir);
    std::remove((out_dir + "/metrics.json").c_str());
    nlohmann::ordered_json m, outputs;
    m["command"] = "decode";
    m["ditto_version"] = ditto_version();
    m["ditto_git_sha"] = ditto_git_sha();
    m["latent"] = latent_path;
    m["latent_shape"] = z.sizes().vec();
    m["decoding"] = {{"vae", job.vae},       {"kind", vae->name()},      {"device", dev.str()},
                     {"dtype", job.vae_dtype}, {"chunk", vo.chunk},      {"tile", vo.tile},
                     {"tile_stride", vo.tile_stride}, {"parts", vae->parts(z)}, {"ranks", world.size()}};
    m["video"] = {{"frames", video.size(2)}, {"height", video.size(3)}, {"width", video.size(4)}, {"fps", job.fps}};
    std::vector<int64_t> peak_list;
    for (const auto& t : peaks) peak_list.push_back(t.item<int64_t>());
    m["timing"] = {{"load_s", load_s}, {"decoding_s", decoding_s}, {"decoding_peak_memory_bytes_per_rank", peak_list}};
    write_frames(out_dir, video, *vae, job, outputs, m["timing"]);
    m["outputs"] = outputs;
    write_file_atomic(out_dir + "/metrics.json", [&](std::ostream& os) { os << dump_json(m, 2) << "\n"; });
    if (!vm["quiet"].as<bool>())
      std::cerr << "ditto decode: " << video.size(2) << " frames of " << video.size(4) << "x" << video.size(3) << " in "
                << decoding_s << " s on " << world.size() << " rank(s), wrote " << out_dir << "/\n";
  }
  world.barrier();
  return 0;
}

}  // namespace ditto
