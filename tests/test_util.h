// Helpers shared by the tests: temporary directories, raw files, tensor comparison, running ditto.
#pragma once
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include <cstdio>
#include <fstream>
#include <string>

namespace ditto::test {

// A fresh directory under the build tree's Testing/ folder (or /tmp), unique per test.
inline std::string temp_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string dir = std::string("/tmp/ditto_test_") + info->test_suite_name() + "_" + info->name();
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  return dir;
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// max |a - b| / max |b|
inline double rel_err(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor A = a.to(at::kDouble).cpu(), B = b.to(at::kDouble).cpu();
  EXPECT_EQ(A.sizes(), B.sizes());
  return (A - B).abs().max().item<double>() / B.abs().max().item<double>();
}

struct RunResult {
  int code;
  std::string output;  // stdout + stderr
};

// Runs a shell command line, capturing stdout and stderr.
inline RunResult run_command(const std::string& command_line) {
  const std::string cmd = command_line + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// Runs the ditto executable with the given arguments.
inline RunResult run_ditto(const std::string& args) { return run_command(std::string(DITTO_BINARY) + " " + args); }

// Runs ditto under mpirun with np ranks (oversubscribed: CI has 2 cores).
inline RunResult run_ditto_mpi(int np, const std::string& args, const std::string& env = "") {
  return run_command("env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 " + env +
                     " mpirun --oversubscribe -np " + std::to_string(np) + " " + DITTO_BINARY + " " + args);
}

// `s` as one word for /bin/sh: single-quoted, each ' written as '\''.
inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Whether something is at `p` (links followed).
inline bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

// A JSON Lines file, one value per non-empty line.
inline std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::istringstream in(read_bytes(path));
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(nlohmann::json::parse(l));
  return out;
}

inline std::string fixture(const std::string& name) {
  return std::string(DITTO_SOURCE_DIR) + "/tests/fixtures/opensora_stdit3_tiny/" + name;
}

}  // namespace ditto::test
