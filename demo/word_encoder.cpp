// The demo's word-level text encoder (see word_encoder.h).
#include "demo/word_encoder.h"

#include <sys/stat.h>

#include <cctype>
#include <cmath>
#include <sstream>

#include "model/error.h"
#include "model/layers.h"
#include "model/safetensors.h"

namespace ditto {

namespace {

std::vector<std::pair<std::string, std::vector<int64_t>>> specs(const WordEncoderConfig& c) {
  const int64_t D = c.dim, V = static_cast<int64_t>(c.vocab.size()) + 1;
  std::vector<std::pair<std::string, std::vector<int64_t>>> s = {{"token_embedding", {V, D}},
                                                                 {"position_embedding", {c.max_tokens, D}}};
  for (int l = 0; l < c.layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    s.push_back({p + "norm1.weight", {D}});
    s.push_back({p + "norm1.bias", {D}});
    s.push_back({p + "qkv.weight", {3 * D, D}});
    s.push_back({p + "qkv.bias", {3 * D}});
    s.push_back({p + "proj.weight", {D, D}});
    s.push_back({p + "proj.bias", {D}});
    s.push_back({p + "norm2.weight", {D}});
    s.push_back({p + "norm2.bias", {D}});
    s.push_back({p + "fc1.weight", {4 * D, D}});
    s.push_back({p + "fc1.bias", {4 * D}});
    s.push_back({p + "fc2.weight", {D, 4 * D}});
    s.push_back({p + "fc2.bias", {D}});
  }
  s.push_back({"final_norm.weight", {D}});
  s.push_back({"final_norm.bias", {D}});
  return s;
}

}  // namespace

WordEncoder::WordEncoder(WordEncoderConfig config, std::map<std::string, at::Tensor> weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  if (config_.dim % config_.heads) fail("text encoder: dim ", config_.dim, " is not divisible by heads ", config_.heads);
  for (const auto& [name, shape] : specs(config_)) {
    auto it = weights_.find(name);
    if (it == weights_.end()) fail("text encoder: weight '", name, "' is missing");
    if (it->second.sizes().vec() != shape) fail("text encoder: weight '", name, "' has the wrong shape");
  }
}

WordEncoder WordEncoder::random(const WordEncoderConfig& c, uint64_t seed, const at::TensorOptions& options) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::map<std::string, at::Tensor> w;
  for (const auto& [name, shape] : specs(c)) {
    at::Tensor t;
    const bool is_norm = name.find("norm") != std::string::npos;
    if (is_norm) t = name.find(".weight") != std::string::npos ? at::ones(shape) : at::zeros(shape);
    else if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0) t = at::zeros(shape);
    else t = at::randn(shape, gen, at::kFloat) / std::sqrt(static_cast<double>(shape.back()));
    w[name] = t.to(options);
  }
  return WordEncoder(c, std::move(w));
}

bool WordEncoder::present(const std::string& dir) {
  struct stat st {};
  return ::stat((dir + "/text_encoder.safetensors").c_str(), &st) == 0;
}

WordEncoder WordEncoder::load(const std::string& dir, const at::TensorOptions& options) {
  const std::string path = dir + "/text_encoder.safetensors";
  SafetensorsFile f(path);
  WordEncoderConfig c;
  auto meta = [&](const char* k) {
    auto it = f.metadata().find(k);
    if (it == f.metadata().end()) fail("'", path, "': metadata '", k, "' is missing");
    return it->second;
  };
  std::istringstream words(meta("vocab"));
  for (std::string wd; words >> wd;) c.vocab.push_back(wd);
  c.dim = std::stoi(meta("dim"));
  c.layers = std::stoi(meta("layers"));
  c.heads = std::stoi(meta("heads"));
  c.max_tokens = std::stoi(meta("max_tokens"));
  std::map<std::string, at::Tensor> w;
  for (const auto& [name, shape] : specs(c)) {
    if (!f.contains(name)) fail("'", path, "' has no tensor '", name, "'");
    w[name] = f.tensor(name, options);
  }
  return WordEncoder(c, std::move(w));
}

