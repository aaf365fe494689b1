// The two layout switches of dynamic sequence parallelism (see dsp_layout.h).
#include "dist/dsp_layout.h"

#include "model/error.h"

namespace ditto {

DspLayout::DspLayout(Communicator& comm, int64_t grid_t, int64_t grid_s)
    : comm_(comm), t_(grid_t, comm.size()), s_(grid_s, comm.size()) {}

at::Tensor DspLayout::to_frames(const at::Tensor& x) {
  const int P = comm_.size(), r = comm_.rank();
  if (x.size(2) != s_.counts[r]) fail("to_frames: shard has ", x.size(2), " positions, expected ", s_.counts[r]);
  std::vector<at::Tensor> send, recv;
  for (int j = 0; j < P; ++j) {
    send.push_back(x.narrow(1, t_.offsets[j], t_.counts[j]).contiguous());
    recv.push_back(at::empty({x.size(0), t_.counts[r], s_.counts[j], x.size(3)}, x.options()));
  }
  comm_.all_to_all(send, recv);
  return at::cat(recv, 2);
}

at::Tensor DspLayout::to_space(const at::Tensor& x) {
  const int P = comm_.size(), r = comm_.rank();
  if (x.size(1) != t_.counts[r]) fail("to_space: shard has ", x.size(1), " frames, expected ", t_.counts[r]);
  std::vector<at::Tensor> send, recv;
  for (int j = 0; j < P; ++j) {
    send.push_back(x.narrow(2, s_.offsets[j], s_.counts[j]).contiguous());
    recv.push_back(at::empty({x.size(0), t_.counts[j], s_.counts[r], x.size(3)}, x.options()));
  }
  comm_.all_to_all(send, recv);
  return at::cat(recv, 1);
}

int64_t DspLayout::round_trip_bytes(int64_t batch, int64_t channels, int64_t element_size) const {
  const int P = comm_.size(), r = comm_.rank();
  int64_t elements = 0;
  for (int j = 0; j < P; ++j)
    if (j != r) elements += t_.counts[j] * s_.counts[r] + t_.counts[r] * s_.counts[j];
  return elements * batch * channels * element_size;
}

}  // namespace ditto
