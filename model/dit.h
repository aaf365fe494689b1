// The interface every video DiT family implements (STDiT3 today): per-video preparation apart from
// the per-step timestep conditioning, the skippable units the model is made of, and the pieces the
// sampler, the cache runner and sequence parallelism drive one by one (embed -> units -> head). The
// block loop is written once here and serves the plain forward and the cache runner alike.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/attention_seam.h"

namespace ditto {

// A model forward's inputs under the official argument names. x: [B, Cin, T, H, W] (prepare() reads
// only its shape); timestep: [B]; y: caption tokens [B, 1, L, Cc] or [B, L, Cc]; mask: [B, L] or
// [1, L] (nonzero = valid; undefined = all valid). Open-Sora's size and rate conditioning: fps,
// height, width ([B] or [1], pixels). frame_index (optional): the frame each token frame shows,
// [T'] or [B, T']. A family reads what its model takes and refuses what it does not.
struct DiTInputs {
  at::Tensor x, timestep, y, mask, fps, height, width;
  at::Tensor frame_index;
};

// The patch-token grid of a video: T' x H' x W' tokens (latents zero-padded to whole patches), and
// the latent size it came from (for the crop back).
struct TokenGrid {
  int64_t t = 0, h = 0, w = 0;
  int64_t tx = 0, hx = 0, wx = 0;
  int64_t s() const { return h * w; }  // tokens per frame
  int64_t tokens() const { return t * h * w; }
};

// What a model computes once per video (caption projection and masks, position tables: everything
// that does not depend on the timestep) and, updated in place by DiT::set_timestep, the step's
// timestep conditioning. Each family keeps its own; the layers above model/ treat it as opaque.
class DiTContext {
 public:
  virtual ~DiTContext() = default;
  TokenGrid grid;
  int64_t batch = 0;           // the forward's batch (2 for batched CFG)
  int64_t caption_tokens = 0;  // caption tokens the cross-attention reads
  // The step's timestep embedding [B, C] (what calibration layers of reused units read).
  virtual const at::Tensor& timestep_embedding() const = 0;
};

// What a unit does: the cache policies address units by role (PAB's ranges), the profile groups them.
enum class UnitRole { SpatialAttention, TemporalAttention, FullAttention, CrossAttention, Mlp };
const char* unit_role_name(UnitRole role);  // "spatial_attn", "temporal_attn", "attn", "cross_attn", "mlp"
bool is_self_attention(UnitRole role);

// A unit is what can be skipped: one residual branch of one block. Units run in index order; a
// block's units are consecutive.
struct UnitInfo {
  std::string name;  // the official module name, e.g. "spatial_blocks.3.attn"
  UnitRole role;
  AttentionScope scope = AttentionScope::Video;  // self-attention units: what one sequence holds
  int block = 0;  // the block, in execution order
  int group = 0;  // the layer index its block shares with others (STDiT3: the spatial/temporal pair)
  // For a video (DiT::describe_units): FLOPs over the whole token grid and the forward's batch, and
  // the bytes this rank sends for it under the run's layout.
  double flops = 0;
  int64_t bytes = 0;
};

// Cheap signals the threshold policies read before deciding a step.
enum class ProbeSignal {
  TeaCache,  // TeaCache's indicator (STDiT3: the modulated input of the first block's self-attention)
};

// The sizes every family has.
struct DiTShape {
  int in_channels = 0;   // latent channels the model reads and predicts
  int out_channels = 0;  // channels of the head's output (learned-sigma models: twice in_channels)
  std::array<int, 3> patch{1, 1, 1};
  int hidden_size = 0, num_heads = 0, depth = 0;  // depth: layers (STDiT3: spatial/temporal pairs)
  int caption_tokens = 0, caption_channels = 0;   // the text length and width the model reads
};

// A model as its configuration describes it, without weights: enough to validate a job, build cache
// policies, pick defaults and lay out a video before anything is loaded.
struct ModelOutline {
  std::string family;            // "stdit3"
  DiTShape shape;
  std::vector<UnitInfo> units;   // static: flops and bytes are 0
  nlohmann::ordered_json config; // the family's own configuration (its config.json fields)
  // Models of several experts of one architecture that take turns by noise level (Wan 2.2 A14B):
  // expert 0 denoises the steps with t >= expert_boundary, expert 1 the rest.
  int experts = 1;
  double expert_boundary = 0;
};

// Which expert denoises each step: t >= boundary -> 0, else 1 (NaN boundary: the model's). All 0 for
// a single model.
std::vector<int> experts_per_step(const ModelOutline& model, const std::vector<float>& timesteps, double boundary);

class DiT {
 public:
  virtual ~DiT() = default;
  virtual const ModelOutline& outline() const = 0;
  std::string family() const { return outline().family; }
  const DiTShape& shape() const { return outline().shape; }
  virtual at::TensorOptions options() const = 0;
  // The model's configuration for logs and metrics.json.
  virtual nlohmann::ordered_json describe() const = 0;

  // --- per video and per step ---
  virtual std::unique_ptr<DiTContext> prepare(const DiTInputs& inputs) const = 0;
  // timestep: [B] on the model's device; writes the step's conditioning into ctx.
  virtual void set_timestep(DiTContext& ctx, const at::Tensor& timestep) const = 0;
  // A model of several experts: the expert ctx's next steps run (before set_timestep). A single
  // model has only expert 0.
  virtual void select_expert(DiTContext& ctx, int expert) const;

