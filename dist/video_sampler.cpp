// One video's sampling loop over sequence- and CFG-parallel groups (see video_sampler.h).
#include "dist/video_sampler.h"

#include <memory>

#include "model/cuda_graph.h"
#include "model/error.h"
#include "model/layers.h"

namespace ditto {

at::Tensor sample_video(const DiT& model, Sampler& sampler, const VideoRequest& req, const VideoGroups& g,
                        const StepFn& on_step, const TokenForward& forward) {
  const DiTShape& shape = model.shape();
  const at::Device dev = model.options().device();
  const auto state_type = model.options().dtype().toScalarType() == at::kDouble ? at::kDouble : at::kFloat;
  const int P = g.sp ? g.sp->size() : 1;
  const bool cfg_parallel = g.cfg && g.cfg->size() > 1;
  const bool two_scales = !std::isnan(req.cfg_scale_2);
  if (two_scales && model.outline().experts < 2)
    fail("a second guidance scale is for a model of two experts (Wan 2.2); this model has one");
  const bool guided = guidance_enabled(req.cfg_scale) || (two_scales && guidance_enabled(req.cfg_scale_2));
  if (!req.experts.empty() && req.experts.size() != sampler.timesteps().size())
    fail("the request names the experts of ", req.experts.size(), " steps, the sampler runs ", sampler.timesteps().size());
  if (model.outline().experts > 1 && req.experts.empty())
    fail("a model of experts samples with the expert of every step (experts_per_step)");
  if (cfg_parallel && g.cfg->size() != 2) fail("a CFG-parallel group has 2 ranks, not ", g.cfg->size());
  if (cfg_parallel && !guided) fail("--cfg-parallel 2 needs guidance: --cfg-scale must not be 1");

  // The latent in token form, this rank's share only.
  const at::Tensor z0 = req.z0.to(state_type);
  const at::Tensor tokens = layers::patchify(z0, shape.patch);  // [1, T', S, K]
  const TokenGrid grid = token_grid(z0.size(2), z0.size(3), z0.size(4), shape.patch);
  std::unique_ptr<SequenceParallel> layout;
  if (P > 1) layout = make_sequence_parallel(model.layout_for(P, grid), *g.sp, grid, shape.num_heads);
  auto shard = [&](const at::Tensor& t) { return (layout ? layout->shard(t) : t).to(dev); };
  const int64_t begin = layout ? layout->shard_begin() : 0;
  at::Tensor z = shard(tokens);
  // Padded pixels (sizes not divisible by the patch) stay zero, as the reference re-pads every step.
  const auto& p = shape.patch;
  const bool padded = z0.size(2) % p[0] || z0.size(3) % p[1] || z0.size(4) % p[2];
  const at::Tensor valid = padded ? shard(layers::patchify(at::ones_like(z0), shape.patch)) : at::Tensor();

  // The model arguments: this rank's branch (CFG-parallel) or both branches batched.
  const std::vector<int64_t> caption_shape = {1, 1, shape.caption_tokens, shape.caption_channels};
  if (req.caption_y.sizes() != at::IntArrayRef(caption_shape))
    fail("the caption embedding is ", req.caption_y.sizes(), ", the model reads ", at::IntArrayRef(caption_shape));
  // The unconditional branch: a negative caption with its own mask, or the model's null caption.
  const bool negative = req.negative_y.defined();
  if (negative && (req.negative_y.sizes() != req.caption_y.sizes() || !req.negative_mask.defined() ||
                   req.negative_mask.sizes() != req.caption_mask.sizes()))
    fail("the negative caption is ", req.negative_y.sizes(), " with mask ",
         req.negative_mask.defined() ? req.negative_mask.sizes() : at::IntArrayRef{}, ", the caption ",
         req.caption_y.sizes(), " with mask ", req.caption_mask.sizes());
  if (negative && !guided) fail("a negative caption needs guidance (cfg scale != 1): there is no unconditional branch to put it in");
  at::Tensor uncond_y = negative ? req.negative_y.to(at::kFloat).cpu() : at::Tensor();
  if (guided && !negative) {
    uncond_y = model.null_caption();
    if (!uncond_y.defined())
      fail("the model has no learned null caption: guidance needs an unconditional caption (a negative or empty prompt)");
    uncond_y = uncond_y.to(at::kFloat).cpu();
  }
  const at::Tensor uncond_mask = negative ? req.negative_mask : req.caption_mask;
  DiTInputs base;
  if (cfg_parallel) {
    base.y = g.cfg->rank() == 0 ? req.caption_y : uncond_y;
    base.mask = g.cfg->rank() == 0 ? req.caption_mask : uncond_mask;
  } else {
    base.y = guided ? at::cat({req.caption_y, uncond_y}, 0) : req.caption_y;
    base.mask = guided && negative ? at::cat({req.caption_mask.cpu(), uncond_mask.cpu()}, 0) : req.caption_mask;
  }
  const int64_t batch = base.y.size(0);
  auto on_dev = [&](float v) { return at::full({1}, v, at::TensorOptions().dtype(at::kFloat).device(dev)); };
  base.y = base.y.to(dev);
  base.mask = base.mask.to(dev);
  base.fps = on_dev(req.fps);
  base.height = on_dev(req.height);
  base.width = on_dev(req.width);
  base.x = z0.to(dev).expand({batch, -1, -1, -1, -1});  // read for its shape only
  // Everything that does not depend on the timestep, once per video.
  const std::unique_ptr<DiTContext> ctx = model.prepare(base);
  // The plain forward as a CUDA graph where it can be (--cuda-graphs); a plugged-in forward decides itself.
  std::unique_ptr<ForwardGraphs> graphs;
  if (!forward && graph_refusal(dev, P, "none").empty()) graphs = std::make_unique<ForwardGraphs>(model);

  GuidedFn guided_prediction = [&](const at::Tensor& zt, float t, int step) {
    const int expert = req.experts.empty() ? 0 : req.experts[step];
    if (model.outline().experts > 1) model.select_expert(*ctx, expert);
    model.set_timestep(*ctx, at::full({batch}, t, at::TensorOptions().dtype(at::kFloat).device(dev)));
    at::Tensor in = batch == 2 && !cfg_parallel ? at::cat({zt, zt}, 0) : zt;
    at::Tensor out = forward  ? forward(in, begin, *ctx, layout.get(), step)
                     : graphs ? graphs->forward(in, begin, *ctx, expert)
                              : model.forward_tokens(in, begin, *ctx, layout.get());
    at::Tensor pred = model.prediction(out);
    if (cfg_parallel) {  // one exchange of predictions per step: [cond; uncond] on both ranks
      std::vector<at::Tensor> both = {at::empty_like(pred), at::empty_like(pred)};
      g.cfg->all_gather(pred, both);
      pred = at::cat(both, 0);
    }
    if (guided) pred = cfg_combine(pred, expert > 0 && two_scales ? req.cfg_scale_2 : req.cfg_scale);
    return valid.defined() ? pred * valid : pred;
  };
  at::Tensor zf = sample(sampler, z, guided_prediction, on_step);

  at::Tensor full = layout ? layout->gather(zf) : zf;
  return layers::unpatchify(full, shape.patch, shape.in_channels, grid.t, grid.h, grid.w, grid.tx, grid.hx, grid.wx);
}

void add_benchmark_unconditional(VideoRequest& req, const DiT& model) {
  if (req.negative_y.defined() || model.null_caption().defined() || !req.caption_y.defined()) return;
  req.negative_y = at::zeros_like(req.caption_y);
  req.negative_mask = at::zeros_like(req.caption_mask);
  req.negative_mask.narrow(1, 0, 1).fill_(1);
}

}  // namespace ditto
