// Checkpoint directories as Hugging Face publishes them: BASE.safetensors, or shards listed in
// BASE.safetensors.index.json, read strictly against a model's parameter list: every missing,
// unexpected, wrong-shape or non-float tensor is reported together, by name.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/safetensors.h"

namespace ditto {

struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// "[2,3,4]": a shape as the loading errors print it.
std::string shape_string(at::IntArrayRef shape);

class Checkpoint {
 public:
  // The first of `bases` ("model", "diffusion_pytorch_model") with a file or an index in `dir`.
  static Checkpoint open(const std::string& dir, const std::vector<std::string>& bases);
  const std::string& dir() const { return dir_; }
  // Every tensor name with the file that holds it.
  const std::map<std::string, const SafetensorsFile*>& tensors() const { return where_; }

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> where_;
};

// Checks that `weights` holds every spec's tensor at its shape; an Error naming the first misfit
// (`who` names the model: "STDiT3", "Wan").
// The tensor called `name` in a model's weights; an Error "MODEL: no weight 'NAME'" when it has none.
const at::Tensor& weight_named(const std::map<std::string, at::Tensor>& weights, const std::string& name,
                               const char* model);

void check_weights(const std::vector<ParamSpec>& specs, const std::map<std::string, at::Tensor>& weights,
                   const std::string& who);

// The checkpoint's tensors for `specs`, converted to `options`. `rename` maps a stored name to the
// spec's name (empty function: the names are the specs'; an empty name: a stored tensor the model
// does not use, skipped); `described` says what the specs are of
// (the config's key sizes) in the error.
std::map<std::string, at::Tensor> load_strict(const Checkpoint& checkpoint, const std::vector<ParamSpec>& specs,
                                              const at::TensorOptions& options, const std::string& described,
                                              const std::function<std::string(const std::string&)>& rename = nullptr);

}  // namespace ditto
