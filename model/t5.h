// The T5 encoder family in LibTorch, loaded as transformers saves it (config.json + model.safetensors,
// or shards with an index; the names of T5EncoderModel / UMT5EncoderModel, or of a whole
// T5ForConditionalGeneration, whose decoder is skipped): T5 v1.1 (Open-Sora 1.2's
// DeepFloyd/t5-v1_1-xxl: the relative position bias in the first layer only, shared by every layer)
// and umT5 (Wan's google/umt5-xxl: a bias of its own in every layer). Pre-norm layers, RMSNorm without
// mean or bias, attention without 1/sqrt(d) scaling and with the softmax in float32, the gated-GELU
// (tanh) or ReLU feed-forward, as transformers computes them.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/checkpoint.h"

namespace ditto {

struct T5Config {
  std::string model_type = "t5";  // "t5" | "umt5"
  int vocab_size = 32128, d_model = 4096, d_kv = 64, d_ff = 10240, num_layers = 24, num_heads = 64;
  int relative_attention_num_buckets = 32, relative_attention_max_distance = 128;
  double layer_norm_epsilon = 1e-6;
  bool gated = true;               // feed_forward_proj "gated-gelu" (v1.1, umT5) or "relu" (T5 v1.0)
  std::string activation = "gelu_new";  // "gelu_new" (tanh GELU) or "relu"
  bool bias_per_layer() const { return model_type == "umt5"; }
  int inner_dim() const { return num_heads * d_kv; }
  void validate() const;
};

// Built-in configs (benchmarks with random weights): "umt5-xxl" (Wan's google/umt5-xxl encoder: 24
// layers of 4096, 64 heads, d_ff 10240, vocabulary 256384), "t5-v1_1-xxl" (Open-Sora's DeepFloyd
// encoder: the same shape, vocabulary 32128, one shared bias) and "umt5-tiny".
T5Config t5_builtin_config(const std::string& name);

// transformers' config.json fields; an Error naming the file and field.
T5Config parse_t5_config(const nlohmann::json& j, const std::string& where);

// The relative-position bucket of key position minus query position (bidirectional, as the encoder
// uses it): half the buckets per sign; exact below num_buckets / 4, logarithmic up to max_distance.
at::Tensor t5_relative_buckets(int64_t query_len, int64_t key_len, int num_buckets, int max_distance);

class T5Encoder {
 public:
  // A transformers directory (config.json + safetensors); weights converted to `options`.
  static T5Encoder from_pretrained(const std::string& dir, const at::TensorOptions& options);
  T5Encoder(T5Config config, std::map<std::string, at::Tensor> weights, const at::TensorOptions& options);
  // Random weights drawn from `seed` (matrices ~ N(0, 1 / fan_in), embeddings and biases N(0, 1),
  // norms 1): benchmarks. Drawn and converted one tensor at a time (an XXL model never exists in float32).
  static T5Encoder random(const T5Config& config, uint64_t seed, const at::TensorOptions& options);

  const T5Config& config() const { return config_; }
  // The last hidden state [B, L, d_model] of token ids [B, L] (int64) under the attention mask [B, L]
  // (1: a token, 0: padding), in the encoder's dtype.
  at::Tensor encode(const at::Tensor& input_ids, const at::Tensor& attention_mask) const;

 private:
  const at::Tensor& w(const std::string& name) const;
  at::Tensor position_bias(int layer, int64_t len) const;  // [1, H, L, L]

  T5Config config_;
  std::map<std::string, at::Tensor> weights_;
  at::TensorOptions options_;
};

std::vector<ParamSpec> t5_param_specs(const T5Config& c);

class SentencePieceTokenizer;

// A prompt's caption as each family's pipeline makes it: umT5 (Wan) cleans the prompt as Wan does,
// keeps the real tokens and EOS and zero-pads the rest; T5 (Open-Sora 1.2) keeps every row with the
// mask and prepares the prompt as Open-Sora's inference does (opensora_prompt: the aesthetic score
// 6.5, its caption cleaning). y [L, C] float32 and mask [L] int64 on the CPU.
struct PromptEmbedding {
  at::Tensor y, mask;
  std::string cleaned;  // the text that was tokenized
  int tokens = 0;       // valid tokens (EOS included)
};
PromptEmbedding embed_prompt(const T5Encoder& encoder, const SentencePieceTokenizer& tokenizer, const std::string& prompt,
                             int max_length);

// Where a T5 / umT5 text encoder's weights and tokenizer are: a diffusers pipeline's text_encoder/ and
// tokenizer/, or one transformers directory (config.json, safetensors, and spiece.model beside them or
// in tokenizer/). An Error naming what is missing.
struct T5Dirs {
  std::string encoder, tokenizer;
};
T5Dirs t5_dirs(const std::string& dir);

class TextEncoder;
// The text encoder at `dir` (as t5_dirs finds it) producing `tokens` tokens (the DiT's text length),
// loaded once per process on the text-encoder device: float32 on the CPU; on a GPU umT5 in bfloat16
// (as the official Wan code runs it) and T5 v1.1 in float32 (as Open-Sora 1.2 runs it).
std::shared_ptr<const TextEncoder> load_t5_text_encoder(const std::string& dir, int tokens);
// Where text encoders load from now on (the run's device; the CPU until set).
void set_text_encoder_device(const at::Device& device);
// Drops the loaded text encoders on `device` from the per-process cache (their memory is freed once
// no caption in progress holds them); whether there were any.
bool release_t5_text_encoders(const at::Device& device);

// The text-encoder kind of a diffusers pipeline directory that holds text_encoder/ (T5 or umT5) and
// tokenizer/ (spiece.model): `--model PIPELINE --prompt TEXT` encodes the prompt at the
// transformer's text length. Registered by the launcher.
void register_t5_text_encoder();

}  // namespace ditto
