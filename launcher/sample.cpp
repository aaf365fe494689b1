// `ditto sample`: one video (one per data-parallel group) from a prompt, a caption embedding or a
// random caption; writes the final latent, the video (when the model's VAE decodes) and metrics.json.
#include <chrono>
#include <cmath>
#include <iostream>

#include "dist/mpi_communicator.h"
#include "dist/parallel_layout.h"
#include "launcher/commands.h"
#include "pipeline/model_options.h"
#include "pipeline/timing.h"
#include "pipeline/progress.h"
#include "pipeline/video_job.h"
#include "pipeline/video_options.h"
#include "model/error.h"

namespace ditto {

int run_sample(const std::vector<std::string>& args, const MpiEnv& mpi) {
  ModelOptions mo;
  std::string out_dir, comm_name;
  int sp = 1, cfg_parallel = 1;
  bool quiet = false;
  po::options_description desc("options");
  add_model_options(desc, mo);
  add_video_options(desc, all_video_flags(), shown_defaults(args));
  // clang-format off
  desc.add_options()
    ("sp", po::value(&sp)->default_value(1), "sequence-parallel ranks per video (the world is dp x cfg x sp)")
    ("cfg-parallel", po::value(&cfg_parallel)->default_value(1), "2: conditional and unconditional branch on two ranks")
    ("comm", po::value(&comm_name)->default_value("auto"), "communication backend: auto (nccl on CUDA, mpi on CPU) | mpi | nccl")
    ("out", po::value(&out_dir)->default_value("out"), "output directory: latent.safetensors, metrics.json, video.y4m/.mp4 (data-parallel groups: OUT/dpG, each with seed + G)")
    ("quiet", po::bool_switch(&quiet), "no progress output");
  // clang-format on
  po::variables_map vm;
  if (!parse_command_line("sample", "render one video (one per data-parallel group)", desc, args, vm)) return 0;
  VideoJob job;
  apply_video_options(vm, all_video_flags(), job);

  // The layout is checked before any model work.
  const WorldLayout wl = make_world_layout(mpi.size(), mpi.rank(), sp, cfg_parallel);
  const auto t_start = std::chrono::steady_clock::now();
  const at::TensorOptions options = resolve_tensor_options(mo, mpi);
  const auto dev = options.device();
  const std::string backend = resolve_backend(comm_name, dev);

  const int sources = !job.caption_file.empty() + (job.random_caption > 0) + !job.prompt.empty();
  if (sources != 1) fail("give exactly one of --caption-embedding FILE, --random-caption N or --prompt TEXT");
  default_to_demo_model(mo);
  check_job_memory(model_outline(mo), job, wl, options);  // an oversized video is refused before the model loads
  const std::unique_ptr<DiT> model = load_model(mo, options);
  job.seed += static_cast<uint64_t>(wl.dp_index);
  const VideoJob resolved = with_model_defaults(job, model->outline());

  // Process groups (collective over the world), then the backend for the groups that move activations.
  MpiCommunicator world(MPI_COMM_WORLD);
  ProcessGroups groups = make_process_groups(world, wl);
  std::unique_ptr<Communicator> sp_comm = group_backend(std::move(groups.sp), backend, dev, mo.timeout);
  std::unique_ptr<Communicator> cfg_comm = group_backend(std::move(groups.cfg), backend, dev, mo.timeout);
  const bool root = groups.video->rank() == 0;  // writes the outputs and talks
  const std::string video_dir = wl.dp > 1 ? out_dir + "/dp" + std::to_string(wl.dp_index) : out_dir;

  synchronize(dev);
  world.barrier();
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  const bool talk = !quiet && mpi.rank() == 0;
  if (talk)
    std::cerr << "ditto sample: " << model_source(mo) << " on " << dev << " " << dtype_name(options.dtype().toScalarType())
              << ", " << wl.describe() << " (" << backend << "), " << resolved.steps << " steps, cache " << job.cache
              << ", seed " << job.seed << "\n";
  Progress progress(resolved.steps, "sampling", talk);
  RenderedVideo v = render_video(*model, mo.model_dir, model_source(mo), options, wl, job,
                                 {sp_comm.get(), cfg_comm.get(), groups.video.get(), backend},
                                 [&](int done, int, double step_s, double elapsed) { progress.update(done, step_s, elapsed); });
  progress.finish();
  if (root) {
    v.metrics["command"] = "sample";
    v.metrics["timing"]["load_s"] = load_s;
    write_video_outputs(video_dir, v, job, model->outline());
    if (!v.decode_error.empty())
      fail("decoding failed: ", v.decode_error, " (the latent is in ", video_dir, "/latent.safetensors: ditto decode can retry it)");
    if (talk || (!quiet && wl.dp > 1))
      std::cerr << "ditto sample: " << resolved.steps << " steps in " << v.metrics["timing"]["sample_s"].get<double>() << " s ("
                << v.metrics["timing"]["steady_step_s"].get<double>() << " s/step steady), wrote " << video_dir << "/\n";
  }
  world.barrier();
  return 0;
}

}  // namespace ditto
