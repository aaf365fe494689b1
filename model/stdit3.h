// STDiT3 (Open-Sora 1.2 `opensora/models/stdit/stdit3.py`) as a DiT: parameters under the official
// names, strict checkpoint loading, per-video preparation apart from the per-step conditioning, and
// the forward split into the units the sampler, the cache and sequence parallelism drive one by one.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/dit.h"

namespace ditto {

// Every tensor of the official state dict, in its order (973 for STDiT3-XL/2).
std::vector<ParamSpec> stdit3_param_specs(const STDiT3Config& config);

// The official forward's arguments (see DiTInputs). fps, height and width are required; height and
// width are pixels and only element 0 is used, as in the reference. frame_index is read only with
// config.temporal_pos_embed or frame_modulation; default 0..T'-1 (an image step trains single frames
// cut from clips with the index of the frame they came from).
using ForwardArgs = DiTInputs;

// STDiT3's per-video context: what prepare() computes once per video, and the step's conditioning
// that set_timestep() writes.
struct Conditioning : DiTContext {
  // --- per video ---
  at::Tensor y;        // [B, L, C] projected caption tokens
  at::Tensor y_mask;   // [B, L] bool, undefined when every token is valid
  at::Tensor fps_emb;  // [B, C]   the fps embedding (added to the timestep embedding)
  at::Tensor rope_cos, rope_sin;  // [T, D/2]
  at::Tensor pos_table;           // [S, C] the 2D sin-cos position embedding of the whole token grid
  at::Tensor temporal_pos;        // [B or 1, T, 1, C]; undefined without config.temporal_pos_embed
  at::Tensor frame_embed;         // [B or 1, T, C] the frames' 1D sin-cos (config.frame_modulation)
  at::Tensor caption_mean;        // [B, C] mean valid caption token (config.frame_caption_modulation)
  double pos_scale = 1;           // sqrt(height * width) / input_sq_size (pixels)
  // --- per step ---
  at::Tensor t;        // [B, C]    timestep + fps embedding (the final layer's modulation input)
  at::Tensor t_mlp;    // [B, 6C]   t_block(t): the blocks' adaLN-single input
  at::Tensor frame_mlp;  // [B or 1, T, 6C] per-frame adaLN terms; undefined without config.frame_modulation
  // Per block (execution order): its 6 adaLN-single tensors [B, 1 or T, 1, C] (shift/scale/gate for
  // self-attention, then for the MLP).
  std::vector<std::vector<at::Tensor>> modulation;
  std::vector<at::Tensor> modulation_tables;  // per block [B, 6, 1 or T, 1, C]: modulation's storage

  const at::Tensor& timestep_embedding() const override { return t; }
};

enum class BlockKind { Spatial, Temporal };

class STDiT3 : public DiT {
 public:
  // weights: every name of stdit3_param_specs, already in the run's dtype and device.
  STDiT3(STDiT3Config config, std::map<std::string, at::Tensor> weights);

  // A Hugging Face-style directory: config.json + model.safetensors (or shards listed in
  // model.safetensors.index.json). Strict: all problems are reported together, by name.
  static STDiT3 from_pretrained(const std::string& dir, const at::TensorOptions& options);
  // Random weights with no zero layer (for benchmarks and tests), deterministic from the seed.
  static STDiT3 random(const STDiT3Config& config, uint64_t seed, const at::TensorOptions& options);
  // Open-Sora's initialisation for training from scratch (STDiT3.initialize_weights): Xavier-uniform
  // linears with zero biases, N(0, 0.02) timestep/caption/fps MLPs, and zeroed output layers (final
  // layer, every cross-attention projection, the temporal blocks' attention projection and MLP
  // fc2, the fps MLP's output), so every residual branch starts silent.
  static STDiT3 training_init(const STDiT3Config& config, uint64_t seed, const at::TensorOptions& options);

  const STDiT3Config& config() const { return config_; }
  const std::map<std::string, at::Tensor>& weights() const { return weights_; }
  // Writes config.json + model.safetensors (float32 unless keep_dtype) into dir.
  void save_pretrained(const std::string& dir) const;

  // --- DiT ---
  const ModelOutline& outline() const override { return outline_; }
  at::TensorOptions options() const override { return options_; }
  nlohmann::ordered_json describe() const override;
  std::unique_ptr<DiTContext> prepare(const DiTInputs& inputs) const override;
  void set_timestep(DiTContext& ctx, const at::Tensor& timestep) const override;
  std::string block_name(int block) const override;
  double unit_flops(int unit, const TokenGrid& grid, int64_t batch, int64_t caption_tokens) const override;
  double forward_flops(const TokenGrid& grid, int64_t batch, int64_t caption_tokens) const override;
  at::Tensor embed(const at::Tensor& tokens, int64_t begin, const DiTContext& ctx) const override;
  at::Tensor unit_residual(int unit, const at::Tensor& x, const DiTContext& ctx, AttentionSeam* seam) const override;
  // On a GPU x + the gated branch in one addcmul (one rounding where the reference rounds twice); on the
  // CPU the reference's x + unit_residual.
  at::Tensor unit_apply(int unit, const at::Tensor& x, const DiTContext& ctx, AttentionSeam* seam) const override;
  at::Tensor head(const at::Tensor& x, const DiTContext& ctx) const override;
  at::Tensor prediction(const at::Tensor& head_out) const override { return prediction_channels(head_out); }
  at::Tensor probe(ProbeSignal signal, const at::Tensor& x, const DiTContext& ctx) const override;
  std::vector<std::string> parallel_layouts() const override { return {"dsp"}; }
  // DSP: every rank holds at least one spatial position in the resting layout (frames may run out).
  void check_layout(const std::string& layout, int ranks, const TokenGrid& grid) const override;
  // The learned null caption (y_embedding) shaped [1, 1, L, Cc].
  at::Tensor null_caption() const override;

