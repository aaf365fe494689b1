// The demo model's own small text encoder: a word-level vocabulary, learned token and position
// embeddings and a few pre-norm transformer layers. Its output [L, dim] is the caption embedding the
// STDiT cross-attends to, as T5's output is for Open-Sora. Found by the text-encoder registry in a
// model directory holding text_encoder.safetensors.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "model/text_encoder.h"

namespace ditto {

struct WordEncoderConfig {
  std::vector<std::string> vocab;  // id 0 is padding; word i has id i + 1
  int dim = 64, layers = 2, heads = 4, max_tokens = 12;
};

class WordEncoder : public TextEncoder {
 public:
  WordEncoder(WordEncoderConfig config, std::map<std::string, at::Tensor> weights);
  static WordEncoder random(const WordEncoderConfig& config, uint64_t seed, const at::TensorOptions& options);
  // `dir`/text_encoder.safetensors (the vocabulary and sizes are in its metadata).
  static bool present(const std::string& dir);
  static WordEncoder load(const std::string& dir, const at::TensorOptions& options);
  void save(const std::string& dir) const;

  const WordEncoderConfig& config() const { return config_; }
  std::map<std::string, at::Tensor>& weights() { return weights_; }
  const std::map<std::string, at::Tensor>& weights() const { return weights_; }

  // Word ids padded to max_tokens; a word outside the vocabulary is an Error listing the known words.
  std::vector<int64_t> tokenize(const std::string& prompt) const;
  // y [B, 1, max_tokens, dim] and mask [B, max_tokens] (int64) for a batch of prompts.
  std::pair<at::Tensor, at::Tensor> encode_batch(const std::vector<std::string>& prompts) const;

  // --- TextEncoder ---
  std::string name() const override { return "ditto-words"; }
  int tokens() const override { return config_.max_tokens; }
  int channels() const override { return config_.dim; }
  void check(const std::string& prompt) const override { tokenize(prompt); }
  Caption encode(const std::string& prompt) const override;
  // No word: every row zero, no valid token (what ditto train's caption dropout shows a model
  // without a learned null caption).
  Caption empty() const override;

 private:
  WordEncoderConfig config_;
  std::map<std::string, at::Tensor> weights_;
};

}  // namespace ditto
