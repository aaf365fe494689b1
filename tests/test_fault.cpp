// The fault suite (label `fault`): what ditto promises when a rank stops answering, the disk refuses
// writes, a render is killed mid-encode, or a job file holds bytes and paths it should not. Each test
// provokes the fault for real (SIGSTOP, a file-size limit, SIGKILL, planted links) and checks the
// promise the README's reliability section makes.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/atomic_file.h"
#include "test_util.h"

using ditto::test::exists;
using ditto::test::read_bytes;
using ditto::test::read_jsonl;
using ditto::test::run_command;
using ditto::test::run_ditto;
using ditto::test::run_ditto_mpi;
using ditto::test::temp_dir;
using ditto::test::write_bytes;
using json = nlohmann::json;

namespace {

const std::string kTiny = "--config ditto-demo-tiny --random-weights --quiet ";
const std::string kStdit = "--config stdit3-tiny --random-weights --random-caption 5 --frames 51 --height 40 "
                           "--width 72 --seed 9 --quiet ";

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The processes (pids) whose command line holds "--out DIR", read from /proc (no pgrep needed).
std::string survivors(const std::string& dir) {
  std::string found;
  const std::string needle = std::string("--out") + '\0' + dir;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string pid = entry.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string cmdline = read_bytes(entry.path().string() + "/cmdline");
    if (cmdline.find(needle) != std::string::npos) found += pid + " ";
  }
  return found;
}

// An `ffmpeg` on PATH that records its arguments, copies its input descriptor to its output one (or,
// with FAKE_FFMPEG_HANG=FILE, writes its pid there and hangs as a stuck encoder would).
std::string fake_ffmpeg_dir(const std::string& d) {
  const std::string bin = d + "/bin";
  run_command("mkdir -p " + bin);
  write_bytes(bin + "/ffmpeg", "#!/bin/sh\n"
                               "[ \"$1\" = -version ] && exit 0\n"
                               "printf '%s\\n' \"$@\" > \"$FAKE_FFMPEG_LOG\"\n"
                               "if [ -n \"$FAKE_FFMPEG_HANG\" ]; then echo $$ > \"$FAKE_FFMPEG_HANG\"; exec sleep 120; fi\n"
                               "exec cat /dev/fd/3 > /dev/fd/4\n");
  ::chmod((bin + "/ffmpeg").c_str(), 0755);
  return bin;
}

}  // namespace

// A rank stopped with SIGSTOP (as a frozen node would be) never reaches the next collective: its peers
// wait --timeout, ping it, get no answer and end the job naming it, instead of waiting forever.
TEST(Fault, ARankThatStopsAnsweringEndsSampleAfterTheTimeout) {
  const std::string d = temp_dir();
  const auto t0 = std::chrono::steady_clock::now();
  auto r = run_ditto_mpi(2, "sample " + kStdit + "--sp 2 --steps 20 --timeout 2 --out " + d, "DITTO_FAULT_INJECT=1:2:stop");
  const double s = seconds_since(t0);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("[rank 0] error: MPI "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("rank 1 does not answer: stopped, hung or dead"), std::string::npos) << r.output;
  EXPECT_LT(s, 40.0) << "the job did not end after the timeout";
  EXPECT_EQ(survivors(d), "") << "a rank outlived the job";
  EXPECT_FALSE(exists(d + "/latent.safetensors")) << "a failed job left an output behind";
}

// A slow rank answers the ping: a 3 s pause under --timeout 1 delays the job but does not end it.
TEST(Fault, ASlowRankIsWaitedFor) {
  const std::string d = temp_dir();
  auto r = run_ditto_mpi(2, "sample " + kStdit + "--sp 2 --steps 3 --timeout 1 --out " + d, "DITTO_FAULT_INJECT=1:2:sleep");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(exists(d + "/latent.safetensors"));
}

