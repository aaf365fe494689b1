// The family registry (see family.h). The built-in families register on first use.
#include "model/family.h"

#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>

#include "model/atomic_file.h"
#include "model/error.h"
#include "model/experts.h"

namespace ditto {

void register_stdit3_family();  // model/stdit3_family.cpp
void register_wan_family();     // model/wan_family.cpp

namespace {

std::vector<std::unique_ptr<ModelFamily>>& registry() {
  static std::vector<std::unique_ptr<ModelFamily>> families;
  return families;
}

std::recursive_mutex& registry_mutex() {
  static std::recursive_mutex m;
  return m;
}

void ensure_builtin() {
  static std::once_flag once;
  std::call_once(once, [] {
    register_stdit3_family();
    register_wan_family();
  });
}

std::string joined(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

}  // namespace

void register_family(ModelFamily family) {
  std::lock_guard<std::recursive_mutex> g(registry_mutex());
  for (const auto& f : registry())
    if (f->name == family.name) fail("model family '", family.name, "' is registered twice");
  registry().push_back(std::make_unique<ModelFamily>(std::move(family)));
}

std::vector<const ModelFamily*> model_families() {
  ensure_builtin();
  std::lock_guard<std::recursive_mutex> g(registry_mutex());
  std::vector<const ModelFamily*> out;
  for (const auto& f : registry()) out.push_back(f.get());
  return out;
}

const ModelFamily& family_for_model_type(const std::string& model_type) {
  std::vector<std::string> known;
  for (const ModelFamily* f : model_families())
    for (const auto& t : f->model_types) {
      if (t == model_type) return *f;
      known.push_back(t);
    }
  fail("no model family loads model_type '", model_type, "' (known: ", joined(known), ")");
}

const ModelFamily& family_for_config(const std::string& config_name) {
  for (const ModelFamily* f : model_families())
    for (const auto& c : f->configs)
      if (c == config_name) return *f;
  fail("unknown model config '", config_name, "' (built-in: ", joined(builtin_config_names_all()), ")");
}

const ModelFamily& family_of(const std::string& family) {
  for (const ModelFamily* f : model_families())
    if (f->name == family) return *f;
  fail("model family '", family, "' is not registered");
}

std::vector<std::string> builtin_config_names_all() {
  std::vector<std::string> names;
  for (const ModelFamily* f : model_families()) names.insert(names.end(), f->configs.begin(), f->configs.end());
  return names;
}

namespace {

// config.json of a model directory and the family its model_type names.
std::pair<nlohmann::json, const ModelFamily*> read_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  const nlohmann::json j = read_json_file(path, "model config");
  if (!j.is_object()) fail("'", path, "': the config is not a JSON object");
  // diffusers' configs name their class, transformers' (and Open-Sora's STDiT3) their model_type; a
  // config naming neither is read as STDiT3, as before.
  std::string type = "STDiT3";
  for (const char* key : {"model_type", "_class_name"})
    if (j.contains(key)) {
      if (!j[key].is_string()) fail("'", path, "', field '", key, "': not a string");
      type = j[key].get<std::string>();
    }
  return {j, &family_for_model_type(type)};
}

}  // namespace

namespace {

bool is_file(const std::string& path) { return path_exists(path); }

// Where a model's weights are: one directory, or the experts of a model of experts with their boundary.
struct ModelDirs {
  std::vector<std::string> experts;
  double boundary = 0;
};

// A model directory (config.json), a diffusers pipeline directory (model_index.json: transformer/,
// and transformer_2/ when boundary_ratio is set, as WanPipeline reads it), or Wan 2.2's official
// layout (high_noise_model/ + low_noise_model/, boundary 875 as its configs).
ModelDirs model_dirs(const std::string& dir) {
  if (is_file(dir + "/config.json")) return {{dir}, 0};
  if (is_file(dir + "/model_index.json")) {
    const std::string index = dir + "/model_index.json";
    const nlohmann::json j = read_json_file(index, "pipeline index");
    if (!j.is_object()) fail("'", index, "': not a JSON object");
    if (!is_file(dir + "/transformer/config.json"))
      fail("'", index, "': the pipeline has no transformer/config.json (ditto loads the pipeline's transformer)");
    ModelDirs d{{dir + "/transformer"}, 0};
    if (j.contains("boundary_ratio") && !j["boundary_ratio"].is_null()) {
      if (!j["boundary_ratio"].is_number()) fail("'", index, "', field 'boundary_ratio': not a number");
      const double ratio = j["boundary_ratio"].get<double>();
      if (!(ratio > 0 && ratio < 1)) fail("'", index, "', field 'boundary_ratio': must be in (0, 1), got ", ratio);
      if (!is_file(dir + "/transformer_2/config.json"))
        fail("'", index, "' sets boundary_ratio but the pipeline has no transformer_2/config.json");
      d.experts.push_back(dir + "/transformer_2");
      d.boundary = ratio * 1000;  // the schedulers' num_train_timesteps
    }
    return d;
  }
  if (is_file(dir + "/high_noise_model/config.json") && is_file(dir + "/low_noise_model/config.json"))
    return {{dir + "/high_noise_model", dir + "/low_noise_model"}, 875};
  fail("'", dir, "' is not a model directory: it has no config.json (a model), model_index.json (a diffusers "
       "pipeline) or high_noise_model/ + low_noise_model/ (Wan 2.2's experts)");
}

}  // namespace

ModelOutline read_outline(const std::string& dir) {
  const ModelDirs d = model_dirs(dir);
  std::vector<ModelOutline> experts;
  for (const auto& e : d.experts) {
    const auto [j, family] = read_config(e);
    experts.push_back(family->outline(j, e + "/config.json"));
  }
  return experts.size() == 1 ? experts.front() : expert_outline(experts, d.boundary, dir);
}

ModelOutline builtin_outline(const std::string& config_name) {
  return family_for_config(config_name).builtin_outline(config_name);
}

std::unique_ptr<DiT> load_dit(const std::string& dir, const at::TensorOptions& options) {
  const ModelDirs d = model_dirs(dir);
  std::vector<std::unique_ptr<DiT>> experts;
  for (const auto& e : d.experts) experts.push_back(read_config(e).second->load(e, options));
  if (experts.size() == 1) return std::move(experts.front());
  return std::make_unique<ExpertSwitch>(std::move(experts), d.boundary);
}

std::unique_ptr<DiT> random_dit(const std::string& config_name, uint64_t seed, const at::TensorOptions& options) {
  const ModelFamily& family = family_for_config(config_name);
  const ModelOutline outline = family.builtin_outline(config_name);
  if (outline.experts <= 1) return family.random(config_name, seed, options);
  // A built-in model of experts: each expert the config's architecture, with its own seed.
  std::vector<std::unique_ptr<DiT>> experts;
  for (int i = 0; i < outline.experts; ++i) experts.push_back(family.random(config_name, seed + i, options));
  return std::make_unique<ExpertSwitch>(std::move(experts), outline.expert_boundary);
}

}  // namespace ditto
