// GPU checks (label gpu): the same model on CUDA against the CPU float32 result. Skips cleanly
// when no GPU is visible.
#include <gtest/gtest.h>

#include "model/stdit3.h"
#include "test_util.h"

using namespace ditto;

namespace {

ForwardArgs inputs(const STDiT3Config& c, const at::Device& dev) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
  auto f = at::TensorOptions().dtype(at::kFloat);
  ForwardArgs a;
  a.x = at::randn({2, c.in_channels, 5, 16, 18}, g, f).to(dev);
  a.timestep = at::tensor({900.0f, 250.0f}).to(dev);
  a.y = at::randn({2, 1, c.model_max_length, c.caption_channels}, g, f).to(dev);
  a.mask = at::tensor({1, 1, 1, 1, 1, 0, 0, 0}, at::kLong).reshape({1, 8}).to(dev);
  a.fps = at::full({1}, 24.0f).to(dev);
  a.height = at::full({1}, 128.0f).to(dev);
  a.width = at::full({1}, 144.0f).to(dev);
  return a;
}

}  // namespace

TEST(Gpu, CudaForwardMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA GPU visible";
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 cpu = STDiT3::random(c, 1, at::TensorOptions().dtype(at::kFloat));
  at::Tensor ref = cpu.forward(inputs(c, at::kCPU));
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    std::map<std::string, at::Tensor> w;
    for (const auto& [k, v] : cpu.weights()) w[k] = v.to(at::kCUDA).to(dtype);
    STDiT3 gpu(c, w);
    at::Tensor out = gpu.forward(inputs(c, at::Device(at::kCUDA))).cpu();
    const double tol = dtype == at::kFloat ? 1e-4 : 5e-2;
    EXPECT_LT(ditto::test::rel_err(out, ref), tol) << c10::toString(dtype);
  }
}
