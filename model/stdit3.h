// STDiT3 (Open-Sora 1.2 `opensora/models/stdit/stdit3.py`): parameters under the official names,
// strict checkpoint loading, and a forward pass split into the stages the sampler, the cache and
// sequence parallelism drive one by one (embed -> blocks -> final layer).
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"
#include "model/sequence_layout.h"

namespace ditto {

struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
};
// Every tensor of the official state dict, in its order (973 for STDiT3-XL/2).
std::vector<ParamSpec> stdit3_param_specs(const STDiT3Config& config);

// The arguments of the official forward. x: [B, Cin, T, H, W]; timestep: [B]; y: [B, 1, L, Cc]
// (or [B, L, Cc]); mask: [B, L] or [1, L] (nonzero = valid token; undefined = all valid);
// fps, height, width: [B] or [1] (height/width in pixels; only element 0 is used, as in the reference).
// frame_index (optional, read only with config.temporal_pos_embed): the frame each token frame
// shows, [T'] or [B, T']; default 0..T'-1. An image step trains single frames cut from clips with
// the index of the frame they came from.
struct ForwardArgs {
  at::Tensor x, timestep, y, mask, fps, height, width;
  at::Tensor frame_index;
};

// What a forward computes once and every block reads.
struct Conditioning {
  at::Tensor t;        // [B, C]    timestep + fps embedding (the final layer's modulation input)
  at::Tensor t_mlp;    // [B, 6C]   t_block(t): the blocks' adaLN-single input
  at::Tensor y;        // [B, L, C] projected caption tokens
  at::Tensor y_mask;   // [B, L] bool, undefined when every token is valid
  at::Tensor rope_cos, rope_sin;  // [T, D/2]
  at::Tensor temporal_pos;        // [B or 1, T, 1, C]; undefined without config.temporal_pos_embed
  at::Tensor frame_mlp;           // [B or 1, T, 6C] per-frame adaLN terms; undefined without config.frame_modulation
                                  // ([B, T, 6C] with config.frame_caption_modulation)
  int64_t grid_t = 0, grid_h = 0, grid_w = 0;  // token grid
  int64_t tx = 0, hx = 0, wx = 0;              // input latent size (for the crop)
  double pos_scale = 1;                        // sqrt(height * width) / input_sq_size (pixels)
  int64_t grid_s() const { return grid_h * grid_w; }
};

enum class BlockKind { Spatial, Temporal };

class STDiT3 {
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
  at::TensorOptions options() const { return options_; }
  const std::map<std::string, at::Tensor>& weights() const { return weights_; }
  // Writes config.json + model.safetensors (float32 unless keep_dtype) into dir.
  void save_pretrained(const std::string& dir) const;

  // Observer for --dump: called with a name and a tensor at each stage of forward().
  using Observer = std::function<void(const std::string&, const at::Tensor&)>;

  // The whole official forward: returns [B, out_channels, T, H, W] in float32 (float64 for a float64 model).
  at::Tensor forward(const ForwardArgs& args, const Observer& observe = nullptr) const;

  // --- stages ---
  // Everything computed once per forward from timestep, fps, caption and sizes. x is only read for its shape.
  Conditioning condition(const ForwardArgs& args) const;
  // The 2D sin-cos position embedding of the whole token grid: [S, C].
  at::Tensor pos_embedding(const Conditioning& cond) const;
  // Patch tokens (layers::patchify order) of spatial positions [s_begin, s_begin + S_r) -> [B, T', S_r, C],
  // plus the position embeddings (spatial, and temporal where the config has it).
  at::Tensor embed_tokens(const at::Tensor& tokens, int64_t s_begin, const Conditioning& cond) const;
  // One block on x [B, T, S_r, C] in space layout. `layout` (null on one rank) moves spatial
  // self-attention to the frame layout and back; everything else is local to the shard.
  at::Tensor block(BlockKind kind, int index, const at::Tensor& x, const Conditioning& cond,
                   SequenceLayout* layout = nullptr) const;
  // The gated self-attention residual of a block: gate_msa * attn(modulate(LN(x))).
  at::Tensor self_attention_residual(BlockKind kind, int index, const at::Tensor& x, const Conditioning& cond,
                                     SequenceLayout* layout = nullptr) const;
  // The cross-attention residual, given x after the self-attention residual was added.
  at::Tensor cross_attention_residual(BlockKind kind, int index, const at::Tensor& x, const Conditioning& cond) const;
  // The gated MLP residual, given x after the cross-attention residual was added.
  at::Tensor mlp_residual(BlockKind kind, int index, const at::Tensor& x, const Conditioning& cond) const;
  // modulate(LN(x), shift_msa, scale_msa): the self-attention's input (TeaCache's indicator at block 0).
  at::Tensor modulated_input(BlockKind kind, int index, const at::Tensor& x, const Conditioning& cond) const;
  // T2I final layer on x [B, T', S_r, C] -> output tokens [B, T', S_r, pt*ph*pw*Cout] (float32/float64).
  at::Tensor final_tokens(const at::Tensor& x, const Conditioning& cond) const;
  // Embedding, every block and the final layer on a shard of patch tokens (the sequence-parallel
  // forward; on one rank s_begin = 0 and layout = null).
  at::Tensor forward_tokens(const at::Tensor& tokens, int64_t s_begin, const Conditioning& cond,
                            SequenceLayout* layout = nullptr, const Observer& observe = nullptr) const;
  // The first in_channels of every output token (the sampler's prediction; pred_sigma's half dropped):
  // [..., pt*ph*pw*Cout] -> [..., pt*ph*pw*Cin].
  at::Tensor prediction_channels(const at::Tensor& out_tokens) const;

  // The learned null caption (y_embedding) shaped [1, 1, L, Cc].
  at::Tensor null_caption() const;

 private:
  struct BlockWeights {
    at::Tensor sst, qkv_w, qkv_b, q_norm, k_norm, proj_w, proj_b;
    at::Tensor cq_w, cq_b, ckv_w, ckv_b, cproj_w, cproj_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  const BlockWeights& block_weights(BlockKind kind, int index) const;
  const at::Tensor& w(const std::string& name) const;

  STDiT3Config config_;
  at::TensorOptions options_;
  std::map<std::string, at::Tensor> weights_;
  std::vector<BlockWeights> spatial_, temporal_;
};

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
