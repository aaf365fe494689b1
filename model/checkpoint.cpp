// Checkpoint directories and strict loading (see checkpoint.h).
#include "model/checkpoint.h"

#include <sys/stat.h>

#include <set>
#include <sstream>

#include "model/atomic_file.h"
#include "model/error.h"

namespace ditto {

namespace {

bool file_exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

}  // namespace

std::string shape_string(at::IntArrayRef s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? "," : "") << s[i];
  os << "]";
  return os.str();
}

Checkpoint Checkpoint::open(const std::string& dir, const std::vector<std::string>& bases) {
  Checkpoint c;
  c.dir_ = dir;
  for (const std::string& base : bases) {
    const std::string index_path = dir + "/" + base + ".safetensors.index.json";
    const std::string single_path = dir + "/" + base + ".safetensors";
    if (file_exists(index_path)) {
      const nlohmann::json j = read_json_file(index_path, "checkpoint index");
      if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        fail("'", index_path, "': no weight_map object");
      std::map<std::string, const SafetensorsFile*> by_file;
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        if (!it.value().is_string()) fail("'", index_path, "': the shard of '", it.key(), "' is not a file name");
        const std::string shard = it.value().get<std::string>();
        if (shard.find('/') != std::string::npos) fail("'", index_path, "': shard name '", shard, "' has a path");
        if (!by_file.count(shard)) {
          c.files_.push_back(std::make_shared<SafetensorsFile>(dir + "/" + shard));
          by_file[shard] = c.files_.back().get();
        }
        if (!by_file[shard]->contains(it.key()))
          fail("'", index_path, "' maps tensor '", it.key(), "' to '", shard, "', which does not contain it");
        c.where_[it.key()] = by_file[shard];
      }
      for (const auto& f : c.files_)
        for (const auto& e : f->entries())
          if (!c.where_.count(e.name)) c.where_[e.name] = f.get();  // present but unindexed: unexpected later
      return c;
    }
    if (file_exists(single_path)) {
      c.files_.push_back(std::make_shared<SafetensorsFile>(single_path));
      for (const auto& e : c.files_.back()->entries()) c.where_[e.name] = c.files_.back().get();
      return c;
    }
  }
  std::string names;
  for (const auto& b : bases) names += (names.empty() ? "" : " or ") + b + ".safetensors (or its .index.json)";
  fail("model directory '", dir, "' has neither ", names);
}

void check_weights(const std::vector<ParamSpec>& specs, const std::map<std::string, at::Tensor>& weights,
                   const std::string& who) {
  std::vector<std::string> missing;
  for (const auto& spec : specs) {
    auto it = weights.find(spec.name);
    if (it == weights.end())
      missing.push_back(spec.name);
    else if (it->second.sizes().vec() != spec.shape)
      fail(who, ": weight '", spec.name, "' has shape ", shape_string(it->second.sizes()), ", expected ",
           shape_string(spec.shape));
  }
  if (!missing.empty()) fail(who, ": ", missing.size(), " weights missing, first '", missing.front(), "'");
}

std::map<std::string, at::Tensor> load_strict(const Checkpoint& ck, const std::vector<ParamSpec>& specs,
                                              const at::TensorOptions& options, const std::string& described,
                                              const std::function<std::string(const std::string&)>& rename) {
  // The stored tensors under the specs' names.
  std::map<std::string, std::pair<std::string, const SafetensorsFile*>> stored;  // spec name -> (stored name, file)
  std::vector<std::string> unexpected;
  for (const auto& [name, file] : ck.tensors()) {
    const std::string as = rename ? rename(name) : name;
    if (as.empty()) continue;  // a tensor the model does not use (a full T5's decoder, say)
    if (stored.count(as)) unexpected.push_back(name + " (a second '" + as + "')");
    else stored[as] = {name, file};
  }
  std::vector<std::string> missing, wrong_shape, wrong_dtype;
  std::set<std::string> expected;
  std::map<std::string, at::Tensor> out;
  for (const auto& spec : specs) {
    expected.insert(spec.name);
    auto it = stored.find(spec.name);
    if (it == stored.end()) {
      missing.push_back(spec.name);
      continue;
    }
    const auto& [name, file] = it->second;
    const SafetensorsEntry* e = file->find(name);
    if (e->shape != spec.shape) {
      wrong_shape.push_back(name + " " + shape_string(e->shape) + " (expected " + shape_string(spec.shape) + ")");
      continue;
    }
    if (e->dtype != "F32" && e->dtype != "F16" && e->dtype != "BF16" && e->dtype != "F64") {
      wrong_dtype.push_back(name + " " + e->dtype);
      continue;
    }
    out[spec.name] = file->tensor(name, options);
  }
  for (const auto& [as, source] : stored)
    if (!expected.count(as)) unexpected.push_back(source.first);
  if (missing.empty() && wrong_shape.empty() && wrong_dtype.empty() && unexpected.empty()) return out;

  std::ostringstream os;
  os << "checkpoint '" << ck.dir() << "' does not match its config (" << described << ")";
  auto list = [&](const char* what, const std::vector<std::string>& names) {
    if (names.empty()) return;
    os << "\n  " << names.size() << " " << what << ": ";
    for (size_t i = 0; i < names.size() && i < 12; ++i) os << (i ? ", " : "") << names[i];
    if (names.size() > 12) os << ", ... (" << names.size() - 12 << " more)";
  };
  list("missing", missing);
  list("unexpected", unexpected);
  list("with the wrong shape", wrong_shape);
  list("with a non-float dtype", wrong_dtype);
  throw Error(os.str());
}

const at::Tensor& weight_named(const std::map<std::string, at::Tensor>& weights, const std::string& name,
                               const char* model) {
  auto it = weights.find(name);
  if (it == weights.end()) fail(model, ": no weight '", name, "'");
  return it->second;
}

}  // namespace ditto
