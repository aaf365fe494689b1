// All-to-all micro-benchmark in the style of nccl-tests: for each message size, the time of one
// all-to-all of that many bytes per rank, algorithm and bus bandwidth (busbw = algbw (n-1)/n), and
// a correctness check (#wrong). Launch under mpirun; prints one table and writes JSON rows.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "dist/mpi_communicator.h"
#include "dist/nccl_communicator.h"
#include "pipeline/model_options.h"
#include "pipeline/version.h"
#include "pipeline/timing.h"
#include "model/error.h"

using namespace ditto;

int main(int argc, char** argv) {
  MpiEnv mpi(&argc, &argv);
  int64_t min_bytes = 0, max_bytes = 0;
  int iters = 0, warmup = 0;
  std::string backend, device_name, json_path;
  po::options_description desc("options");
  // clang-format off
  desc.add_options()
    ("min-bytes,b", po::value(&min_bytes)->default_value(1 << 10), "smallest size per rank (bytes)")
    ("max-bytes,e", po::value(&max_bytes)->default_value(64 << 20), "largest size per rank (bytes)")
    ("iters,n", po::value(&iters)->default_value(20), "timed iterations per size")
    ("warmup,w", po::value(&warmup)->default_value(5), "untimed iterations per size")
    ("comm", po::value(&backend)->default_value("mpi"), "mpi | nccl")
    ("device", po::value(&device_name)->default_value("cpu"), "cpu | cuda (GPU = local rank)")
    ("json", po::value(&json_path), "write the rows as JSON here");
  // clang-format on
  try {
    po::variables_map vm;
    if (!parse_command_line("bench_alltoall", "all-to-all bandwidth", desc, {argv + 1, argv + argc}, vm)) return 0;
    const at::Device dev = bench_device(device_name, mpi);
    std::unique_ptr<Communicator> comm;
    if (backend == "mpi") comm = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
    else if (backend == "nccl") comm = make_nccl_communicator(MPI_COMM_WORLD, dev.index(), 300);
    else fail("--comm: mpi or nccl");
    const int n = comm->size(), r = comm->rank();
    if (r == 0) {
      std::printf("# all_to_all: %d ranks, backend %s, device %s\n", n, backend.c_str(), device_name.c_str());
      std::printf("| size (B) | count (float) | type | time (us) | algbw (GB/s) | busbw (GB/s) | #wrong |\n");
      std::printf("|---|---|---|---|---|---|---|\n");
    }
    nlohmann::ordered_json rows = nlohmann::json::array();
    for (int64_t bytes = std::max<int64_t>(min_bytes, 4L * n); bytes <= max_bytes; bytes *= 2) {
      const int64_t count = bytes / 4 / n;  // floats per destination
      auto opts = at::TensorOptions().dtype(at::kFloat).device(dev);
      std::vector<at::Tensor> send, recv;
      for (int j = 0; j < n; ++j) {
        send.push_back(at::full({count}, static_cast<float>(r * n + j), opts));
        recv.push_back(at::empty({count}, opts));
      }
      for (int i = 0; i < warmup; ++i) comm->all_to_all(send, recv);
      synchronize(dev);
      comm->barrier();
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) comm->all_to_all(send, recv);
      synchronize(dev);
      double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / iters;
      at::Tensor slowest = at::tensor({us}, at::kDouble);
      comm->all_reduce(slowest, ReduceOp::Max);  // a collective is as slow as its slowest rank
      us = slowest.item<double>();
      int64_t wrong = 0;
      for (int j = 0; j < n; ++j) wrong += recv[j].ne(static_cast<float>(j * n + r)).sum().item<int64_t>();
      at::Tensor w = at::tensor({wrong}, at::kLong);
      comm->all_reduce(w, ReduceOp::Sum);
      const int64_t size = count * 4 * n;
      const double algbw = size / us / 1e3, busbw = algbw * (n - 1) / n;
      if (r == 0)
        std::printf("| %lld | %lld | float | %.1f | %.3f | %.3f | %lld |\n", static_cast<long long>(size),
                    static_cast<long long>(count * n), us, algbw, busbw, static_cast<long long>(w.item<int64_t>()));
      rows.push_back({{"size_bytes", size}, {"count", count * n}, {"time_us", us}, {"algbw_gbps", algbw},
                      {"busbw_gbps", busbw}, {"wrong", w.item<int64_t>()}});
    }
    if (r == 0 && !json_path.empty())
      std::ofstream(json_path) << nlohmann::ordered_json{{"ditto_version", ditto_version()}, {"ditto_git_sha", ditto_git_sha()}, {"ranks", n}, {"backend", backend}, {"device", device_name},
                                                         {"rows", rows}}.dump(2)
                               << "\n";
  } catch (const std::exception& e) {
    mpi.abort(std::string("bench_alltoall: ") + e.what());
  }
  return 0;
}
