// `mpirun -np N ditto sample` as users launch it: the same latent as one rank for every layout,
// bad layouts refused before any work, and a failing rank ending the whole job quickly.
#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "model/safetensors.h"
#include "test_util.h"

using namespace ditto;
using ditto::test::read_bytes;
using ditto::test::rel_err;
using ditto::test::run_ditto;
using ditto::test::run_ditto_mpi;
using ditto::test::temp_dir;

namespace {

// 51 frames at 40 x 72 px: a 15 x (3 x 5) token grid (H padded), divisible by neither 2 nor 4.
const std::string kBase = "sample --config stdit3-tiny --random-weights --random-caption 5 --frames 51 --height 40 "
                          "--width 72 --seed 9 --quiet ";
const std::string kRun = kBase + "--steps 3 ";

at::Tensor latent(const std::string& dir) { return load_safetensors(dir + "/latent.safetensors").at("z"); }

}  // namespace

TEST(MpiSample, EveryLayoutSamplesTheOneRankLatent) {
  const std::string d = temp_dir();
  auto r = run_ditto(kRun + "--out " + d + "/ref");
  ASSERT_EQ(r.code, 0) << r.output;
  const at::Tensor ref = latent(d + "/ref");
  struct Case {
    int np;
    std::string flags;
  };
  for (const Case& c : {Case{2, "--sp 2"}, Case{4, "--sp 4"}, Case{2, "--cfg-parallel 2"}, Case{4, "--sp 2 --cfg-parallel 2"}}) {
    const std::string out = d + "/np" + std::to_string(c.np) + "_" + std::to_string(c.flags.size());
    r = run_ditto_mpi(c.np, kRun + c.flags + " --out " + out);
    ASSERT_EQ(r.code, 0) << c.flags << "\n" << r.output;
    EXPECT_LT(rel_err(latent(out), ref), 1e-5) << c.flags;
    auto m = nlohmann::json::parse(read_bytes(out + "/metrics.json"));
    EXPECT_EQ(m["run"]["world"]["size"], c.np);
    if (c.flags == "--sp 4") {
      EXPECT_EQ(m["communication"]["sp"]["all_to_all"]["calls"], 3 * 2 * 2);  // steps x depth x 2
      EXPECT_GT(m["communication"]["sp_bytes_per_step"].get<int64_t>(), 0);
      EXPECT_EQ(m["timing"]["peak_memory_bytes_per_rank"].size(), 4u);
    }
  }
  // Two data-parallel groups render two videos with seeds 9 and 10.
  r = run_ditto_mpi(2, kRun + "--out " + d + "/dp");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_LT(rel_err(latent(d + "/dp/dp0"), ref), 1e-5);
  EXPECT_GT(rel_err(latent(d + "/dp/dp1"), ref), 1e-2);
}

TEST(MpiSample, ImpossibleLayoutsFailFastWithTheirReason) {
  const std::string d = temp_dir();
  auto r = run_ditto_mpi(3, kRun + "--sp 2 --out " + d);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("3 is not a multiple of 2"), std::string::npos) << r.output;
  r = run_ditto_mpi(2, kRun + "--cfg-parallel 3 --out " + d);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--cfg-parallel must be 1 or 2"), std::string::npos) << r.output;
  // 16 ranks for 15 spatial positions (checked before the model is built).
  r = run_ditto_mpi(16, kRun + "--sp 16 --out " + d);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("more ranks than the 15 spatial token positions"), std::string::npos) << r.output;
  r = run_ditto_mpi(2, kRun + "--sp 2 --comm nccl --device cpu --out " + d);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--comm nccl needs --device cuda"), std::string::npos) << r.output;
}

TEST(MpiSample, ARankThatThrowsEndsTheJob) {
  const std::string d = temp_dir();
  const auto t0 = std::chrono::steady_clock::now();
  auto r = run_ditto_mpi(4, kBase + "--sp 4 --steps 20 --out " + d, "DITTO_FAULT_INJECT=2:1");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("[rank 2] error: injected fault at step 1"), std::string::npos) << r.output;
  EXPECT_LT(s, 30.0) << "the job did not end promptly";
  std::ifstream none(d + "/latent.safetensors");
  EXPECT_FALSE(none.good()) << "a failed job left an output behind";
}