void WordEncoder::save(const std::string& dir) const {
  std::string vocab;
  for (const auto& wd : config_.vocab) vocab += (vocab.empty() ? "" : " ") + wd;
  NamedTensors t;
  for (const auto& [name, shape] : specs(config_)) t.emplace_back(name, weights_.at(name).to(at::kFloat));
  save_safetensors(dir + "/text_encoder.safetensors", t,
                   {{"vocab", vocab}, {"dim", std::to_string(config_.dim)}, {"layers", std::to_string(config_.layers)},
                    {"heads", std::to_string(config_.heads)}, {"max_tokens", std::to_string(config_.max_tokens)}});
}

std::vector<int64_t> WordEncoder::tokenize(const std::string& prompt) const {
  std::vector<int64_t> ids;
  std::string word;
  auto flush = [&] {
    if (word.empty()) return;
    int64_t id = 0;
    for (size_t i = 0; i < config_.vocab.size(); ++i)
      if (config_.vocab[i] == word) id = static_cast<int64_t>(i) + 1;
    if (id == 0) {
      std::string known;
      for (const auto& v : config_.vocab) known += (known.empty() ? "" : " ") + v;
      fail("prompt '", prompt, "': the word '", word, "' is not in the text encoder's vocabulary (known words: ", known, ")");
    }
    ids.push_back(id);
    word.clear();
  };
  for (char ch : prompt) {
    if (std::isalnum(static_cast<unsigned char>(ch))) word += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    else flush();
  }
  flush();
  if (ids.empty()) fail("the prompt is empty");
  if (static_cast<int>(ids.size()) > config_.max_tokens)
    fail("prompt '", prompt, "' has ", ids.size(), " words; the text encoder takes at most ", config_.max_tokens);
  ids.resize(config_.max_tokens, 0);
  return ids;
}

std::pair<at::Tensor, at::Tensor> WordEncoder::encode_batch(const std::vector<std::string>& prompts) const {
  const int64_t B = static_cast<int64_t>(prompts.size()), L = config_.max_tokens, D = config_.dim,
                H = config_.heads;
  std::vector<int64_t> flat;
  for (const auto& p : prompts) {
    auto ids = tokenize(p);
    flat.insert(flat.end(), ids.begin(), ids.end());
  }
  const auto& w = weights_;
  const auto dev = w.at("token_embedding").device();
  at::Tensor ids = at::tensor(flat, at::kLong).reshape({B, L}).to(dev);
  at::Tensor mask = ids.ne(0);
  at::Tensor x = at::embedding(w.at("token_embedding"), ids) + w.at("position_embedding").unsqueeze(0);
  for (int l = 0; l < config_.layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    at::Tensor h = at::layer_norm(x, {D}, w.at(p + "norm1.weight"), w.at(p + "norm1.bias"), 1e-5);
    at::Tensor qkv = at::linear(h, w.at(p + "qkv.weight"), w.at(p + "qkv.bias")).view({B, L, 3, H, D / H}).permute({2, 0, 3, 1, 4});
    at::Tensor o = layers::attention(qkv[0], qkv[1], qkv[2], mask).transpose(1, 2).reshape({B, L, D});
    x = x + at::linear(o, w.at(p + "proj.weight"), w.at(p + "proj.bias"));
    h = at::layer_norm(x, {D}, w.at(p + "norm2.weight"), w.at(p + "norm2.bias"), 1e-5);
    x = x + layers::mlp(h, w.at(p + "fc1.weight"), w.at(p + "fc1.bias"), w.at(p + "fc2.weight"), w.at(p + "fc2.bias"));
  }
  x = at::layer_norm(x, {D}, w.at("final_norm.weight"), w.at("final_norm.bias"), 1e-5);
  return {x.unsqueeze(1), mask.to(at::kLong)};
}

Caption WordEncoder::encode(const std::string& prompt) const {
  Caption c;
  std::tie(c.y, c.mask) = encode_batch({prompt});
  c.y = c.y.to(at::kFloat).cpu();
  c.mask = c.mask.cpu();
  return c;
}

Caption WordEncoder::empty() const {
  return {at::zeros({1, 1, config_.max_tokens, config_.dim}, at::kFloat), at::zeros({1, config_.max_tokens}, at::kLong)};
}

}  // namespace ditto
