// A sequence-parallel layout strategy: how a video's patch tokens are sharded over the ranks of a
// sequence-parallel group, and (as the model's attention seam) the communication that gives each
// attention the sequences it needs: DSP (spatial-temporal models), Ulysses (full attention).
#pragma once
#include <memory>
#include <string>

#include "dist/communicator.h"
#include "model/attention_seam.h"
#include "model/dit.h"

namespace ditto {

class SequenceParallel : public AttentionSeam {
 public:
  // This rank's part of a token grid [B, T', S, K] in the resting layout, and where it begins
  // along dimension 2 (what the model's embed() reads).
  virtual at::Tensor shard(const at::Tensor& tokens) const = 0;
  virtual int64_t shard_begin() const = 0;
  // The whole token grid from every rank's part, on every rank.
  virtual at::Tensor gather(const at::Tensor& local) = 0;
};

// "dsp", "ulysses" or "kv-gather" (heads: the model's attention heads); an unknown name is an Error
// listing the known ones.
std::unique_ptr<SequenceParallel> make_sequence_parallel(const std::string& layout, Communicator& comm,
                                                         const TokenGrid& grid, int heads);

}  // namespace ditto
