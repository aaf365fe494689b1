// safetensors: round trips of every dtype, and crafted bad files that must fail with a clear error.
#include <gtest/gtest.h>

#include "model/error.h"
#include "model/safetensors.h"
#include "test_util.h"

using namespace ditto;
using ditto::test::temp_dir;
using ditto::test::write_bytes;

namespace {

std::string header_file(const std::string& json, size_t data_bytes, bool lie_about_length = false) {
  std::string out(8, '\0');
  uint64_t n = lie_about_length ? json.size() + 1000 : json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + json + std::string(data_bytes, '\x01');
}

void expect_error(const std::string& path, const std::string& needle) {
  try {
    SafetensorsFile f(path);
    FAIL() << "no error for " << path;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << "message does not name the file: " << e.what();
  }
}

}  // namespace

TEST(Safetensors, RoundTripsEveryDtype) {
  const std::string dir = temp_dir(), path = dir + "/t.safetensors";
  at::manual_seed(0);
  NamedTensors in = {{"f32", at::randn({2, 3})},
                     {"f16", at::randn({4}).to(at::kHalf)},
                     {"bf16", at::randn({3, 1, 2}).to(at::kBFloat16)},
                     {"f64", at::randn({5}, at::kDouble)},
                     {"i64", at::arange(7, at::kLong)},
                     {"scalar", at::tensor(3.5f).reshape({})},
                     {"empty", at::zeros({0, 4})}};
  save_safetensors(path, in, {{"format", "pt"}});
  SafetensorsFile f(path);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  ASSERT_EQ(f.entries().size(), in.size());
  for (const auto& [name, t] : in) {
    at::Tensor back = f.tensor(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(at::equal(back, t)) << name;
  }
  EXPECT_EQ(f.find("f16")->dtype, "F16");
  EXPECT_EQ(f.find("bf16")->dtype, "BF16");
  // Conversion to the run's dtype.
  at::Tensor conv = f.tensor("bf16", at::TensorOptions().dtype(at::kFloat));
  EXPECT_EQ(conv.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(conv, in[2].second.to(at::kFloat)));
  EXPECT_THROW(f.tensor("nope"), Error);
}

TEST(Safetensors, WriteIsAtomic) {
  const std::string dir = temp_dir(), path = dir + "/t.safetensors";
  EXPECT_THROW(save_safetensors(path, {{"a", at::ones({1})}, {"a", at::ones({1})}}), Error);  // duplicate name
  std::ifstream probe(path);
  EXPECT_FALSE(probe.good()) << "a failed write left a file behind";
  EXPECT_EQ(std::system(("ls " + dir + " | grep -q tmp").c_str()) == 0, false) << "temporary file left behind";
}

TEST(Safetensors, RejectsMalformedFiles) {
  const std::string d = temp_dir();
  write_bytes(d + "/empty", "");
  expect_error(d + "/empty", "too short");
  write_bytes(d + "/text", "this is a text file and not a safetensors file at all");
  expect_error(d + "/text", "not a safetensors file");
  const std::string good = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  write_bytes(d + "/truncated", header_file(good, 10));
  expect_error(d + "/truncated", "truncated");
  write_bytes(d + "/header_len", header_file(good, 16, /*lie_about_length=*/true));
  expect_error(d + "/header_len", "header length");
  write_bytes(d + "/badjson", header_file(R"({"a":{"dtype":"F32",)", 16));
  expect_error(d + "/badjson", "malformed");
  write_bytes(d + "/size", header_file(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})", 16));
  expect_error(d + "/size", "need 24");
  write_bytes(d + "/dtype", header_file(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", 2));
  expect_error(d + "/dtype", "unsupported dtype 'Q4'");
  write_bytes(d + "/overlap", header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12));
  expect_error(d + "/overlap", "overlap");
  // An empty tensor between two overlapping ones must not hide the overlap.
  write_bytes(d + "/overlap2", header_file(R"({"a":{"dtype":"U8","shape":[100],"data_offsets":[0,100]},)"
                                           R"("z":{"dtype":"U8","shape":[0],"data_offsets":[50,50]},)"
                                           R"("c":{"dtype":"U8","shape":[40],"data_offsets":[60,100]}})", 100));
  expect_error(d + "/overlap2", "overlap");
  // A shape whose byte size wraps around 64 bits (2^40 x 2^21 x 8 bytes = 2^64 = 0).
  write_bytes(d + "/wrap", header_file(R"({"a":{"dtype":"F64","shape":[1099511627776,2097152],"data_offsets":[0,0]}})", 8));
  expect_error(d + "/wrap", "more than 2^64");
  write_bytes(d + "/backwards", header_file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8));
  expect_error(d + "/backwards", "backwards");
  write_bytes(d + "/negative", header_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4));
  expect_error(d + "/negative", "non-negative");
  expect_error(d + "/does_not_exist", "cannot open");
  // Metadata nested 66,000 levels deep (a stack overflow once): refused by depth while parsing.
  const int deep = 66000;
  write_bytes(d + "/deep", header_file(R"({"__metadata__":)" + std::string(deep, '[') + std::string(deep, ']') + "}", 0));
  expect_error(d + "/deep", "nested deeper than 64");
  // The good header with enough data loads.
  write_bytes(d + "/good", header_file(good, 16));
  EXPECT_EQ(SafetensorsFile(d + "/good").find("a")->shape, (std::vector<int64_t>{2, 2}));
}
