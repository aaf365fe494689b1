// The family registry (see family.h). The built-in families register on first use.
#include "model/family.h"

#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>

#include "model/atomic_file.h"
#include "model/error.h"

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

ModelOutline read_outline(const std::string& dir) {
  const auto [j, family] = read_config(dir);
  return family->outline(j, dir + "/config.json");
}

ModelOutline builtin_outline(const std::string& config_name) {
  return family_for_config(config_name).builtin_outline(config_name);
}

std::unique_ptr<DiT> load_dit(const std::string& dir, const at::TensorOptions& options) {
  return read_config(dir).second->load(dir, options);
}

std::unique_ptr<DiT> random_dit(const std::string& config_name, uint64_t seed, const at::TensorOptions& options) {
  return family_for_config(config_name).random(config_name, seed, options);
}

}  // namespace ditto
