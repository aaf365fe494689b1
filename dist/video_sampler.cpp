// One video's sampling loop over sequence- and CFG-parallel groups (see video_sampler.h).
#include "dist/video_sampler.h"

#include <memory>

#include "dist/dsp_layout.h"
#include "dist/parallel_layout.h"
#include "model/error.h"
#include "model/layers.h"

namespace ditto {

at::Tensor sample_video(const STDiT3& model, const Sampler& sampler, const VideoRequest& req, const VideoGroups& g,
                        const StepFn& on_step, const TokenForward& forward) {
  const STDiT3Config& cfg = model.config();
  const at::Device dev = model.options().device();
  const auto state_type = model.options().dtype().toScalarType() == at::kDouble ? at::kDouble : at::kFloat;
  const int P = g.sp ? g.sp->size() : 1, r = g.sp ? g.sp->rank() : 0;
  const bool cfg_parallel = g.cfg && g.cfg->size() > 1;
  const bool guided = guidance_enabled(req.cfg_scale);
  if (cfg_parallel && g.cfg->size() != 2) fail("a CFG-parallel group has 2 ranks, not ", g.cfg->size());
  if (cfg_parallel && !guided) fail("--cfg-parallel 2 needs guidance: --cfg-scale must not be 1");

  // The latent in token form, this rank's spatial positions only.
  const at::Tensor z0 = req.z0.to(state_type);
  const at::Tensor tokens = layers::patchify(z0, cfg.patch_size);  // [1, T', S, K]
  const int64_t grid_t = tokens.size(1), grid_s = tokens.size(2);
  check_sequence_layout(P, grid_t, grid_s);
  const Split positions(grid_s, P);
  auto shard = [&](const at::Tensor& t) {
    return t.narrow(2, positions.offsets[r], positions.counts[r]).contiguous().to(dev);
  };
  at::Tensor z = shard(tokens);
  // Padded pixels (sizes not divisible by the patch) stay zero, as the reference re-pads every step.
  const auto& p = cfg.patch_size;
  const bool padded = z0.size(2) % p[0] || z0.size(3) % p[1] || z0.size(4) % p[2];
  const at::Tensor valid = padded ? shard(layers::patchify(at::ones_like(z0), cfg.patch_size)) : at::Tensor();
  std::unique_ptr<DspLayout> layout;
  if (P > 1) layout = std::make_unique<DspLayout>(*g.sp, grid_t, grid_s);

  // The model arguments: this rank's branch (CFG-parallel) or both branches batched.
  const at::Tensor null_y = model.null_caption().to(at::kFloat).cpu();
  if (req.caption_y.sizes() != null_y.sizes())
    fail("the caption embedding is ", req.caption_y.sizes(), ", the model's null caption ", null_y.sizes());
  // The unconditional branch: the null caption, or a negative caption with its own mask.
  const bool negative = req.negative_y.defined();
  if (negative && (req.negative_y.sizes() != null_y.sizes() || !req.negative_mask.defined() ||
                   req.negative_mask.sizes() != req.caption_mask.sizes()))
    fail("the negative caption is ", req.negative_y.sizes(), " with mask ",
         req.negative_mask.defined() ? req.negative_mask.sizes() : at::IntArrayRef{}, ", the caption ",
         req.caption_y.sizes(), " with mask ", req.caption_mask.sizes());
  if (negative && !guided) fail("a negative caption needs guidance (cfg scale != 1): there is no unconditional branch to put it in");
  const at::Tensor uncond_y = negative ? req.negative_y.to(at::kFloat).cpu() : null_y;
  const at::Tensor uncond_mask = negative ? req.negative_mask : req.caption_mask;
  ForwardArgs base;
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

  GuidedFn guided_prediction = [&](const at::Tensor& zt, float t, int step) {
    ForwardArgs a = base;
    a.timestep = at::full({batch}, t, at::TensorOptions().dtype(at::kFloat).device(dev));
    const Conditioning c = model.condition(a);
    at::Tensor in = batch == 2 && !cfg_parallel ? at::cat({zt, zt}, 0) : zt;
    at::Tensor out = forward ? forward(in, positions.offsets[r], c, layout.get(), step)
                             : model.forward_tokens(in, positions.offsets[r], c, layout.get());
    at::Tensor pred = model.prediction_channels(out);
    if (cfg_parallel) {  // one exchange of predictions per step: [cond; uncond] on both ranks
      std::vector<at::Tensor> both = {at::empty_like(pred), at::empty_like(pred)};
      g.cfg->all_gather(pred, both);
      pred = at::cat(both, 0);
    }
    if (guided) pred = cfg_combine(pred, req.cfg_scale);
    return valid.defined() ? pred * valid : pred;
  };
  at::Tensor zf = sample(sampler, z, guided_prediction, on_step);

  at::Tensor full = P > 1 ? all_gather_cat(*g.sp, zf, 2) : zf;
  return layers::unpatchify(full, cfg.patch_size, cfg.in_channels, grid_t, (z0.size(3) + p[1] - 1) / p[1],
                            (z0.size(4) + p[2] - 1) / p[2], z0.size(2), z0.size(3), z0.size(4));
}

}  // namespace ditto
