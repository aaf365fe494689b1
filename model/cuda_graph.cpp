// CUDA graphs of the per-step model call (see cuda_graph.h).
#include "model/cuda_graph.h"

#include "model/error.h"

#ifdef DITTO_CUDA
#include <ATen/core/CachingHostAllocator.h>
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
  const void* conditioning = nullptr;  // where ctx's timestep embedding lived at capture
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
  // Replays may still be queued on their device's stream: the graphs and their memory outlive them.
  for (const auto& [expert, g] : graphs_)
    if (g) c10::cuda::getCurrentCUDAStream(g->in.device().index()).synchronize();
#endif
  graphs_.clear();
}

at::Tensor ForwardGraphs::forward(const at::Tensor& tokens, int64_t begin, const DiTContext& ctx, int expert) {
#ifndef DITTO_CUDA
  (void)tokens, (void)begin, (void)ctx, (void)expert;
  fail("CUDA graphs: this ditto was built without CUDA (DITTO_CUDA=OFF)");
#else
  if (!tokens.is_cuda()) fail("CUDA graphs: the tokens are on ", tokens.device().str(), ", not a CUDA device");
  const void* conditioning = ctx.timestep_embedding().defined() ? ctx.timestep_embedding().data_ptr() : nullptr;
  {
    auto it = graphs_.find(expert);
    Graph* g = it == graphs_.end() ? nullptr : it->second.get();
    if (g && g->ctx == &ctx && g->conditioning == conditioning && g->begin == begin && g->in.sizes() == tokens.sizes() &&
        g->in.scalar_type() == tokens.scalar_type() && g->in.device() == tokens.device()) {
      g->in.copy_(tokens);
      g->graph.replay();
      ++replays_;
      return g->out.clone();
    }
  }
  // A new capture: the experts take turns in one stretch each, so the graphs of the others (and of an
  // earlier video or shape) go first, their memory with them.
  reset();
  const c10::DeviceIndex dev = tokens.device().index();
  const c10::cuda::CUDAGuard device_guard(tokens.device());  // the capture's pool belongs to the current device
  auto g = std::make_unique<Graph>();
  g->ctx = &ctx;
  g->conditioning = conditioning;
  g->begin = begin;
  g->in = tokens.clone(at::MemoryFormat::Contiguous);  // on the caller's stream, as every later write to it
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
    // The eager run's cached blocks go back to the device, for the graph's own pool to take (as
    // torch.cuda.graph does): the capture's peak is the eager step's, not twice it.
    side.synchronize();
    c10::cuda::CUDACachingAllocator::emptyCache();
    const c10::MempoolId_t pool = at::cuda::graph_pool_handle();
    // Only this thread's CUDA calls are checked during capture (the communicators' watchdogs run on).
    try {
      g->graph.capture_begin(pool, cudaStreamCaptureModeThreadLocal);
      g->out = model_.forward_tokens(g->in, begin, ctx);
      g->graph.capture_end();
    } catch (const std::exception& e) {
      // Undo the capture so that this process can go on (render's next job): end it on the stream,
      // route the stream's allocations back out of the graph's pool and release the pool.
      g->out = at::Tensor();
      cudaGraph_t partial = nullptr;
      if (cudaStreamEndCapture(side.stream(), &partial) == cudaSuccess && partial) cudaGraphDestroy(partial);
      c10::cuda::CUDACachingAllocator::endAllocateToPool(dev, pool);
      c10::cuda::CUDACachingAllocator::releasePool(dev, pool);
      at::getHostAllocator(at::kCUDA)->end_allocate_to_pool(pool);
      at::getHostAllocator(at::kCUDA)->release_pool(pool);
      (void)cudaGetLastError();
      fail("CUDA graph capture of the model's step failed (run without --cuda-graphs): ", e.what());
    }
  }
  at::cuda::CUDAEvent done;
  done.record(side);
  done.block(caller);
  // The eager result was made on the capture stream and is read on the caller's.
  c10::cuda::CUDACachingAllocator::recordStream(out.storage().data_ptr(), caller);
  graphs_[expert] = std::move(g);
  ++captures_;
  return out;
#endif
}

}  // namespace ditto