// In a render, the stopped rank is a group leader the scheduler (rank 0) waits on: rank 0 ends the
// job after the timeout; a restart renders what is left, keeping what was finished.
TEST(Fault, ARankThatStopsAnsweringEndsRenderAndARestartFinishes) {
  const std::string d = temp_dir();
  std::string jobs;
  for (int i = 0; i < 4; ++i) jobs += R"({"random_caption": 4, "steps": 3, "output": "v)" + std::to_string(i) + "\"}\n";
  write_bytes(d + "/jobs.jsonl", jobs);
  const std::string args = "render " + kTiny + "--no-mp4 --timeout 2 --jobs " + d + "/jobs.jsonl --out " + d + "/out";
  const auto t0 = std::chrono::steady_clock::now();
  auto r = run_ditto_mpi(2, args, "DITTO_FAULT_INJECT=1:2:stop");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("rank 1 does not answer"), std::string::npos) << r.output;
  EXPECT_LT(seconds_since(t0), 60.0);
  EXPECT_EQ(survivors(d + "/out"), "");
  r = run_ditto_mpi(2, args);
  ASSERT_EQ(r.code, 0) << r.output;
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(exists(d + "/out/v" + std::to_string(i) + "/metrics.json")) << i;
}

// The encoder is started without a shell and given descriptors, not paths: an output directory named
// with quotes, spaces and a leading dash encodes, and ffmpeg never sees the path.
TEST(Fault, TheEncoderRunsWithoutAShellWhateverThePath) {
  const std::string d = temp_dir(), bin = fake_ffmpeg_dir(d);
  const std::string out = d + "/-a'b \"c\" $(touch " + d + "/pwned)";
  const std::string quoted = ditto::test::shell_quote(out);
  auto r = run_command("PATH=" + bin + ":$PATH FAKE_FFMPEG_LOG=" + d + "/args " + DITTO_BINARY + " sample " + kTiny +
                       "--random-caption 4 --steps 2 --y4m --out " + quoted);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(exists(d + "/pwned"));
  EXPECT_TRUE(exists(out + "/metrics.json"));
  ASSERT_TRUE(exists(out + "/video.mp4")) << r.output;
  EXPECT_EQ(read_bytes(out + "/video.mp4"), read_bytes(out + "/video.y4m"));  // the fake encoder copies
  const std::string args = read_bytes(d + "/args");
  EXPECT_NE(args.find("/dev/fd/3"), std::string::npos) << args;
  EXPECT_NE(args.find("/dev/fd/4"), std::string::npos) << args;
  EXPECT_EQ(args.find(d), std::string::npos) << args;
}

// A render killed while ffmpeg encodes leaves no ffmpeg behind (it dies with its parent).
TEST(Fault, AKilledRenderLeavesNoEncoderBehind) {
  const std::string d = temp_dir(), bin = fake_ffmpeg_dir(d);
  write_bytes(d + "/jobs.jsonl", R"({"random_caption": 4, "steps": 2, "output": "a"})" "\n");
  auto r = run_command("cd " + d + "; (PATH=" + bin + ":$PATH FAKE_FFMPEG_LOG=" + d + "/args FAKE_FFMPEG_HANG=" + d +
                       "/ffpid " + DITTO_BINARY + " render " + kTiny + "--jobs jobs.jsonl --out " + d +
                       "/out & echo $! > dpid; wait) & "
                       "for i in $(seq 1200); do [ -s ffpid ] && break; sleep 0.1; done; "
                       "[ -s ffpid ] || { echo 'NO ENCODER'; exit 1; }; kill -9 $(cat dpid); "
                       "for i in $(seq 50); do kill -0 $(cat ffpid) 2>/dev/null || { echo CLEAN; exit 0; }; sleep 0.1; done; "
                       "kill -9 $(cat ffpid); echo ORPHAN");
  EXPECT_NE(r.output.find("CLEAN"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(d + "/out/a")) << "a killed job was committed";
}

// MPI's start-up writes shared-memory segments larger than the limits below: PMIx keeps its data in
// a hash table instead, so only ditto's own writes meet the limit.
const std::string kNoShm = "PMIX_MCA_gds=hash ";

// A disk that refuses writes (here: a file-size limit of 8 KB, EFBIG, as a full disk gives ENOSPC):
// the jobs fail with the reason, nothing half-written is committed, and the exit code says so even
// when the failures and the summary could not be recorded.
TEST(Fault, ADiskThatRefusesWritesFailsTheRenderLoudly) {
  const std::string d = temp_dir();
  write_bytes(d + "/jobs.jsonl", R"({"random_caption": 4, "steps": 2, "output": "a"})" "\n"
                                 R"({"random_caption": 4, "steps": 2, "output": "b"})" "\n");
  auto r = run_command("cd " + d + " && trap '' XFSZ && ulimit -f 8 && " + kNoShm + DITTO_BINARY + " render " + kTiny +
                       "--no-mp4 --jobs jobs.jsonl --out out");
  EXPECT_EQ(r.code, 1) << r.output;
  const auto failures = read_jsonl(d + "/out/failures.jsonl");
  ASSERT_EQ(failures.size(), 2u) << r.output;
  EXPECT_NE(failures[0]["error"].get<std::string>().find("over the file-size limit"), std::string::npos) << failures[0];
  EXPECT_FALSE(exists(d + "/out/a/metrics.json"));
  EXPECT_FALSE(exists(d + "/out/b/metrics.json"));
  // 1 KB: not even the summary fits.
  r = run_command("cd " + d + " && trap '' XFSZ && ulimit -f 1 && " + kNoShm + DITTO_BINARY + " render " + kTiny +
                  "--no-mp4 --jobs jobs.jsonl --out out2");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("cannot write the summary"), std::string::npos) << r.output;
}

