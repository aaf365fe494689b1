// Shared communicator helpers (see communicator.h).
#include "dist/communicator.h"

#include <cstring>

#include "model/error.h"

namespace ditto {

namespace {
struct Done : PendingCollective {
  void wait() override {}
};
}  // namespace

std::unique_ptr<PendingCollective> Communicator::all_to_all_start(const std::vector<at::Tensor>& send,
                                                                  std::vector<at::Tensor>& recv) {
  all_to_all(send, recv);
  return std::make_unique<Done>();
}

void GroupCount::set(int groups) {
  if (groups < 1 || groups > 64) fail(option_, " must be in 1 .. 64, got ", groups);
  value_ = groups;
}

Split::Split(int64_t n, int p) {
  if (p <= 0) fail("cannot split ", n, " items over ", p, " ranks");
  int64_t offset = 0;
  for (int r = 0; r < p; ++r) {
    const int64_t c = n / p + (r < n % p ? 1 : 0);
    counts.push_back(c);
    offsets.push_back(offset);
    offset += c;
  }
}

at::Tensor all_gather_cat(Communicator& comm, const at::Tensor& local, int64_t dim) {
  at::Tensor send = local.contiguous();
  // Every rank learns every rank's extent along dim first.
  at::Tensor extent = at::tensor({local.size(dim)}, at::kLong);
  std::vector<at::Tensor> extents;
  for (int r = 0; r < comm.size(); ++r) extents.push_back(at::empty({1}, at::kLong));
  if (local.is_cuda()) {
    extent = extent.to(local.device());
    for (auto& e : extents) e = e.to(local.device());
  }
  comm.all_gather(extent, extents);
  std::vector<at::Tensor> recv;
  for (int r = 0; r < comm.size(); ++r) {
    auto shape = local.sizes().vec();
    shape[dim] = extents[r].item<int64_t>();
    recv.push_back(at::empty(shape, local.options()));
  }
  comm.all_gather(send, recv);
  return at::cat(recv, dim);
}

std::string broadcast_string(Communicator& comm, const std::string& s, int root) {
  at::Tensor n = at::tensor({static_cast<int64_t>(s.size())}, at::kLong);
  comm.broadcast(n, root);
  at::Tensor bytes = at::empty({n.item<int64_t>()}, at::kByte);
  if (comm.rank() == root && !s.empty()) std::memcpy(bytes.data_ptr(), s.data(), s.size());
  if (bytes.numel() > 0) comm.broadcast(bytes, root);
  return std::string(reinterpret_cast<const char*>(bytes.data_ptr()), static_cast<size_t>(bytes.numel()));
}

}  // namespace ditto
