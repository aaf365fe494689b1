// The text-encoder seam: prompts -> caption tokens and mask, as the DiT's cross-attention reads them.
// Text encoders are found in model directories through a registry of kinds (the demo's word encoder
// registers one); precomputed caption-embedding files and random captions are the other caption
// sources.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ditto {

// One prompt's caption: y [1, 1, L, C] float32 and mask [1, L] int64 (nonzero = valid), on the CPU.
struct Caption {
  at::Tensor y, mask;
};

class TextEncoder {
 public:
  virtual ~TextEncoder() = default;
  virtual std::string name() const = 0;
  virtual int tokens() const = 0;    // L
  virtual int channels() const = 0;  // C
  // An Error naming what in the prompt the encoder cannot take, without encoding it.
  virtual void check(const std::string& prompt) const = 0;
  virtual Caption encode(const std::string& prompt) const = 0;
  // The empty prompt's caption: the unconditional branch of a model without a learned null caption
  // when no negative prompt is given (diffusers' default negative prompt "").
  virtual Caption empty() const { return encode(""); }
};

// A caption-embedding file: `y` ([L, C], [1, L, C] or [1, 1, L, C]) and optional `mask` ([L] or
// [1, L]), padded to `tokens` with masked-out zeros. Every problem is an Error naming the file.
Caption load_caption_embedding(const std::string& path, int tokens, int channels);
// `valid` tokens of a normal random caption drawn from `seed` (benchmarks), the rest masked out.
Caption random_caption(int valid, uint64_t seed, int tokens, int channels);

// A kind of text encoder a model directory may hold.
struct TextEncoderKind {
  std::string name;
  std::function<bool(const std::string& dir)> present;
  std::function<std::shared_ptr<const TextEncoder>(const std::string& dir)> load;  // float32, CPU
  // Fixed prompt sets that fit this encoder ("profile", "calibration", "evaluation" -> prompt k), for
  // tools that need prompts of their own; empty when it has none.
  std::function<std::string(const std::string& set, int k)> prompt_set;
};
void register_text_encoder(TextEncoderKind kind);
// The kind of text encoder `dir` holds (null: none).
const TextEncoderKind* text_encoder_kind(const std::string& dir);
// The text encoder of `dir`, loaded once per directory per process (null: none).
std::shared_ptr<const TextEncoder> find_text_encoder(const std::string& dir);

}  // namespace ditto
