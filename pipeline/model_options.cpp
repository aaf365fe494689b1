// Model options, model loading and command-line parsing (see model_options.h).
#include "pipeline/model_options.h"

#include <cmath>

#include <ATen/Parallel.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iostream>

#include "model/atomic_file.h"
#include "dist/dsp_layout.h"
#include "dist/liveness.h"
#include "dist/ulysses_layout.h"
#include "model/t5.h"
#include "model/cuda_graph.h"
#include "model/error.h"
#include "model/layers.h"
#include "pipeline/timing.h"

namespace ditto {

namespace {

std::string known_configs() {
  std::string s;
  for (const auto& n : builtin_config_names_all()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

}  // namespace

void add_model_options(po::options_description& desc, ModelOptions& o) {
  // clang-format off
  desc.add_options()
    ("model", po::value(&o.model_dir), "model directory: config.json + model.safetensors (or shards + index)")
    ("config", po::value(&o.config_name), ("built-in model config for random-weight runs: " + known_configs()).c_str())
    ("random-weights", po::bool_switch(&o.random_weights), "use random weights for --config (benchmarks, tests)")
    ("weights-seed", po::value(&o.weights_seed)->default_value(0), "seed of --random-weights")
    ("dtype", po::value(&o.dtype), "float32 | bfloat16 | float16 | float64 (default: float32 on CPU, bfloat16 on CUDA)")
    ("device", po::value(&o.device), "cpu | cuda | cuda:N (default: cuda when a GPU is visible; under MPI, GPU = local rank)")
    ("threads", po::value(&o.threads)->default_value(0), "CPU threads for intra-op parallelism (0: LibTorch's default)")
    ("ulysses-head-groups", po::value(&o.ulysses_head_groups)->default_value(1), "Ulysses (Wan under --sp): exchange q/k/v and the outputs in N head groups, each group's all-to-all in flight while the previous group attends (1: one exchange each way)")
    ("dsp-frame-groups", po::value(&o.dsp_frame_groups)->default_value(1), "DSP (STDiT3 under --sp): run spatial attention on each rank's frames in N groups, each group's all-to-all in flight while the previous group computes (1: one exchange each way)")
    ("cuda-graphs", po::bool_switch(&o.cuda_graphs), "on a GPU, capture each video's model step as a CUDA graph at its first step and replay it every later step (one rank per video, no cache policy; otherwise the steps run eagerly and metrics.json says why)")
    ("attention", po::value(&o.attention)->default_value("auto"), "attention kernel: auto (LibTorch picks per call) | flash | efficient | cudnn | math; the kernels that ran are in metrics.json")
    ("max-memory", po::value(&o.max_memory_gb)->default_value(0), "GB a rank may use: a job estimated to need more is refused before it allocates (render: recorded as failed, the others go on; 0: what the device has available)")
    ("timeout", po::value(&o.timeout)->default_value(600), "seconds a rank waits on its peers (a collective, a job from render's scheduler) before it pings them: a rank that does not answer (stopped, hung, dead) ends the job with its number; a NCCL collective taking longer ends it too (0: wait forever)");
  // clang-format on
}

at::ScalarType parse_dtype(const std::string& n) {
  if (n == "float32" || n == "fp32" || n == "float") return at::kFloat;
  if (n == "bfloat16" || n == "bf16") return at::kBFloat16;
  if (n == "float16" || n == "fp16" || n == "half") return at::kHalf;
  if (n == "float64" || n == "fp64" || n == "double") return at::kDouble;
  fail("--dtype: unknown '", n, "' (float32, bfloat16, float16, float64)");
}

at::Device bench_device(const std::string& name, const MpiEnv& mpi) {
  if (name == "cpu") return at::kCPU;
  if (name != "cuda") fail("--device: cpu or cuda");
  if (!at::hasCUDA()) fail("--device cuda: no GPU visible");
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(mpi.local_rank() % static_cast<int>(at::getNumGPUs())));
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
  if (!(o.timeout >= 0) || !std::isfinite(o.timeout)) fail("--timeout must be a number of seconds >= 0 (0: wait forever)");
  set_peer_timeout(o.timeout);
  layers::set_attention_backend(o.attention);
  set_ulysses_head_groups(o.ulysses_head_groups);
  set_cuda_graphs(o.cuda_graphs);
  set_dsp_frame_groups(o.dsp_frame_groups);
  if (!(o.max_memory_gb >= 0) || !std::isfinite(o.max_memory_gb)) fail("--max-memory must be a number of GB >= 0 (0: no budget)");
  set_memory_budget(static_cast<int64_t>(o.max_memory_gb * 1e9));
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
  set_text_encoder_device(device);
  return at::TensorOptions().device(device).dtype(dtype);
}

std::string demo_model_dir() {
  if (const char* env = std::getenv("DITTO_DEMO_MODEL")) return env;
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return "";
  std::string dir(exe, static_cast<size_t>(n));
  dir = dir.substr(0, dir.rfind('/'));
  for (const std::string& root : {dir, dir.substr(0, dir.rfind('/'))}) {
    const std::string candidate = root + "/share/ditto/models/ditto-demo";
    if (is_directory(candidate)) return candidate;
  }
  return dir + "/../share/ditto/models/ditto-demo";
}

void default_to_demo_model(ModelOptions& o) {
  if (!o.model_dir.empty() || !o.config_name.empty()) return;
  const std::string dir = demo_model_dir();
  if (!path_exists(dir + "/config.json"))
    fail("no model: pass --model DIR or --config NAME --random-weights (the demo model is not installed at ", dir,
         "; DITTO_DEMO_MODEL names another place)");
  o.model_dir = dir;
}

std::string model_source(const ModelOptions& o) {
  return o.model_dir.empty() ? "random:" + o.config_name + ":seed" + std::to_string(o.weights_seed) : o.model_dir;
}

namespace {
void check_model_options(const ModelOptions& o) {
  if (!o.model_dir.empty()) {
    if (!o.config_name.empty() || o.random_weights)
      fail("--model loads a checkpoint; --config/--random-weights are for random-weight runs, not both");
    return;
  }
  if (o.config_name.empty())
    fail("no model: pass --model DIR (a checkpoint directory) or --config NAME --random-weights");
  if (!o.random_weights)
    fail("--config ", o.config_name, " has no weights: pass --random-weights to run it with random weights, "
         "or --model DIR to load a checkpoint");
}
}  // namespace

std::unique_ptr<DiT> load_model(const ModelOptions& o, const at::TensorOptions& options) {
  check_model_options(o);
  return o.model_dir.empty() ? random_dit(o.config_name, o.weights_seed, options) : load_dit(o.model_dir, options);
}

ModelOutline model_outline(const ModelOptions& o) {
  check_model_options(o);
  return o.model_dir.empty() ? builtin_outline(o.config_name) : read_outline(o.model_dir);
}

bool parse_command_line(const std::string& command, const std::string& summary, po::options_description& desc,
                        const std::vector<std::string>& args, po::variables_map& vm, const std::string& help_footer) {
  std::string config_file;
  desc.add_options()("help,h", "show this help")(
      "config-file", po::value(&config_file), "read options from an INI-style file (name = value per line)");
  try {
    const po::parsed_options parsed = po::command_line_parser(args).options(desc).run();
    // A word that belongs to no option is a mistake (an unquoted prompt), never silently dropped.
    const std::vector<std::string> stray = po::collect_unrecognized(parsed.options, po::include_positional);
    if (!stray.empty())
      fail("unexpected argument '", stray.front(), "' (values with spaces need quotes: --prompt \"a red circle\")");
    po::store(parsed, vm);
    if (vm.count("help")) {
      std::cout << "ditto " << command << ": " << summary << "\n\n" << desc << "\n" << help_footer;
      return false;
    }
    if (vm.count("config-file")) {
      po::store(po::parse_config_file<char>(vm["config-file"].as<std::string>().c_str(), desc), vm);
    }
    po::notify(vm);
  } catch (const po::error& e) {
    fail(e.what(), " (see ditto ", command, " --help)");
  } catch (const Error& e) {
    fail(e.what(), " (see ditto ", command, " --help)");
  }
  return true;
}

}  // namespace ditto
