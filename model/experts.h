// A model of several experts of one architecture that take turns by noise level (Wan 2.2 A14B: a
// high-noise expert for t >= boundary, a low-noise one below). It is one DiT to the layers above:
// every piece of a forward runs on the expert that the context has selected; each expert prepares
// its own per-video conditioning (its own caption projection) once per video.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model/dit.h"

namespace ditto {

class ExpertSwitch : public DiT {
 public:
  // experts: the same architecture (same family and shape), expert 0 first; boundary in timestep
  // units (875 for Wan 2.2).
  ExpertSwitch(std::vector<std::unique_ptr<DiT>> experts, double boundary);
  const ModelOutline& outline() const override { return outline_; }
  at::TensorOptions options() const override { return experts_.front()->options(); }
  nlohmann::ordered_json describe() const override;
  const DiT& expert(int i) const { return *experts_.at(i); }

  std::unique_ptr<DiTContext> prepare(const DiTInputs& inputs) const override;
  void set_timestep(DiTContext& ctx, const at::Tensor& timestep) const override;
  void select_expert(DiTContext& ctx, int expert) const override;

  std::string block_name(int block) const override { return experts_.front()->block_name(block); }
  double unit_flops(int unit, const TokenGrid& grid, int64_t batch, int64_t caption_tokens) const override {
    return experts_.front()->unit_flops(unit, grid, batch, caption_tokens);
  }
  double forward_flops(const TokenGrid& grid, int64_t batch, int64_t caption_tokens) const override {
    return experts_.front()->forward_flops(grid, batch, caption_tokens);
  }
  at::Tensor embed(const at::Tensor& tokens, int64_t begin, const DiTContext& ctx) const override;
  at::Tensor unit_residual(int unit, const at::Tensor& x, const DiTContext& ctx, AttentionSeam* seam) const override;
  at::Tensor unit_apply(int unit, const at::Tensor& x, const DiTContext& ctx, AttentionSeam* seam) const override;
  at::Tensor head(const at::Tensor& x, const DiTContext& ctx) const override;
  at::Tensor prediction(const at::Tensor& head_out) const override { return experts_.front()->prediction(head_out); }
  at::Tensor probe(ProbeSignal signal, const at::Tensor& x, const DiTContext& ctx) const override;
  std::vector<std::string> parallel_layouts() const override { return experts_.front()->parallel_layouts(); }
  void check_layout(const std::string& layout, int ranks, const TokenGrid& grid) const override {
    experts_.front()->check_layout(layout, ranks, grid);
  }
  at::Tensor null_caption() const override { return experts_.front()->null_caption(); }
  void observe_context(const DiTContext& ctx, const Observer& observe) const override;

 private:
  std::vector<std::unique_ptr<DiT>> experts_;
  ModelOutline outline_;
};

// The outline of a model made of `experts` (their outlines, expert 0 first): expert 0's, with the
// expert count and boundary; an Error when the experts differ in family or shape.
ModelOutline expert_outline(const std::vector<ModelOutline>& experts, double boundary, const std::string& where);

}  // namespace ditto