// One line with a byte that is not UTF-8 is rejected alone; a model directory whose name is not UTF-8
// samples and writes its outputs (the path is recorded with U+FFFD for the bad byte).
TEST(Fault, BytesThatAreNotUtf8AreOneLinesProblem) {
  const std::string d = temp_dir();
  write_bytes(d + "/jobs.jsonl", "{\"random_caption\": 4, \"steps\": 2, \"output\": \"a\", \"negative_prompt\": \"x\xff\"}\n"
                                 R"({"random_caption": 4, "steps": 2, "output": "b"})" "\n");
  auto r = run_ditto("render " + kTiny + "--no-mp4 --jobs " + d + "/jobs.jsonl --out " + d + "/out");
  EXPECT_EQ(r.code, 1) << r.output;
  const auto failures = read_jsonl(d + "/out/failures.jsonl");
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_NE(failures[0]["error"].get<std::string>().find("not UTF-8 text: byte 71 is 0xFF"), std::string::npos)
      << failures[0].dump();
  EXPECT_TRUE(exists(d + "/out/b/metrics.json"));

  const std::string model = d + "/model-\xff";
  r = run_command("cp -r " + std::string(DITTO_SOURCE_DIR) + "/models/ditto-demo '" + model + "'");
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_ditto("sample --model '" + model + "' --prompt 'a red circle' --steps 2 --no-mp4 --quiet --out " + d + "/s");
  ASSERT_EQ(r.code, 0) << r.output;
  const json m = json::parse(read_bytes(d + "/s/metrics.json"));
  EXPECT_NE(m.dump().find("model-\xef\xbf\xbd"), std::string::npos);
}

// A job line may name only files under the allowed directories (the job file's, the output's and
// --model's unless --allow-dir says otherwise), its relative paths start at the job file's directory,
// and a link inside an allowed directory that points outside is refused as well.
TEST(Fault, JobLinesReadOnlyWhereTheOperatorAllows) {
  const std::string d = temp_dir();
  run_command("mkdir -p " + d + "/jobs " + d + "/elsewhere && echo 0.1:2/1.0:1 > " + d + "/jobs/codebook.txt && cp " +
              d + "/jobs/codebook.txt " + d + "/elsewhere/codebook.txt && ln -s /etc/passwd " + d + "/jobs/link.txt");
  write_bytes(d + "/jobs/jobs.jsonl",
              R"({"steps": 2, "output": "etc", "caption_embedding": "/etc/passwd"})" "\n"
              R"({"random_caption": 4, "steps": 2, "output": "link", "cache": "adacache", "cache_opts": {"codebook": "@link.txt"}})" "\n"
              R"({"random_caption": 4, "steps": 2, "output": "up", "cache": "adacache", "cache_opts": {"codebook": "@../elsewhere/codebook.txt"}})" "\n"
              R"({"random_caption": 4, "steps": 2, "output": "rel", "cache": "adacache", "cache_opts": {"codebook": "@codebook.txt"}})" "\n"
              R"({"random_caption": 4, "steps": 2, "output": "vae", "vae": "/usr/lib"})" "\n");
  // Run from another directory: "codebook.txt" is the job file's neighbour, not the working directory's.
  auto r = run_command("cd / && " + std::string(DITTO_BINARY) + " render " + kTiny + "--no-mp4 --jobs " + d +
                       "/jobs/jobs.jsonl --out " + d + "/out");
  EXPECT_EQ(r.code, 1) << r.output;
  std::map<std::string, std::string> why;  // by the line's output name
  const char* names[] = {"", "etc", "link", "up", "rel", "vae"};
  for (const auto& f : read_jsonl(d + "/out/failures.jsonl")) why[names[f["line"].get<int>()]] = f["error"];
  ASSERT_EQ(why.size(), 4u) << r.output;
  EXPECT_NE(why["vae"].find("'vae' names '/usr/lib', outside the directories"), std::string::npos) << why["vae"];
  EXPECT_NE(why["etc"].find("'caption_embedding' names '/etc/passwd', outside the directories"), std::string::npos) << why["etc"];
  EXPECT_NE(why["link"].find("(/etc/passwd), outside"), std::string::npos) << why["link"];
  EXPECT_NE(why["up"].find("outside the directories this render may read"), std::string::npos) << why["up"];
  EXPECT_EQ(why["etc"].find("root:"), std::string::npos) << "a file's content was echoed";
  EXPECT_TRUE(exists(d + "/out/rel/metrics.json"));
  // --allow-dir opens the other directory.
  r = run_command("cd / && " + std::string(DITTO_BINARY) + " render " + kTiny + "--no-mp4 --jobs " + d +
                  "/jobs/jobs.jsonl --out " + d + "/out2 --allow-dir " + d);
  EXPECT_TRUE(exists(d + "/out2/up/metrics.json")) << r.output;
  EXPECT_FALSE(exists(d + "/out2/etc")) << r.output;
}

