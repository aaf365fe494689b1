// Ulysses' sequence <-> head exchange (see ulysses_layout.h).
#include "dist/ulysses_layout.h"

#include <algorithm>

#include "model/error.h"

namespace ditto {

namespace {
GroupCount head_groups("--ulysses-head-groups");
}  // namespace

void set_ulysses_head_groups(int groups) { head_groups.set(groups); }
int ulysses_head_groups() { return head_groups.get(); }

SequenceShardLayout::SequenceShardLayout(Communicator& comm, const TokenGrid& grid)
    : comm_(comm), grid_(grid), tokens_(grid.tokens(), comm.size()) {
  if (comm.size() > grid.tokens())
    fail("sequence parallelism over ", comm.size(), " ranks needs at least one token per rank; the video has ", grid.tokens());
}

UlyssesLayout::UlyssesLayout(Communicator& comm, const TokenGrid& grid, int heads)
    : SequenceShardLayout(comm, grid), heads_total_(heads), heads_(heads, comm.size()) {
  if (comm.size() > heads)
    fail("Ulysses over ", comm.size(), " ranks needs at least one attention head per rank; the model has ", heads,
         " (use at most ", heads, " sequence-parallel ranks, or the kv-gather layout)");
}

at::Tensor UlyssesLayout::attention(AttentionScope scope, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const Attend& attend) {
  if (scope != AttentionScope::Video) return attend(q, k, v);
  const int P = comm_.size(), r = comm_.rank();
  const int64_t B = q.size(0), D = q.size(3);
  if (q.size(1) != heads_total_ || q.size(2) != tokens_.counts[r])
    fail("Ulysses: q is ", q.sizes(), ", expected [B, ", heads_total_, ", ", tokens_.counts[r], ", D]");
  // Groups beyond the fewest heads a rank holds would leave that rank idle in some of them.
  const int groups = std::min<int>(ulysses_head_groups(), static_cast<int>(*std::min_element(heads_.counts.begin(), heads_.counts.end())));
  if (groups > 1) return attention_in_groups(q, k, v, attend, groups);
  // Sequence -> heads: rank j gets my tokens of its heads, for q, k and v at once.
  const at::Tensor qkv = at::stack({q, k, v});  // [3, B, H, n_r, D]
  std::vector<at::Tensor> send, recv;
  for (int j = 0; j < P; ++j) {
    send.push_back(qkv.narrow(2, heads_.offsets[j], heads_.counts[j]).contiguous());
    recv.push_back(at::empty({3, B, heads_.counts[r], tokens_.counts[j], D}, q.options()));
  }
  comm_.all_to_all(send, recv);
  const at::Tensor all = at::cat(recv, 3);  // [3, B, H_r, L, D]: the ranks' shares in sequence order
  const at::Tensor o = attend(all[0], all[1], all[2]);  // [B, H_r, L, D]
  // Heads -> sequence.
  send.clear();
  recv.clear();
  for (int j = 0; j < P; ++j) {
    send.push_back(o.narrow(2, tokens_.offsets[j], tokens_.counts[j]).contiguous());
    recv.push_back(at::empty({B, heads_.counts[j], tokens_.counts[r], D}, q.options()));
  }
  comm_.all_to_all(send, recv);
  return at::cat(recv, 1);  // [B, H, n_r, D]
}

// Rank j's heads split again into `groups`; group g of every rank travels in one all-to-all.
at::Tensor UlyssesLayout::attention_in_groups(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              const Attend& attend, int groups) {
  const int P = comm_.size(), r = comm_.rank();
  const int64_t B = q.size(0), D = q.size(3);
  std::vector<Split> sub;
  for (int j = 0; j < P; ++j) sub.emplace_back(heads_.counts[j], groups);
  const at::Tensor qkv = at::stack({q, k, v});  // [3, B, H, n_r, D]
  struct Exchange {
    std::vector<at::Tensor> send, recv;
    std::unique_ptr<PendingCollective> pending;
  };
  std::vector<Exchange> in(groups), back(groups);
  const auto start_in = [&](int g) {
    Exchange& e = in[g];
    for (int j = 0; j < P; ++j) {
      e.send.push_back(qkv.narrow(2, heads_.offsets[j] + sub[j].offsets[g], sub[j].counts[g]).contiguous());
      e.recv.push_back(at::empty({3, B, sub[r].counts[g], tokens_.counts[j], D}, q.options()));
    }
    e.pending = comm_.all_to_all_start(e.send, e.recv);
  };
  start_in(0);
  for (int g = 0; g < groups; ++g) {
    if (g + 1 < groups) start_in(g + 1);  // in flight while group g attends
    in[g].pending->wait();
    const at::Tensor all = at::cat(in[g].recv, 3);  // [3, B, h_g, L, D]
    in[g] = Exchange{};
    const at::Tensor o = attend(all[0], all[1], all[2]);  // [B, h_g, L, D]
    Exchange& e = back[g];
    for (int j = 0; j < P; ++j) {
      e.send.push_back(o.narrow(2, tokens_.offsets[j], tokens_.counts[j]).contiguous());
      e.recv.push_back(at::empty({B, sub[j].counts[g], tokens_.counts[r], D}, q.options()));
    }
    e.pending = comm_.all_to_all_start(e.send, e.recv);
  }
  at::Tensor out = at::empty({B, heads_total_, tokens_.counts[r], D}, q.options());
  for (int g = 0; g < groups; ++g) {
    back[g].pending->wait();
    for (int j = 0; j < P; ++j) out.narrow(1, heads_.offsets[j] + sub[j].offsets[g], sub[j].counts[g]).copy_(back[g].recv[j]);
  }
  return out;
}

int64_t UlyssesLayout::bytes(AttentionScope scope, int64_t batch, int64_t channels, int64_t element_size) const {
  if (scope != AttentionScope::Video) return 0;
  const int P = comm_.size(), r = comm_.rank();
  const int64_t D = channels / heads_total_;
  int64_t elements = 0;
  for (int j = 0; j < P; ++j)
    if (j != r) elements += 3 * tokens_.counts[r] * heads_.counts[j] + heads_.counts[r] * tokens_.counts[j];
  return elements * batch * D * element_size;
}

at::Tensor KvGatherLayout::attention(AttentionScope scope, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const Attend& attend) {
  if (scope != AttentionScope::Video) return attend(q, k, v);
  if (q.size(2) != tokens_.counts[comm_.rank()])
    fail("kv-gather: q is ", q.sizes(), ", expected ", tokens_.counts[comm_.rank()], " tokens in dimension 2");
  // The whole sequence's keys and values, in sequence order: one all-gather for both (the shares'
  // sizes are known: no exchange of extents, no read to the host).
  const at::Tensor kv = at::stack({k, v}).contiguous();  // [2, B, H, n_r, D]
  std::vector<at::Tensor> recv;
  for (int j = 0; j < comm_.size(); ++j)
    recv.push_back(at::empty({2, kv.size(1), kv.size(2), tokens_.counts[j], kv.size(4)}, kv.options()));
  comm_.all_gather(kv, recv);
  const at::Tensor all = at::cat(recv, 3);  // [2, B, H, L, D]
  return attend(q, all[0], all[1]);
}

int64_t KvGatherLayout::bytes(AttentionScope scope, int64_t batch, int64_t channels, int64_t element_size) const {
  if (scope != AttentionScope::Video) return 0;
  return 2 * tokens_.counts[comm_.rank()] * (comm_.size() - 1) * batch * channels * element_size;
}

at::Tensor SequenceShardLayout::shard(const at::Tensor& tokens) const {
  const int r = comm_.rank();
  const at::Tensor flat = tokens.reshape({tokens.size(0), 1, tokens.size(1) * tokens.size(2), tokens.size(3)});
  return flat.narrow(2, tokens_.offsets[r], tokens_.counts[r]).contiguous();
}

at::Tensor SequenceShardLayout::gather(const at::Tensor& local) {
  const at::Tensor all = all_gather_cat(comm_, local.contiguous(), 2);  // [B, 1, L, K]
  return all.reshape({all.size(0), grid_.t, grid_.s(), all.size(3)});
}

}  // namespace ditto