  // --- the units ---
  const std::vector<UnitInfo>& units() const { return outline().units; }
  int unit_count() const { return static_cast<int>(units().size()); }
  int block_count() const { return units().empty() ? 0 : units().back().block + 1; }
  virtual std::string block_name(int block) const = 0;
  // FLOPs (multiply-adds x 2) of one unit over a whole token grid for a batch and caption length.
  virtual double unit_flops(int unit, const TokenGrid& grid, int64_t batch, int64_t caption_tokens) const = 0;
  // units() with each unit's FLOPs for ctx's video and its bytes under `seam` (null: one rank).
  std::vector<UnitInfo> describe_units(const DiTContext& ctx, const AttentionSeam* seam) const;
  // FLOPs of one whole forward (units, embedding, head, caption projection): the performance model's
  // figure for model FLOP utilisation.
  virtual double forward_flops(const TokenGrid& grid, int64_t batch, int64_t caption_tokens) const = 0;

  // --- the pieces of a forward, on this rank's share of the tokens ---
  // Patch tokens [B, T', n, K] of this rank (positions [begin, begin + n) along dim 2) -> [B, T', n, C].
  virtual at::Tensor embed(const at::Tensor& tokens, int64_t begin, const DiTContext& ctx) const = 0;
  // What unit `unit` adds to x (the residual branch), in the resting layout.
  virtual at::Tensor unit_residual(int unit, const at::Tensor& x, const DiTContext& ctx, AttentionSeam* seam) const = 0;
  // x + unit_residual(unit, x): the plain forward's step, which a family may fuse (the gate and the
  // add in one pass); the caching runner, which keeps residuals, calls unit_residual.
  virtual at::Tensor unit_apply(int unit, const at::Tensor& x, const DiTContext& ctx, AttentionSeam* seam) const {
    return x + unit_residual(unit, x, ctx, seam);
  }
  // The final layer: x -> output tokens [..., pt*ph*pw*out_channels] (float32; float64 for a float64 model).
  virtual at::Tensor head(const at::Tensor& x, const DiTContext& ctx) const = 0;
  // The sampler's prediction from the head's output: [..., pt*ph*pw*in_channels].
  virtual at::Tensor prediction(const at::Tensor& head_out) const = 0;
  // A tensor the caller may keep across steps (never one the next set_timestep rewrites in place).
  virtual at::Tensor probe(ProbeSignal signal, const at::Tensor& x, const DiTContext& ctx) const = 0;

  // --- parallelism and conditioning defaults ---
  // Sequence-parallel layouts the model runs under ("dsp" for spatial-temporal attention).
  virtual std::vector<std::string> parallel_layouts() const = 0;
  // Throws an Error saying why `ranks` ranks cannot share a video of this grid under `layout`.
  virtual void check_layout(const std::string& layout, int ranks, const TokenGrid& grid) const = 0;
  // The first of parallel_layouts() that `ranks` ranks can run for this grid; when none can, the
  // first one's Error.
  std::string layout_for(int ranks, const TokenGrid& grid) const;
  // The learned null caption [1, 1, L, Cc] for the unconditional branch, or undefined when the
  // unconditional branch reads an encoded empty prompt.
  virtual at::Tensor null_caption() const { return {}; }

  // Observer for --dump: a name and a tensor at each stage of a forward.
  using Observer = std::function<void(const std::string&, const at::Tensor&)>;
  // The plain forward on this rank's tokens: embed, every unit, head.
  at::Tensor forward_tokens(const at::Tensor& tokens, int64_t begin, const DiTContext& ctx,
                            AttentionSeam* seam = nullptr, const Observer& observe = nullptr) const;
  // The whole official forward on one rank: [B, out_channels, T, H, W] in float32 (float64 for a
  // float64 model). `observe` sees the conditioning, the embedded tokens and every block's output.
  at::Tensor forward(const DiTInputs& inputs, const Observer& observe = nullptr) const;
  // What --dump shows of a context before the blocks (the family's own conditioning tensors).
  virtual void observe_context(const DiTContext& ctx, const Observer& observe) const {}
};

// The one block loop: for each unit u in [first, last), x = x + residual(u, x) (or x = apply(u, x) when
// set: the add fused by the family); after_block (optional) sees each finished block's output.
struct UnitLoop {
  std::function<at::Tensor(int unit, const at::Tensor& x)> residual;
  std::function<at::Tensor(int unit, const at::Tensor& x)> apply;
  std::function<void(int block, const at::Tensor& x)> after_block;
};
at::Tensor run_units(const std::vector<UnitInfo>& units, at::Tensor x, int first, int last, const UnitLoop& loop);

// Writes `value` into `slot`'s storage when slot already holds a tensor of its shape, dtype and
// device, else makes slot a contiguous `value`; true when the storage was kept. A context's timestep
// tensors keep their storage from step to step this way: a captured CUDA graph of the units reads
// them where they were at capture (model/cuda_graph.h).
bool assign_in_place(at::Tensor& slot, const at::Tensor& value);
// One block's adaLN table [B, 6, ...] kept in place in tables[i], its 6 slices (along dim 1, each with
// a unit dim 1 re-added when `keep_dim`) in views[i], rebuilt only when the table was reallocated.
void assign_modulation(std::vector<at::Tensor>& tables, std::vector<std::vector<at::Tensor>>& views, size_t i,
                       const at::Tensor& table, bool keep_dim);

// Patch grid of a latent [.., T, H, W] for a patch size (zero-padded to whole patches).
TokenGrid token_grid(int64_t t, int64_t h, int64_t w, const std::array<int, 3>& patch);

}  // namespace ditto
