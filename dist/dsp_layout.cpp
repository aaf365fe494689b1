// The two layout switches of dynamic sequence parallelism (see dsp_layout.h). On the wire every
// share is position-major, [S_share, B, T_share, C]: what to_frames receives is already the frame
// layout's memory, and what spatial attention hands back position-major is already what to_space sends.
#include "dist/dsp_layout.h"

#include <algorithm>

#include "dist/ulysses_layout.h"
#include "model/error.h"

namespace ditto {

namespace {
GroupCount requested_groups("--dsp-frame-groups");
}  // namespace

void set_dsp_frame_groups(int groups) { requested_groups.set(groups); }
int dsp_frame_groups() { return requested_groups.get(); }

DspLayout::DspLayout(Communicator& comm, int64_t grid_t, int64_t grid_s)
    : comm_(comm), t_(grid_t, comm.size()), s_(grid_s, comm.size()) {}

void DspLayout::check_space_shard(const at::Tensor& x) const {
  const int r = comm_.rank();
  if (x.dim() != 4 || x.size(2) != s_.counts[r] || x.size(1) != t_.offsets.back() + t_.counts.back())
    fail("DSP: the space-layout shard is ", x.sizes(), ", expected [B, ", t_.offsets.back() + t_.counts.back(), ", ", s_.counts[r], ", C]");
}

// Space -> frame layout for group g of every rank's frames (each rank j's frames split by sub[j]):
// by_position [S_r, B, T, C] sends rank j its group; `buffer` receives [S, B, F_g, C], position-major.
DspLayout::Exchange DspLayout::start_to_frames(const at::Tensor& by_position, const std::vector<Split>& sub, int g) {
  const int P = comm_.size(), r = comm_.rank();
  Exchange e;
  e.buffer = at::empty({s_.offsets.back() + s_.counts.back(), by_position.size(1), sub[r].counts[g], by_position.size(3)},
                       by_position.options());
  for (int j = 0; j < P; ++j) {
    e.send.push_back(by_position.narrow(2, t_.offsets[j] + sub[j].offsets[g], sub[j].counts[g]).contiguous());
    e.recv.push_back(e.buffer.narrow(0, s_.offsets[j], s_.counts[j]));  // contiguous: the outermost dimension
  }
  e.pending = comm_.all_to_all_start(e.send, e.recv);
  return e;
}

// Frame -> space layout for group g: by_position [S, B, F_g, C] (no copy when the frames are
// position-major) sends rank j its positions; recv[j] is [S_r, B, F_jg, C].
DspLayout::Exchange DspLayout::start_to_space(const at::Tensor& by_position, const std::vector<Split>& sub, int g) {
  const int P = comm_.size(), r = comm_.rank();
  Exchange e;
  for (int j = 0; j < P; ++j) {
    e.send.push_back(by_position.narrow(0, s_.offsets[j], s_.counts[j]).contiguous());
    e.recv.push_back(at::empty({s_.counts[r], by_position.size(1), sub[j].counts[g], by_position.size(3)}, by_position.options()));
  }
  e.pending = comm_.all_to_all_start(e.send, e.recv);
  return e;
}

std::vector<Split> DspLayout::split_frames(int groups) const {
  std::vector<Split> sub;
  for (int64_t count : t_.counts) sub.emplace_back(count, groups);
  return sub;
}

at::Tensor DspLayout::to_frames(const at::Tensor& x) {
  check_space_shard(x);
  Exchange e = start_to_frames(x.permute({2, 0, 1, 3}), split_frames(1), 0);
  e.pending->wait();
  return e.buffer.permute({1, 2, 0, 3});  // [B, T_r, S, C]
}

at::Tensor DspLayout::to_space(const at::Tensor& x) {
  const int r = comm_.rank();
  if (x.dim() != 4 || x.size(1) != t_.counts[r] || x.size(2) != s_.offsets.back() + s_.counts.back())
    fail("to_space: shard is ", x.sizes(), ", expected [B, ", t_.counts[r], ", ", s_.offsets.back() + s_.counts.back(), ", C]");
  Exchange e = start_to_space(x.permute({2, 0, 1, 3}), split_frames(1), 0);
  e.pending->wait();
  std::vector<at::Tensor> parts;
  for (const at::Tensor& part : e.recv) parts.push_back(part.permute({1, 2, 0, 3}));  // [B, T_j, S_r, C]
  return at::cat(parts, 1);
}

at::Tensor DspLayout::run_in(AttentionScope scope, const at::Tensor& x, const Local& f) {
  const int64_t fewest = *std::min_element(t_.counts.begin(), t_.counts.end());
  const int groups = scope == AttentionScope::Frame ? static_cast<int>(std::min<int64_t>(dsp_frame_groups(), fewest)) : 1;
  if (groups <= 1) return AttentionSeam::run_in(scope, x, f);
  check_space_shard(x);
  // Rank j's frames split again into `groups`; group g of every rank travels in one all-to-all each way.
  const std::vector<Split> sub = split_frames(groups);
  const at::Tensor by_position = x.permute({2, 0, 1, 3});  // [S_r, B, T, C]
  std::vector<Exchange> in(groups), back(groups);
  in[0] = start_to_frames(by_position, sub, 0);
  for (int g = 0; g < groups; ++g) {
    if (g + 1 < groups) in[g + 1] = start_to_frames(by_position, sub, g + 1);  // in flight while group g computes
    in[g].pending->wait();
    const at::Tensor frames = in[g].buffer.permute({1, 2, 0, 3});  // [B, F_g, S, C], position-major
    in[g] = Exchange{};
    const at::Tensor computed = f(frames);
    if (computed.sizes() != frames.sizes())
      fail("DSP: the frame-local computation returned ", computed.sizes(), " for frames ", frames.sizes());
    back[g] = start_to_space(computed.permute({2, 0, 1, 3}), sub, g);
  }
  for (Exchange& e : back) e.pending->wait();
  std::vector<at::Tensor> parts;  // in frame order: rank j's frames, group by group
  for (size_t j = 0; j < t_.counts.size(); ++j)
    for (int g = 0; g < groups; ++g) parts.push_back(back[g].recv[j].permute({1, 2, 0, 3}));  // [B, F, S_r, C]
  return at::cat(parts, 1);
}

int64_t DspLayout::round_trip_bytes(int64_t batch, int64_t channels, int64_t element_size) const {
  const int P = comm_.size(), r = comm_.rank();
  int64_t elements = 0;
  for (int j = 0; j < P; ++j)
    if (j != r) elements += t_.counts[j] * s_.counts[r] + t_.counts[r] * s_.counts[j];
  return elements * batch * channels * element_size;
}

at::Tensor DspLayout::enter(AttentionScope scope, const at::Tensor& x) {
  if (scope == AttentionScope::Video) fail("DSP cannot shard full 3-D attention (use Ulysses)");
  return scope == AttentionScope::Frame ? to_frames(x) : x;
}

at::Tensor DspLayout::leave(AttentionScope scope, const at::Tensor& x) {
  return scope == AttentionScope::Frame ? to_space(x) : x;
}

int64_t DspLayout::bytes(AttentionScope scope, int64_t batch, int64_t channels, int64_t element_size) const {
  return scope == AttentionScope::Frame ? round_trip_bytes(batch, channels, element_size) : 0;
}

at::Tensor DspLayout::shard(const at::Tensor& tokens) const {
  const int r = comm_.rank();
  return tokens.narrow(2, s_.offsets[r], s_.counts[r]).contiguous();
}

at::Tensor DspLayout::gather(const at::Tensor& local) { return all_gather_cat(comm_, local.contiguous(), 2); }

std::unique_ptr<SequenceParallel> make_sequence_parallel(const std::string& layout, Communicator& comm,
                                                         const TokenGrid& grid, int heads) {
  if (layout == "dsp") return std::make_unique<DspLayout>(comm, grid.t, grid.s());
  if (layout == "ulysses") return std::make_unique<UlyssesLayout>(comm, grid, heads);
  if (layout == "kv-gather") return std::make_unique<KvGatherLayout>(comm, grid);
  fail("unknown sequence-parallel layout '", layout, "' (known: dsp, ulysses, kv-gather)");
}

}  // namespace ditto
