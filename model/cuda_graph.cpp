// CUDA graphs of the per-step model call (see cuda_graph.h).
#include "model/cuda_graph.h"

#include "model/error.h"

#ifdef DITTO_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include <atomic>

namespace ditto {

namespace {
std::atomic<bool> requested{false};
}  // namespace

void set_cuda_graphs(bool on) { requested = on; }
bool cuda_graphs_requested() { return requested; }

std::string graph_refusal(const at::Device& device, int sp_ranks, const std::string& policy) {
  if (!requested) return "not requested (--cuda-graphs)";
  if (!device.is_cuda()) return "the run is on the CPU";
#ifndef DITTO_CUDA
  return "this ditto was built without CUDA (DITTO_CUDA=OFF)";
#endif
  if (sp_ranks > 1) return "sequence parallelism: its collectives are not captured, the steps run eagerly";
  if (policy != "none") return "cache policy '" + policy + "' skips units: its steps run eagerly";
  return "";
}

struct ForwardGraphs::Graph {
#ifdef DITTO_CUDA
  at::cuda::CUDAGraph graph;
#endif
  const DiTContext* ctx = nullptr;
  int64_t begin = 0;
  at::Tensor in, out;  // the captured forward's input (written before each replay) and output
};

ForwardGraphs::ForwardGraphs(const DiT& model) : model_(model) {}

ForwardGraphs::~ForwardGraphs() {
  try {
    reset();
  } catch (...) {  // a failed device: nothing left to wait for
  }
}

void ForwardGraphs::reset() {
#ifdef DITTO_CUDA
  // Replays may still be queued on the stream: the graphs and their memory outlive them.
  if (!graphs_.empty()) c10::cuda::getCurrentCUDAStream().synchronize();
#endif
  graphs_.clear();
}

at::Tensor ForwardGraphs::forward(const at::Tensor& tokens, int64_t begin, const DiTContext& ctx, int expert) {
#ifndef DITTO_CUDA
  (void)tokens, (void)begin, (void)ctx, (void)expert;
  fail("CUDA graphs: this ditto was built without CUDA (DITTO_CUDA=OFF)");
#else
  if (!tokens.is_cuda()) fail("CUDA graphs: the tokens are on ", tokens.device().str(), ", not a CUDA device");
  std::unique_ptr<Graph>& slot = graphs_[expert];
  if (slot && slot->ctx == &ctx && slot->begin == begin && slot->in.sizes() == tokens.sizes() &&
      slot->in.scalar_type() == tokens.scalar_type() && slot->in.device() == tokens.device()) {
    slot->in.copy_(tokens);
    slot->graph.replay();
    ++replays_;
    return slot->out.clone();
  }
  if (slot) {  // another video or shape: the old graph goes first (its memory with it)
    c10::cuda::getCurrentCUDAStream(tokens.device().index()).synchronize();
    slot.reset();
  }
  auto g = std::make_unique<Graph>();
  g->ctx = &ctx;
  g->begin = begin;
  g->in = tokens.clone(at::MemoryFormat::Contiguous);  // on the caller's stream, as every later write to it
  const c10::DeviceIndex dev = tokens.device().index();
  const c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream(dev);
  // Capture needs a stream of its own; it waits for the caller's work and the caller for it after.
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, dev);
  at::cuda::CUDAEvent ready;
  ready.record(caller);
  ready.block(side);
  at::Tensor out;
  {
    c10::cuda::CUDAStreamGuard guard(side);
    // This step's result, computed eagerly on the capture stream: the lazy set-up (cuBLAS workspaces,
    // kernel selection) happens here, outside the capture.
    out = model_.forward_tokens(g->in, begin, ctx);
    // Only this thread's CUDA calls are checked during capture (the communicators' watchdogs run on).
    try {
      g->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      g->out = model_.forward_tokens(g->in, begin, ctx);
      g->graph.capture_end();
    } catch (const std::exception& e) {
      fail("CUDA graph capture of the model's step failed (run without --cuda-graphs): ", e.what());
    }
  }
  at::cuda::CUDAEvent done;
  done.record(side);
  done.block(caller);
  // The eager result was made on the capture stream and is read on the caller's.
  c10::cuda::CUDACachingAllocator::recordStream(out.storage().data_ptr(), caller);
  slot = std::move(g);
  ++captures_;
  return out;
#endif
}

}  // namespace ditto
