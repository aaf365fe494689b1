// ditto's own small text encoder for the demo model: a word-level vocabulary, learned token and
// position embeddings and a few pre-norm transformer layers. Its output [L, dim] is the caption
// embedding the STDiT cross-attends to, as T5's output is for Open-Sora.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace ditto {

struct TextEncoderConfig {
  std::vector<std::string> vocab;  // id 0 is padding; word i has id i + 1
  int dim = 64, layers = 2, heads = 4, max_tokens = 12;
};

class TextEncoder {
 public:
  TextEncoder(TextEncoderConfig config, std::map<std::string, at::Tensor> weights);
  static TextEncoder random(const TextEncoderConfig& config, uint64_t seed, const at::TensorOptions& options);
  // `dir`/text_encoder.safetensors (the vocabulary and sizes are in its metadata).
  static bool present(const std::string& dir);
  static TextEncoder load(const std::string& dir, const at::TensorOptions& options);
  void save(const std::string& dir) const;

  const TextEncoderConfig& config() const { return config_; }
  std::map<std::string, at::Tensor>& weights() { return weights_; }
  const std::map<std::string, at::Tensor>& weights() const { return weights_; }

  // Word ids padded to max_tokens; a word outside the vocabulary is an Error listing the known words.
  std::vector<int64_t> tokenize(const std::string& prompt) const;
  // y [B, 1, max_tokens, dim] and mask [B, max_tokens] (int64) for a batch of prompts.
  std::pair<at::Tensor, at::Tensor> encode(const std::vector<std::string>& prompts) const;

 private:
  TextEncoderConfig config_;
  std::map<std::string, at::Tensor> weights_;
};

}  // namespace ditto
