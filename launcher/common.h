// What the launcher's commands share: the model/device/dtype options, loading the model, reading
// input tensors by name, and the command table.
#pragma once
#include <ATen/ATen.h>

#include <boost/program_options.hpp>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dist/mpi_env.h"
#include "model/stdit3.h"

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
};

void add_model_options(po::options_description& desc, ModelOptions& o);
// Device and dtype from the options (validated); under MPI the node-local rank picks the GPU.
at::TensorOptions resolve_tensor_options(const ModelOptions& o, const MpiEnv& mpi);
// Loads --model DIR, or builds --config NAME with --random-weights; refuses anything else.
STDiT3 load_model(const ModelOptions& o, const at::TensorOptions& options);
// The shipped demo model (models/ditto-demo in the source tree, or DITTO_DEMO_MODEL).
std::string demo_model_dir();
// No --model and no --config: the shipped demo model (an Error naming its path when it is missing).
void default_to_demo_model(ModelOptions& o);

// How a model is sampled when the user does not say: Open-Sora latent models 51 frames at 240 x 426,
// CFG 7 and Open-Sora's timestep transform; pixel-space models (the demo) their training geometry
// 16 x 32 x 32, CFG 2.5 (7 over-saturates the small demo) and no transform.
struct SamplingDefaults {
  int frames, height, width;
  double cfg_scale;
  bool timestep_transform;
  double flow_shift;  // rflow's fixed timestep shift (0: none)
};
SamplingDefaults sampling_defaults(const STDiT3Config& config);

// A short description of where the weights came from, for logs and metrics.
std::string model_source(const ModelOptions& o);

at::ScalarType parse_dtype(const std::string& name);
std::string dtype_name(at::ScalarType t);

// Parses `args` against `desc` (plus --help and an optional --config-file of the same options).
// Returns false when --help was printed.
bool parse_command_line(const std::string& command, const std::string& summary, po::options_description& desc,
                        const std::vector<std::string>& args, po::variables_map& vm);

// Command entry points. Each returns the process exit code; errors are thrown as ditto::Error.
int run_sample(const std::vector<std::string>& args, const MpiEnv& mpi);
int run_forward(const std::vector<std::string>& args, const MpiEnv& mpi);
int run_train(const std::vector<std::string>& args, const MpiEnv& mpi);
int run_render(const std::vector<std::string>& args, const MpiEnv& mpi);
int run_profile(const std::vector<std::string>& args, const MpiEnv& mpi);
int run_calibrate(const std::vector<std::string>& args, const MpiEnv& mpi);

// `ditto COMMAND ...`: dispatches to a command and turns exceptions into a message and exit code
// (ending every rank of a multi-rank job).
int run_command(int argc, char** argv, const MpiEnv& mpi);

}  // namespace ditto
