// The seam between a model's attention and sequence parallelism: the model asks for attention over a
// scope, and the run's layout strategy (dist/: DSP's frame/space switch; Ulysses' sequence <-> head
// exchange) supplies the communication. On one rank there is no seam and nothing moves.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>

namespace ditto {

// Which tokens one attention sequence holds.
enum class AttentionScope {
  Frame,  // the tokens of one frame (a spatial-temporal model's spatial attention)
  Time,   // the frames of one spatial position (its temporal attention)
  Video,  // every token of the video (full 3-D attention)
};
const char* attention_scope_name(AttentionScope scope);

class AttentionSeam {
 public:
  // Attention of q, k, v [N, H, L, D] computed where they are.
  using Attend = std::function<at::Tensor(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v)>;

  virtual ~AttentionSeam() = default;
  virtual std::string name() const = 0;
  // Activations [B, T, S_r, C] in the resting layout -> the layout in which every sequence of `scope`
  // is whole on this rank (DSP, Frame: [B, T_r, S, C]); leave() is the inverse. The identity where
  // the resting layout already holds whole sequences.
  virtual at::Tensor enter(AttentionScope scope, const at::Tensor& x) { return x; }
  virtual at::Tensor leave(AttentionScope scope, const at::Tensor& x) { return x; }
  // The attention of q, k, v [N, H, L, D] as this rank holds them after enter(). `attend` computes it
  // locally; a head-parallel strategy exchanges sequence for heads around it.
  virtual at::Tensor attention(AttentionScope scope, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const Attend& attend) {
    return attend(q, k, v);
  }
  // f over the layout of `scope` on activations x in the resting layout, the result back in the
  // resting layout: leave(scope, f(enter(scope, x))). f maps its input to the same shape, each frame
  // (Frame scope) or position (Time) independently of the others, so a layout may run it on groups of
  // them with one group's exchange in flight while f computes another (DSP's frame groups).
  using Local = std::function<at::Tensor(const at::Tensor& x)>;
  virtual at::Tensor run_in(AttentionScope scope, const at::Tensor& x, const Local& f) {
    return leave(scope, f(enter(scope, x)));
  }
  // Bytes this rank sends for one attention over `scope` of a [batch, ..., channels] activation
  // (what a reused attention unit saves).
  virtual int64_t bytes(AttentionScope scope, int64_t batch, int64_t channels, int64_t element_size) const = 0;
  // Where this rank's tokens begin in the video's flattened token sequence, for layouts that shard
  // that sequence (full-attention models read their position tables from there); 0 otherwise.
  virtual int64_t sequence_begin() const { return 0; }
};

}  // namespace ditto