// --max-memory is the operator's budget per rank: a job estimated to need more is refused before it
// allocates, with both figures; in a render it fails alone.
TEST(Fault, AMemoryBudgetRefusesJobsOverIt) {
  const std::string d = temp_dir();
  auto r = run_ditto("sample " + kTiny + "--random-caption 4 --steps 2 --no-mp4 --max-memory 0.0001 --out " + d + "/s");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("this job needs about"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("and about 0.0001 GB is available"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(d + "/s/latent.safetensors"));
  r = run_ditto("sample " + kTiny + "--random-caption 4 --steps 2 --no-mp4 --max-memory 8 --out " + d + "/ok");
  EXPECT_EQ(r.code, 0) << r.output;
}

// A render's job folder (.NAME.partial, in a directory others may write to) swapped for a link while
// the job writes into it: the write is refused and nothing lands where the link points.
TEST(Fault, AJobFolderSwappedForALinkIsNotWrittenThrough) {
  const std::string d = temp_dir(), partial = d + "/.a.partial", elsewhere = d + "/elsewhere";
  run_command("mkdir -p " + partial + " " + elsewhere);
  ditto::guard_output_dir(partial);
  ditto::write_file_atomic(partial + "/first.txt", [](std::ostream& os) { os << "ok\n"; });
  EXPECT_EQ(read_bytes(partial + "/first.txt"), "ok\n");
  run_command("rm -rf " + partial + " && ln -s " + elsewhere + " " + partial);
  try {
    ditto::write_file_atomic(partial + "/latent.safetensors", [](std::ostream& os) { os << "data\n"; });
    ADD_FAILURE() << "wrote through a swapped-in link";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("was replaced by a link"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(exists(elsewhere + "/latent.safetensors"));
  ditto::unguard_output_dir(partial);
}

// A file a job names is read only up to the size its kind can have (a codebook: 64 MiB), so a huge
// or growing file cannot exhaust memory; the job fails alone with the reason.
TEST(Fault, OversizedFilesAreRefusedUnread) {
  const std::string d = temp_dir();
  run_command("truncate -s 70M " + d + "/big.txt");
  write_bytes(d + "/jobs.jsonl", R"({"random_caption": 4, "steps": 2, "output": "big", "cache": "adacache", "cache_opts": {"codebook": "@big.txt"}})" "\n");
  auto r = run_ditto("render " + kTiny + "--no-mp4 --jobs " + d + "/jobs.jsonl --out " + d + "/out");
  EXPECT_EQ(r.code, 1) << r.output;
  const auto failures = read_jsonl(d + "/out/failures.jsonl");
  ASSERT_EQ(failures.size(), 1u) << r.output;
  EXPECT_NE(failures[0]["error"].get<std::string>().find("larger than 64 MiB"), std::string::npos) << failures[0];
}
