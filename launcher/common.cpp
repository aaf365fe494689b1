// Shared launcher plumbing (see common.h).
#include "launcher/common.h"

#include <ATen/Parallel.h>

#include <fstream>
#include <iostream>

#include "model/error.h"

namespace ditto {

void add_model_options(po::options_description& desc, ModelOptions& o) {
  // clang-format off
  desc.add_options()
    ("model", po::value(&o.model_dir), "model directory: config.json + model.safetensors (or shards + index)")
    ("config", po::value(&o.config_name), "built-in model config for random-weight runs: stdit3-xl, stdit3-3b, stdit3-small, stdit3-tiny")
    ("random-weights", po::bool_switch(&o.random_weights), "use random weights for --config (benchmarks, tests)")
    ("weights-seed", po::value(&o.weights_seed)->default_value(0), "seed of --random-weights")
    ("dtype", po::value(&o.dtype), "float32 | bfloat16 | float16 | float64 (default: float32 on CPU, bfloat16 on CUDA)")
    ("device", po::value(&o.device), "cpu | cuda | cuda:N (default: cuda when a GPU is visible; under MPI, GPU = local rank)")
    ("threads", po::value(&o.threads)->default_value(0), "CPU threads for intra-op parallelism (0: LibTorch's default)");
  // clang-format on
}

at::ScalarType parse_dtype(const std::string& n) {
  if (n == "float32" || n == "fp32" || n == "float") return at::kFloat;
  if (n == "bfloat16" || n == "bf16") return at::kBFloat16;
  if (n == "float16" || n == "fp16" || n == "half") return at::kHalf;
  if (n == "float64" || n == "fp64" || n == "double") return at::kDouble;
  fail("--dtype: unknown '", n, "' (float32, bfloat16, float16, float64)");
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kDouble: return "float64";
    default: return c10::toString(t);
  }
}

at::TensorOptions resolve_tensor_options(const ModelOptions& o, const MpiEnv& mpi) {
  if (o.threads > 0) at::set_num_threads(o.threads);
  at::Device device(at::kCPU);
  std::string dev = o.device.empty() ? (at::hasCUDA() ? "cuda" : "cpu") : o.device;
  if (dev == "cpu") {
    device = at::Device(at::kCPU);
  } else if (dev.rfind("cuda", 0) == 0) {
    if (!at::hasCUDA()) fail("--device ", dev, ": no CUDA GPU is visible to this process");
    // Local rank r takes visible GPU r (mod the count: with per-rank binding each rank sees one).
    // Two NCCL ranks on one GPU are refused by the NCCL communicator, which names them.
    const int gpus = static_cast<int>(at::getNumGPUs());
    int index = mpi.local_rank() % gpus;
    if (dev.size() > 4) {
      if (dev[4] != ':') fail("--device: unknown '", dev, "' (cpu, cuda, cuda:N)");
      try {
        index = std::stoi(dev.substr(5));
      } catch (const std::exception&) {
        fail("--device: unknown '", dev, "' (cpu, cuda, cuda:N)");
      }
    }
    device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
  } else {
    fail("--device: unknown '", dev, "' (cpu, cuda, cuda:N)");
  }
  const at::ScalarType dtype = o.dtype.empty() ? (device.is_cuda() ? at::kBFloat16 : at::kFloat) : parse_dtype(o.dtype);
  return at::TensorOptions().device(device).dtype(dtype);
}

std::string demo_model_dir() {
  if (const char* env = std::getenv("DITTO_DEMO_MODEL")) return env;
  return std::string(DITTO_SOURCE_DIR) + "/models/ditto-demo";
}

void default_to_demo_model(ModelOptions& o) {
  if (!o.model_dir.empty() || !o.config_name.empty()) return;
  if (!std::ifstream(demo_model_dir() + "/config.json").good())
    fail("no model: pass --model DIR or --config NAME --random-weights (the demo model is not installed at ",
         demo_model_dir(), ")");
  o.model_dir = demo_model_dir();
}

SamplingDefaults sampling_defaults(const STDiT3Config& c) {
  if (c.latent_space == LatentSpace::Pixel) return {16, 32, 32, 2.5, false, 0.0};
  return {51, 240, 426, 7.0, true, 0.0};
}

std::string model_source(const ModelOptions& o) {
  return o.model_dir.empty() ? "random:" + o.config_name + ":seed" + std::to_string(o.weights_seed) : o.model_dir;
}

STDiT3 load_model(const ModelOptions& o, const at::TensorOptions& options) {
  if (!o.model_dir.empty()) {
    if (!o.config_name.empty() || o.random_weights)
      fail("--model loads a checkpoint; --config/--random-weights are for random-weight runs, not both");
    return STDiT3::from_pretrained(o.model_dir, options);
  }
  if (o.config_name.empty())
    fail("no model: pass --model DIR (a checkpoint directory) or --config NAME --random-weights");
  if (!o.random_weights)
    fail("--config ", o.config_name, " has no weights: pass --random-weights to run it with random weights, "
         "or --model DIR to load a checkpoint");
  return STDiT3::random(builtin_config(o.config_name), o.weights_seed, options);
}

bool parse_command_line(const std::string& command, const std::string& summary, po::options_description& desc,
                        const std::vector<std::string>& args, po::variables_map& vm) {
  std::string config_file;
  desc.add_options()("help,h", "show this help")(
      "config-file", po::value(&config_file), "read options from an INI-style file (name = value per line)");
  try {
    po::store(po::command_line_parser(args).options(desc).run(), vm);
    if (vm.count("help")) {
      std::cout << "ditto " << command << ": " << summary << "\n\n" << desc << "\n";
      return false;
    }
    if (vm.count("config-file")) {
      po::store(po::parse_config_file<char>(vm["config-file"].as<std::string>().c_str(), desc), vm);
    }
    po::notify(vm);
  } catch (const po::error& e) {
    fail(e.what(), " (see ditto ", command, " --help)");
  }
  return true;
}

namespace {

void print_usage(std::ostream& os) {
  os << "ditto: sample video Diffusion Transformers on one or many GPUs\n\n"
        "usage: ditto COMMAND [options]     (ditto COMMAND --help for its options)\n\n"
        "commands:\n"
        "  sample    render one video from a caption embedding (or random caption) with a sampler\n"
        "  render    render a job file (JSON Lines) of videos over data-parallel groups, resumable\n"
        "  profile   per-unit change curves (JSON, CSV, heatmap) and Block Caching schedules\n"
        "  calibrate train Block Caching's scale-shift layers for a schedule (base model frozen)\n"
        "  forward   one model forward pass on saved inputs, to check against another implementation\n"
        "  train     train the demo text-to-video model on generated clips\n";
}

}  // namespace

int run_command(int argc, char** argv, const MpiEnv& mpi) {
  if (argc < 2) {
    print_usage(std::cerr);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    print_usage(std::cout);
    return 0;
  }
  std::vector<std::string> args(argv + 2, argv + argc);
  try {
    if (cmd == "sample") return run_sample(args, mpi);
    if (cmd == "forward") return run_forward(args, mpi);
    if (cmd == "train") return run_train(args, mpi);
    if (cmd == "render") return run_render(args, mpi);
    if (cmd == "profile") return run_profile(args, mpi);
    if (cmd == "calibrate") return run_calibrate(args, mpi);
    fail("unknown command '", cmd, "' (ditto --help lists the commands)");
  } catch (const std::exception& e) {
    if (mpi.size() > 1) mpi.abort(e.what());
    std::cerr << "ditto " << cmd << ": error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace ditto
