// `mpirun -np N ditto render`: every job rendered once over data-parallel groups, the same outputs
// alone or in a batch, a SIGKILLed run finished by a restart without rewriting finished files or
// leaving partial ones, and bad lines / duplicate names / unreadable weights failing on their own.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "model/atomic_file.h"
#include "model/safetensors.h"
#include "test_util.h"

using namespace ditto;
using ditto::test::exists;
using ditto::test::read_bytes;
using ditto::test::read_jsonl;
using ditto::test::rel_err;
using ditto::test::run_command;
using ditto::test::run_ditto;
using ditto::test::run_ditto_mpi;
using ditto::test::temp_dir;
using ditto::test::write_bytes;
using json = nlohmann::json;

namespace {

const std::string kTiny = "--config ditto-demo-tiny --random-weights --no-mp4 --quiet ";

at::Tensor latent(const std::string& dir) { return load_safetensors(dir + "/latent.safetensors").at("z"); }

// Names in `dir` that start with '.' (partial outputs).
std::vector<std::string> hidden_entries(const std::string& dir) {
  std::vector<std::string> out;
  auto r = run_command("ls -A '" + dir + "'");
  std::istringstream in(r.output);
  for (std::string n; std::getline(in, n);)
    if (!n.empty() && n[0] == '.') out.push_back(n);
  return out;
}

}  // namespace