  // t, t_mlp and the 2D position embedding (pos_emb).
  void observe_context(const DiTContext& ctx, const Observer& observe) const override;

  // --- stages ---
  // The per-video part of the conditioning (caption, masks, position tables); x is read for its shape.
  Conditioning prepare_conditioning(const ForwardArgs& args) const;
  // Both parts at once: prepare_conditioning + the step conditioning of args.timestep.
  Conditioning condition(const ForwardArgs& args) const;
  // The 2D sin-cos position embedding of the whole token grid: [S, C].
  at::Tensor pos_embedding(const Conditioning& cond) const;
  // Patch tokens (layers::patchify order) of spatial positions [s_begin, s_begin + S_r) -> [B, T', S_r, C],
  // plus the position embeddings (spatial, and temporal where the config has it).
  at::Tensor embed_tokens(const at::Tensor& tokens, int64_t s_begin, const Conditioning& cond) const;
  // One block on x [B, T, S_r, C] in space layout. `seam` (null on one rank) moves spatial
  // self-attention to the frame layout and back; everything else is local to the shard.
  at::Tensor block(BlockKind kind, int index, const at::Tensor& x, const Conditioning& cond,
                   AttentionSeam* seam = nullptr) const;
  // The gated self-attention residual of a block: gate_msa * attn(modulate(LN(x))); with `base`,
  // base + that in one pass (the fused step, unit_apply on a GPU).
  at::Tensor self_attention_residual(BlockKind kind, int index, const at::Tensor& x, const Conditioning& cond,
                                     AttentionSeam* seam = nullptr, const at::Tensor& base = {}) const;
  // The cross-attention residual, given x after the self-attention residual was added.
  at::Tensor cross_attention_residual(BlockKind kind, int index, const at::Tensor& x, const Conditioning& cond) const;
  // The gated MLP residual, given x after the cross-attention residual was added (with `base`, as above).
  at::Tensor mlp_residual(BlockKind kind, int index, const at::Tensor& x, const Conditioning& cond,
                          const at::Tensor& base = {}) const;
  // modulate(LN(x), shift_msa, scale_msa): the self-attention's input (TeaCache's indicator at block 0).
  at::Tensor modulated_input(BlockKind kind, int index, const at::Tensor& x, const Conditioning& cond) const;
  // T2I final layer on x [B, T', S_r, C] -> output tokens [B, T', S_r, pt*ph*pw*Cout] (float32/float64).
  at::Tensor final_tokens(const at::Tensor& x, const Conditioning& cond) const;
  // The first in_channels of every output token (the sampler's prediction; pred_sigma's half dropped):
  // [..., pt*ph*pw*Cout] -> [..., pt*ph*pw*Cin].
  at::Tensor prediction_channels(const at::Tensor& out_tokens) const;

 private:
  struct BlockWeights {
    at::Tensor sst, qkv_w, qkv_b, q_norm, k_norm, proj_w, proj_b;
    at::Tensor cq_w, cq_b, ckv_w, ckv_b, cproj_w, cproj_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  const BlockWeights& block_weights(BlockKind kind, int index) const;
  const at::Tensor& w(const std::string& name) const;
  const std::vector<at::Tensor>& modulation(BlockKind kind, int index, const Conditioning& c) const;

  STDiT3Config config_;
  ModelOutline outline_;
  at::TensorOptions options_;
  std::map<std::string, at::Tensor> weights_;
  std::vector<BlockWeights> spatial_, temporal_;
};

// The unit table of a depth-`depth` STDiT3: per block pair i, spatial then temporal block, each with
// self-attention, cross-attention and MLP (3 x 2 x depth units).
std::vector<UnitInfo> stdit3_units(int depth);
// A configuration's outline (family "stdit3", its shape and units, config.json's fields).
ModelOutline stdit3_outline(const STDiT3Config& config);

// Reads a checkpoint directory's tensors strictly against the config's specs and converts them to
// `options`; every missing, unexpected, wrong-shape or non-float tensor is listed in one Error.
std::map<std::string, at::Tensor> load_checkpoint(const std::string& dir, const STDiT3Config& config,
                                                  const at::TensorOptions& options);

// FLOPs (multiply-adds x2) of one unit of one block over a whole video's token grid: what caching
// a unit saves, and the parts of the performance model.
struct UnitFlops {
  double spatial_attn = 0, temporal_attn = 0, cross_attn = 0, mlp = 0;
};
UnitFlops stdit3_unit_flops(const STDiT3Config& config, int64_t batch, int64_t grid_t, int64_t grid_s,
                            int64_t caption_tokens);

// FLOPs of one forward for a token grid, batch B and L caption tokens: the performance model's
// figure for model FLOP utilisation.
double stdit3_forward_flops(const STDiT3Config& config, int64_t batch, int64_t grid_t, int64_t grid_s,
                            int64_t caption_tokens);

}  // namespace ditto
