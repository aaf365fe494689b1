// The Wan 2.1 / 2.2 text-to-video transformer (diffusers' WanTransformer3DModel, the official
// WanModel) as a DiT: full 3-D self-attention with q/k RMSNorm across heads and 3-D RoPE on
// interleaved pairs, cross-attention to the text behind an affine LayerNorm, adaLN modulation from
// the timestep projection e0, and a head modulated by the time embedding e. Weights are held under
// diffusers' names; the official names load through a rename.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/dit.h"

namespace ditto {

struct WanConfig {
  int dim = 1536, ffn_dim = 8960, num_heads = 12, num_layers = 30;
  int in_channels = 16, out_channels = 16;
  std::array<int, 3> patch_size{1, 2, 2};
  int freq_dim = 256, text_dim = 4096, text_len = 512;
  double eps = 1e-6;
  bool cross_attn_norm = true;
  int rope_max_seq_len = 1024;
  // ditto's extension (config.json "latent_space": "pixel"): the model reads RGB pixels, not Wan-VAE
  // latents (the demo models).
  bool pixel = false;
  int head_dim() const { return dim / num_heads; }
  int patch_volume() const { return patch_size[0] * patch_size[1] * patch_size[2]; }
  void validate() const;  // throws Error naming the inconsistent field
};

// config.json in diffusers' form (WanTransformer3DModel: num_attention_heads, attention_head_dim,
// ...) or the official one (WanModel: dim, num_heads, in_dim, ...); `where` names it in errors.
WanConfig parse_wan_config(const nlohmann::json& j, const std::string& where);
nlohmann::ordered_json wan_config_json(const WanConfig& c);  // diffusers' form
// wan2.1-t2v-1.3b, wan2.1-t2v-14b, wan2.2-t2v-a14b (either expert), wan-tiny (tests), wan-demo
// (the pixel-space demo architecture, trained by ditto train).
WanConfig wan_builtin_config(const std::string& name);
std::vector<std::string> wan_builtin_config_names();

// Every tensor under diffusers' names, in its order (825 for T2V-1.3B, 1095 for 14B).
std::vector<ParamSpec> wan_param_specs(const WanConfig& c);
// An official WanModel name -> diffusers' name (names that are already diffusers' pass through).
std::string wan_diffusers_name(const std::string& official);

// What Wan computes once per video and per step.
struct WanContext : DiTContext {
  at::Tensor context;             // [B, L_text, dim] the projected text (padding rows included)
  at::Tensor rope_cis;  // [L, 1, head_dim / 2] cos + i sin per token and pair, complex64 (complex128 for float64 runs)
  at::Tensor temb;                // [B, dim] e: the time embedding (the head's modulation input)
  at::Tensor e0;                  // [B, 6, dim] the time projection (the blocks' modulation input)
  std::vector<std::vector<at::Tensor>> modulation;  // per block: 6 x [B, 1, dim], views of its table
  std::vector<at::Tensor> modulation_tables;         // per block: [B, 6, dim]
  const at::Tensor& timestep_embedding() const override { return temb; }
};

class Wan : public DiT {
 public:
  Wan(WanConfig config, std::map<std::string, at::Tensor> weights);
  // A directory: config.json + diffusion_pytorch_model.safetensors (or shards with an index), under
  // diffusers' or the official names. Strict: every problem is reported together, by name.
  static Wan from_pretrained(const std::string& dir, const at::TensorOptions& options);
  static Wan random(const WanConfig& config, uint64_t seed, const at::TensorOptions& options);
  // Weights to train from (ditto train): diffusers' initialisation (Xavier-uniform linears, zero
  // biases, unit norms, randn / sqrt(dim) modulation tables), the output projection at zero.
  static std::map<std::string, at::Tensor> training_init(const WanConfig& config, uint64_t seed, const at::TensorOptions& options);

  const WanConfig& config() const { return config_; }
  const std::map<std::string, at::Tensor>& weights() const { return weights_; }
  void save_pretrained(const std::string& dir) const;  // diffusers' layout

  // --- DiT ---
  const ModelOutline& outline() const override { return outline_; }
  at::TensorOptions options() const override { return options_; }
  nlohmann::ordered_json describe() const override;
  std::unique_ptr<DiTContext> prepare(const DiTInputs& inputs) const override;
  void set_timestep(DiTContext& ctx, const at::Tensor& timestep) const override;
  std::string block_name(int block) const override { return "blocks." + std::to_string(block); }
  double unit_flops(int unit, const TokenGrid& grid, int64_t batch, int64_t caption_tokens) const override;
  double forward_flops(const TokenGrid& grid, int64_t batch, int64_t caption_tokens) const override;
  at::Tensor embed(const at::Tensor& tokens, int64_t begin, const DiTContext& ctx) const override;
  at::Tensor unit_residual(int unit, const at::Tensor& x, const DiTContext& ctx, AttentionSeam* seam) const override;
  // x + the gated branch in one addcmul (the branch read in the run's dtype).
  at::Tensor unit_apply(int unit, const at::Tensor& x, const DiTContext& ctx, AttentionSeam* seam) const override;
  at::Tensor head(const at::Tensor& x, const DiTContext& ctx) const override;
  // Wan predicts the flow toward the noise (noise - x0); the sampler moves toward the data.
  at::Tensor prediction(const at::Tensor& head_out) const override { return -head_out; }
  // TeaCache reads Wan's time projection e0 (TeaCache4Wan2.1 with use_ret_steps).
  at::Tensor probe(ProbeSignal signal, const at::Tensor& x, const DiTContext& ctx) const override;
  // Ulysses while every rank has a head; K/V all-gather beyond the head count.
  std::vector<std::string> parallel_layouts() const override { return {"ulysses", "kv-gather"}; }
  void check_layout(const std::string& layout, int ranks, const TokenGrid& grid) const override;
  void observe_context(const DiTContext& ctx, const Observer& observe) const override;

 private:
  // One attention's tensors and one block's, looked up once at construction (not per unit and step).
  struct AttentionWeights {
    at::Tensor q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, norm_q, norm_k;
  };
  struct BlockWeights {
    at::Tensor sst, norm2_w, norm2_b, fc1_w, fc1_b, fc2_w, fc2_b;
    AttentionWeights self_attn, cross_attn;
  };
  const at::Tensor& w(const std::string& name) const;
  std::pair<at::Tensor, at::Tensor> branch(int unit, const at::Tensor& x, const DiTContext& ctx, AttentionSeam* seam) const;
  at::Tensor attention(const AttentionWeights& aw, bool self, const at::Tensor& x, const WanContext& c,
                       AttentionSeam* seam) const;

  WanConfig config_;
  ModelOutline outline_;
  at::TensorOptions options_;
  std::map<std::string, at::Tensor> weights_;
  std::vector<BlockWeights> blocks_;
};

std::vector<UnitInfo> wan_units(int layers);
ModelOutline wan_outline(const WanConfig& config);

}  // namespace ditto
