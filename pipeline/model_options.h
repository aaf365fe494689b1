// Which model a command runs and where: the model options every command shares (--model, --config,
// --random-weights, --dtype, --device, --threads), loading the model through the family registry,
// the shipped demo model's location, and command-line parsing with an optional config file.
#pragma once
#include <ATen/ATen.h>

#include <boost/program_options.hpp>
#include <memory>
#include <string>
#include <vector>

#include "dist/mpi_env.h"
#include "model/dit.h"
#include "model/family.h"

namespace ditto {

namespace po = boost::program_options;

struct ModelOptions {
  std::string model_dir;
  std::string config_name;
  bool random_weights = false;
  uint64_t weights_seed = 0;
  std::string dtype;   // empty: float32 on CPU, bfloat16 on CUDA
  std::string device;  // empty: cuda when a GPU is visible, else cpu
  int threads = 0;
  double timeout = 600;       // --timeout: seconds before a waiting rank checks its peers (dist/liveness.h)
  double max_memory_gb = 0;   // --max-memory: a job needing more per rank is refused (0: what the device has)
  std::string attention = "auto";  // --attention: SDPA's kernel (model/layers.h)
  bool cuda_graphs = false;        // --cuda-graphs (model/cuda_graph.h); process-wide once resolved
  int ulysses_head_groups = 1;     // --ulysses-head-groups (dist/ulysses_layout.h); process-wide once resolved
  int dsp_frame_groups = 1;        // --dsp-frame-groups (dist/dsp_layout.h); process-wide once resolved
};

void add_model_options(po::options_description& desc, ModelOptions& o);
// Device and dtype from the options (validated); under MPI the node-local rank picks the GPU.
at::TensorOptions resolve_tensor_options(const ModelOptions& o, const MpiEnv& mpi);
// Loads --model DIR, or builds --config NAME with --random-weights; refuses anything else.
std::unique_ptr<DiT> load_model(const ModelOptions& o, const at::TensorOptions& options);
// The outline of the model the options name (config.json or the built-in config; no weights read).
ModelOutline model_outline(const ModelOptions& o);
// The shipped demo model: DITTO_DEMO_MODEL, else share/ditto/models/ditto-demo beside the running
// executable (the build tree) or one level above it (an installed tree: PREFIX/bin, PREFIX/share).
std::string demo_model_dir();
// No --model and no --config: the shipped demo model (an Error naming where it was looked for).
void default_to_demo_model(ModelOptions& o);

// A short description of where the weights came from, for logs and metrics.
std::string model_source(const ModelOptions& o);

at::ScalarType parse_dtype(const std::string& name);
std::string dtype_name(at::ScalarType t);
// A benchmark's --device: "cpu", or "cuda" (the GPU of the local rank); an Error otherwise.
at::Device bench_device(const std::string& name, const MpiEnv& mpi);

// Parses `args` against `desc` (plus --help and an optional --config-file of the same options).
// Returns false when --help was printed. `help_footer` (optional) is printed after the options.
bool parse_command_line(const std::string& command, const std::string& summary, po::options_description& desc,
                        const std::vector<std::string>& args, po::variables_map& vm,
                        const std::string& help_footer = "");

}  // namespace ditto