TEST(Render, TwoGroupsRenderEveryJobOnceWithTheSampleCommandsOutputs) {
  const std::string d = temp_dir();
  std::string jobs;
  for (int i = 0; i < 6; ++i)
    jobs += json{{"random_caption", 3 + i % 3}, {"seed", 100 + i}, {"steps", 4}, {"output", "v" + std::to_string(i)},
                 {"cache", i % 2 ? "static" : "none"}}.dump() + "\n";
  write_bytes(d + "/jobs.jsonl", jobs);
  auto r = run_ditto_mpi(2, "render " + kTiny + "--jobs " + d + "/jobs.jsonl --out " + d + "/out");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto manifest = read_jsonl(d + "/out/manifest.jsonl");
  ASSERT_EQ(manifest.size(), 6u);
  std::set<std::string> names;
  std::set<int> groups;
  for (const auto& m : manifest) {
    names.insert(m["output"].get<std::string>());
    const json metrics = json::parse(read_bytes(d + "/out/" + m["output"].get<std::string>() + "/metrics.json"));
    groups.insert(metrics["run"]["world"]["dp_index"].get<int>());
    EXPECT_EQ(metrics["outputs"]["latent"], "latent.safetensors");
  }
  EXPECT_EQ(names.size(), 6u);                 // each job once
  EXPECT_EQ(groups, (std::set<int>{0, 1}));    // both groups worked
  EXPECT_TRUE(hidden_entries(d + "/out").empty());
  const json summary = json::parse(read_bytes(d + "/out/summary.json"));
  EXPECT_EQ(summary["rendered"], 6);
  EXPECT_EQ(summary["failed"], 0);
  EXPECT_TRUE(summary["ok"].get<bool>());
  EXPECT_LT(summary["cache_compute_fraction"].get<double>(), 1.0);  // the static jobs skipped blocks
  // Two groups of two sequence-parallel ranks render the same videos.
  r = run_ditto_mpi(4, "render " + kTiny + "--sp 2 --jobs " + d + "/jobs.jsonl --out " + d + "/sp");
  ASSERT_EQ(r.code, 0) << r.output;
  for (int i = 0; i < 6; ++i)
    EXPECT_LT(rel_err(latent(d + "/sp/v" + std::to_string(i)), latent(d + "/out/v" + std::to_string(i))), 1e-5) << i;

  // A job's outputs do not depend on the batch: alone (one rank), under --sp 2, and `ditto sample`.
  write_bytes(d + "/one.jsonl", json{{"random_caption", 4}, {"seed", 101}, {"steps", 4}, {"output", "v1"}, {"cache", "static"}}.dump() + "\n");
  r = run_ditto_mpi(1, "render " + kTiny + "--jobs " + d + "/one.jsonl --out " + d + "/alone");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(at::equal(latent(d + "/alone/v1"), latent(d + "/out/v1")));
  r = run_ditto_mpi(2, "render " + kTiny + "--sp 2 --jobs " + d + "/one.jsonl --out " + d + "/sp2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_LT(rel_err(latent(d + "/sp2/v1"), latent(d + "/out/v1")), 1e-5);
  r = run_ditto_mpi(1, "sample " + kTiny + "--random-caption 4 --seed 101 --steps 4 --cache static --out " + d + "/sample");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(at::equal(latent(d + "/sample"), latent(d + "/out/v1")));
}

TEST(Render, BadLinesDuplicatesAndUnreadableWeightsFailAloneWhileValidJobsComplete) {
  const std::string d = temp_dir();
  // A model directory whose weights file is cut short.
  auto r = run_ditto("train --config ditto-demo-tiny --steps 1 --batch 1 --quiet --threads 1 --out " + d + "/model");
  ASSERT_EQ(r.code, 0) << r.output;
  run_command("cp -r " + d + "/model " + d + "/broken && truncate -s 1000 " + d + "/broken/model.safetensors");
  // A model whose output is NaN: its jobs fail on the final latent's check.
  run_command("cp -r " + d + "/model " + d + "/nan");
  {
    auto w = load_safetensors(d + "/model/model.safetensors");
    NamedTensors t;
    for (auto& [name, x] : w) t.emplace_back(name, name == "final_layer.linear.bias" ? x * NAN : x);
    save_safetensors(d + "/nan/model.safetensors", t);
  }
  const std::string jobs = std::string(
      R"({"prompt": "a red circle moving right slow", "steps": 3, "output": "good1"})" "\n"
      R"({"prompt": "a red circle", "steps": 3, "output": "dup"})" "\n"
      "{not json\n"
      R"({"prompt": "a blue square still on a gray background", "steps": 3, "output": "dup"})" "\n"
      R"({"prompt": "a blue square still", "steps": 3, "output": "broken", "model": ")" + d + R"(/broken"})" "\n"
      R"({"prompt": "a purple square still", "steps": 3, "output": "purple"})" "\n"
      R"({"prompt": "a green triangle moving up fast", "steps": "3", "output": "typed"})" "\n"
      "\n"
      R"({"prompt": "a green triangle moving up fast", "steps": 3, "output": "good2", "cache": "adacache"})" "\n"
      R"({"prompt": "a blue square still", "steps": 3, "output": "nan", "model": ")" + d + R"(/nan"})" "\n");
  write_bytes(d + "/jobs.jsonl", jobs);
  r = run_ditto_mpi(2, "render --model " + d + "/model --no-mp4 --quiet --jobs " + d + "/jobs.jsonl --out " + d + "/out");
  EXPECT_EQ(r.code, 1) << r.output;  // not everything succeeded
  EXPECT_TRUE(exists(d + "/out/good1/metrics.json"));
  EXPECT_TRUE(exists(d + "/out/good2/metrics.json"));
  EXPECT_FALSE(exists(d + "/out/dup"));
  EXPECT_FALSE(exists(d + "/out/broken"));
  EXPECT_TRUE(hidden_entries(d + "/out").empty());
  std::map<int, std::string> errors;
  for (const auto& f : read_jsonl(d + "/out/failures.jsonl")) errors[f["line"].get<int>()] = f["error"].get<std::string>();
  ASSERT_EQ(errors.size(), 7u) << read_bytes(d + "/out/failures.jsonl");
  EXPECT_NE(errors[10].find("NaN or infinite"), std::string::npos) << errors[10];
  EXPECT_FALSE(exists(d + "/out/nan"));
  EXPECT_NE(errors[2].find("output name 'dup' is also used by line 4"), std::string::npos) << errors[2];
  EXPECT_NE(errors[3].find("not valid JSON"), std::string::npos) << errors[3];
  EXPECT_NE(errors[4].find("output name 'dup' is also used by line 2"), std::string::npos) << errors[4];
  EXPECT_NE(errors[5].find("model.safetensors"), std::string::npos) << errors[5];
  EXPECT_NE(errors[6].find("'purple' is not in the text encoder's vocabulary"), std::string::npos) << errors[6];
  EXPECT_NE(errors[7].find("'steps' must be a positive integer"), std::string::npos) << errors[7];
  const json summary = json::parse(read_bytes(d + "/out/summary.json"));
  EXPECT_EQ(summary["rendered"], 2);
  EXPECT_EQ(summary["failed"], 7);
  EXPECT_EQ(summary["rejected"], 5);
  EXPECT_FALSE(summary["ok"].get<bool>());
  // Two renders into one directory at once: the second is refused.
  r = run_command("flock " + d + "/out/render.lock env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " +
                  std::string(DITTO_BINARY) + " render " + kTiny + "--jobs " + d + "/jobs.jsonl --out " + d + "/out");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("another ditto render is writing to '" + d + "/out'"), std::string::npos) << r.output;
  // A job file that cannot be read is one clear error, on every rank, before any work.
  r = run_ditto_mpi(2, "render " + kTiny + "--jobs " + d + "/none.jsonl --out " + d + "/out2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("cannot read '" + d + "/none.jsonl'"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(d + "/out2")) << "a render that could not read its jobs created its output directory";
}

TEST(Render, RestartAfterSigkillFinishesTheRestWithoutRewritingFinishedFiles) {
  const std::string d = temp_dir();
  std::string jobs;
  const int n = 10;
  for (int i = 0; i < n; ++i)
    jobs += json{{"random_caption", 4}, {"seed", i}, {"steps", 150}, {"output", "job" + std::to_string(i)}}.dump() + "\n";
  write_bytes(d + "/jobs.jsonl", jobs);
  const std::string args = "render --config stdit3-tiny --random-weights --frames 51 --height 40 --width 72 --no-mp4 "
                           "--quiet --jobs " + d + "/jobs.jsonl --out " + d + "/out";
  run_command("cd " + d + " && (env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 "
              "mpirun --oversubscribe -np 2 " + std::string(DITTO_BINARY) + " " + args + " > log 2>&1 &)");
  size_t done_at_kill = 0;
  for (int i = 0; i < 3000; ++i) {  // up to 60 s for two jobs to finish
    if (exists(d + "/out/manifest.jsonl")) done_at_kill = read_jsonl(d + "/out/manifest.jsonl").size();
    if (done_at_kill >= 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // SIGKILL to mpirun and every rank at once (as a node failure or a scheduler's kill would).
  run_command("pkill -9 -f -- '--out " + d + "/out'");
  for (int i = 0; i < 100 && run_command("pgrep -f -- '--out " + d + "/out'").code == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_GE(done_at_kill, 2u) << read_bytes(d + "/log");
  // Every finished job's files, with their inode and modification time.
  std::map<std::string, std::pair<ino_t, int64_t>> finished;
  for (int i = 0; i < n; ++i) {
    const std::string dir = d + "/out/job" + std::to_string(i);
    for (const char* f : {"/latent.safetensors", "/metrics.json"}) {  // a latent-space model: no video file
      struct stat st {};
      if (::stat((dir + f).c_str(), &st) == 0)
        finished[dir + f] = {st.st_ino, static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
    }
  }
  ASSERT_GE(finished.size(), 2 * done_at_kill);
  ASSERT_LT(finished.size(), 2u * n) << "the run finished before it was killed; the test needs slower jobs";

  auto r = run_ditto_mpi(2, args);
  ASSERT_EQ(r.code, 0) << r.output;
  const json summary = json::parse(read_bytes(d + "/out/summary.json"));
  EXPECT_EQ(summary["rendered"].get<int>() + summary["already_done"].get<int>(), n);
  EXPECT_GE(summary["already_done"].get<size_t>(), done_at_kill);
  std::set<std::string> names;
  for (const auto& m : read_jsonl(d + "/out/manifest.jsonl")) names.insert(m["output"].get<std::string>());
  EXPECT_EQ(names.size(), static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) EXPECT_TRUE(exists(d + "/out/job" + std::to_string(i) + "/metrics.json")) << i;
  for (const auto& [path, id] : finished) {
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0) << path;
    EXPECT_EQ(st.st_ino, id.first) << path << " was rewritten";
    EXPECT_EQ(static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec, id.second) << path;
  }
  EXPECT_TRUE(hidden_entries(d + "/out").empty());  // no partial output left
  // A job re-rendered after the kill equals the same job rendered alone.
  write_bytes(d + "/one.jsonl", json{{"random_caption", 4}, {"seed", n - 1}, {"steps", 150}, {"output", "job" + std::to_string(n - 1)}}.dump() + "\n");
  r = run_ditto_mpi(1, "render --config stdit3-tiny --random-weights --frames 51 --height 40 --width 72 --no-mp4 --quiet "
                       "--jobs " + d + "/one.jsonl --out " + d + "/alone");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(at::equal(latent(d + "/alone/job" + std::to_string(n - 1)), latent(d + "/out/job" + std::to_string(n - 1))));
  // A second restart has nothing to do; a changed line for a finished output is refused, not re-rendered.
  r = run_ditto_mpi(2, args);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(json::parse(read_bytes(d + "/out/summary.json"))["already_done"], n);
  std::string changed = jobs;
  changed.replace(changed.find("\"seed\":0"), 8, "\"seed\":77");
  write_bytes(d + "/jobs.jsonl", changed);
  r = run_ditto_mpi(2, args);
  EXPECT_EQ(r.code, 1) << r.output;
  const auto fails = read_jsonl(d + "/out/failures.jsonl");
  ASSERT_EQ(fails.size(), 1u);
  EXPECT_NE(fails[0]["error"].get<std::string>().find("was rendered from different settings"), std::string::npos) << fails[0];
  const auto& id = finished.begin()->second;
  struct stat st {};
  ::stat(finished.begin()->first.c_str(), &st);
  EXPECT_EQ(st.st_ino, id.first);
}

TEST(Render, PlantedSymbolicLinksAreNeverWrittenThrough) {
  // An attacker (or a stale tree) plants links in the output directory: the manifest as a link to a
  // file outside, a dangling render.lock, a temporary name of write_file_atomic. Nothing is written
  // outside; the render refuses with a message that says why.
  const std::string d = temp_dir(), outside = d + "/outside.txt";
  write_bytes(outside, "untouched\n");
  write_bytes(d + "/jobs.jsonl", R"({"random_caption": 4, "steps": 2, "output": "a"})" "\n");
  run_command("mkdir -p " + d + "/out1 && ln -s " + outside + " " + d + "/out1/manifest.jsonl");
  auto r = run_ditto("render " + kTiny + "--jobs " + d + "/jobs.jsonl --out " + d + "/out1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("symbolic link"), std::string::npos) << r.output;
  EXPECT_EQ(read_bytes(outside), "untouched\n");

  run_command("mkdir -p " + d + "/out2 && ln -s " + d + "/created-by-lock " + d + "/out2/render.lock");
  r = run_ditto("render " + kTiny + "--jobs " + d + "/jobs.jsonl --out " + d + "/out2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("symbolic link"), std::string::npos) << r.output;
  EXPECT_FALSE(std::ifstream(d + "/created-by-lock").good());

  const std::string target = d + "/summary-target.json";
  ::symlink(outside.c_str(), (target + ".tmp." + std::to_string(::getpid())).c_str());
  write_file_atomic(target, [](std::ostream& os) { os << "{}\n"; });
  EXPECT_EQ(read_bytes(target), "{}\n");
  EXPECT_EQ(read_bytes(outside), "untouched\n");
}

TEST(Render, AnOversizedJobFailsAloneBeforeItAllocates) {
  // 1000 frames at 4096 x 4096 would take terabytes: the job is refused with the estimate (recorded as
  // a failure), the next job renders, and `sample` refuses it before loading the model.
  const std::string d = temp_dir();
  write_bytes(d + "/jobs.jsonl", R"({"random_caption": 4, "frames": 1000, "height": 4096, "width": 4096, "output": "huge"})" "\n"
                                 R"({"random_caption": 4, "steps": 2, "output": "small"})" "\n");
  auto r = run_ditto("render " + kTiny + "--jobs " + d + "/jobs.jsonl --out " + d + "/out");
  EXPECT_EQ(r.code, 1) << r.output;
  const auto failures = read_jsonl(d + "/out/failures.jsonl");
  ASSERT_EQ(failures.size(), 1u) << r.output;
  EXPECT_EQ(failures[0]["output"], "huge");
  EXPECT_NE(failures[0]["error"].get<std::string>().find("this job needs about"), std::string::npos) << failures[0].dump();
  EXPECT_TRUE(std::ifstream(d + "/out/small/latent.safetensors").good());
  r = run_ditto("sample " + kTiny + "--random-caption 4 --frames 1000 --height 4096 --width 4096 --out " + d + "/s");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("this job needs about"), std::string::npos) << r.output;
}
