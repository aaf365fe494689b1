// The pipeline's pieces apart from any model: the render scheduler driven through an in-process
// transport (leaders as threads), job-file lines over command-line defaults, the shared option table,
// and the output directory's lock and resume rules.
#include <gtest/gtest.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <sys/stat.h>

#include <thread>

#include "model/error.h"
#include "pipeline/job_file.h"
#include "pipeline/render_dir.h"
#include "pipeline/scheduler.h"
#include "pipeline/video_options.h"
#include "test_util.h"

using namespace ditto;
using ditto::test::read_bytes;
using ditto::test::temp_dir;
using ditto::test::write_bytes;

namespace {

// Message boxes shared by the scheduler and the leaders of one test.
struct Hub {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::pair<int, std::string>> requests;  // (leader, text)
  std::map<int, std::deque<std::string>> replies;
};

// One end of the hub: the scheduler's (receive/send), or leader `id`'s (request).
class HubTransport : public JobTransport {
 public:
  HubTransport(Hub& hub, int id) : hub_(hub), id_(id) {}
  std::string receive_request(int* from) override {
    std::unique_lock<std::mutex> g(hub_.m);
    hub_.cv.wait(g, [&] { return !hub_.requests.empty(); });
    auto [who, text] = hub_.requests.front();
    hub_.requests.pop_front();
    *from = who;
    return text;
  }
  void send_assignment(int to, const std::string& a) override {
    std::lock_guard<std::mutex> g(hub_.m);
    hub_.replies[to].push_back(a);
    hub_.cv.notify_all();
  }
  std::string request(const std::string& last) override {
    std::unique_lock<std::mutex> g(hub_.m);
    hub_.requests.push_back({id_, last});
    hub_.cv.notify_all();
    hub_.cv.wait(g, [&] { return !hub_.replies[id_].empty(); });
    std::string a = hub_.replies[id_].front();
    hub_.replies[id_].pop_front();
    return a;
  }

 private:
  Hub& hub_;
  int id_;
};

// Runs the scheduler over `jobs` jobs with `leaders` leader threads; a leader reports job i failed
// when fails(i). Returns, per job, who rendered it and what the scheduler recorded.
struct Outcome {
  std::map<size_t, int> rendered_by;       // job -> leader
  std::map<size_t, bool> recorded_ok;      // job -> the result the scheduler saw
  std::vector<size_t> started;             // in hand-out order
  std::vector<int> finished_leaders;       // leaders told "no more"
};
Outcome run(size_t jobs, int leaders, const std::function<bool(size_t)>& fails) {
  Hub hub;
  Outcome o;
  std::mutex om;
  HubTransport sched_end(hub, -1);
  SchedulerHooks hooks;
  hooks.on_start = [&](size_t i) { o.started.push_back(i); };
  hooks.on_result = [&](size_t i, const nlohmann::json& r) { o.recorded_ok[i] = r.at("ok").get<bool>(); };
  std::thread scheduler([&] {
    run_scheduler(sched_end, jobs, leaders, [](size_t i) { return nlohmann::json{{"output", "job" + std::to_string(i)}}; }, hooks);
  });
  std::vector<std::thread> workers;
  for (int l = 0; l < leaders; ++l)
    workers.emplace_back([&, l] {
      HubTransport end(hub, l);
      std::string last;
      for (;;) {
        const std::string a = end.request(last);
        if (a.empty()) break;
        const auto j = nlohmann::json::parse(a);
        const size_t i = j.at("index").get<size_t>();
        EXPECT_EQ(j.at("output"), "job" + std::to_string(i));
        {
          std::lock_guard<std::mutex> g(om);
          EXPECT_EQ(o.rendered_by.count(i), 0u) << "job " << i << " handed out twice";
          o.rendered_by[i] = l;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1 + (i * 7 + l) % 3));
        last = nlohmann::json{{"index", i}, {"ok", !fails(i)}}.dump();
      }
      std::lock_guard<std::mutex> g(om);
      o.finished_leaders.push_back(l);
    });
  for (auto& w : workers) w.join();
  scheduler.join();
  return o;
}

}  // namespace

TEST(Scheduler, EveryJobOnceEveryResultRecordedEveryLeaderStopped) {
  const Outcome o = run(17, 3, [](size_t i) { return i % 5 == 2; });
  ASSERT_EQ(o.rendered_by.size(), 17u);
  ASSERT_EQ(o.recorded_ok.size(), 17u);
  for (size_t i = 0; i < 17; ++i) EXPECT_EQ(o.recorded_ok.at(i), i % 5 != 2) << i;
  // Handed out in file order, each once.
  std::vector<size_t> in_order(17);
  for (size_t i = 0; i < 17; ++i) in_order[i] = i;
  EXPECT_EQ(o.started, in_order);
  EXPECT_EQ(std::set<int>(o.finished_leaders.begin(), o.finished_leaders.end()), (std::set<int>{0, 1, 2}));
  // More than one leader did work (the jobs are shared, not taken by the first to ask).
  std::set<int> workers;
  for (const auto& [job, leader] : o.rendered_by) workers.insert(leader);
  EXPECT_GT(workers.size(), 1u);
}

TEST(Scheduler, NoJobsStopsEveryLeaderAndMoreLeadersThanJobs) {
  Outcome o = run(0, 4, [](size_t) { return false; });
  EXPECT_TRUE(o.rendered_by.empty());
  EXPECT_EQ(o.finished_leaders.size(), 4u);
  o = run(2, 5, [](size_t) { return false; });
  EXPECT_EQ(o.rendered_by.size(), 2u);
  EXPECT_EQ(o.recorded_ok.size(), 2u);
  EXPECT_EQ(o.finished_leaders.size(), 5u);
}

TEST(Scheduler, AReportNamingAnUnknownJobIsAnError) {
  Hub hub;
  HubTransport s(hub, -1);
  hub.requests.push_back({0, nlohmann::json{{"index", 9}, {"ok", true}}.dump()});
  EXPECT_THROW(run_scheduler(s, 2, 1, nullptr, {}), Error);
}

TEST(JobFile, LinesOverrideTheCommandLineAndBadLinesSayWhy) {
  JobDefaults d;
  d.job.prompt = "a red circle";
  d.job.negative_prompt = "a blue square";
  d.job.cache = "adacache";
  d.job.cache_opts = {"preset=slow"};
  d.job.steps = 7;
  d.model = "/models/m";
  JobLine jl = parse_job_line(R"({"random_caption": 4, "seed": 3, "size": "24x40", "output": "v1"})", 5, d);
  EXPECT_TRUE(jl.job.prompt.empty());  // the line's caption source replaces the command line's
  EXPECT_EQ(jl.job.random_caption, 4);
  EXPECT_EQ(jl.job.seed, 3u);
  EXPECT_EQ(jl.job.height, 24);
  EXPECT_EQ(jl.job.width, 40);
  EXPECT_EQ(jl.job.steps, 7);
  EXPECT_EQ(jl.job.negative_prompt, "a blue square");
  EXPECT_EQ(jl.job.cache_opts, (std::vector<std::string>{"preset=slow"}));
  EXPECT_EQ(jl.model, "/models/m");
  EXPECT_EQ(jl.output, "v1");
  jl = parse_job_line(R"({"negative_caption_embedding": "n.safetensors", "cache": "static"})", 6, d);
  EXPECT_EQ(jl.job.prompt, "a red circle");
  EXPECT_TRUE(jl.job.negative_prompt.empty());
  EXPECT_EQ(jl.job.negative_caption_file, "n.safetensors");
  EXPECT_TRUE(jl.job.cache_opts.empty());  // the command line's options belong to its policy
  EXPECT_EQ(jl.output, "line6");
  jl = parse_job_line(R"({"cache_opts": {"threshold": 0.2, "preset": "fast"}})", 7, d);
  EXPECT_EQ(jl.job.cache_opts, (std::vector<std::string>{"preset=fast", "threshold=0.2"}));
  auto error = [&](const std::string& line) {
    try {
      parse_job_line(line, 1, d);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error("{not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(error("[1]").find("a job must be a JSON object"), std::string::npos);
  EXPECT_NE(error(R"({"stepz": 3})").find("unknown field 'stepz'"), std::string::npos);
  EXPECT_NE(error(R"({"steps": 0})").find("'steps' must be a positive integer"), std::string::npos);
  EXPECT_NE(error(R"({"seed": -1})").find("'seed' must be a non-negative integer"), std::string::npos);
  EXPECT_NE(error(R"({"cfg_scale": "high"})").find("'cfg_scale' must be a number >= 0"), std::string::npos);
  EXPECT_NE(error(R"({"sampler": "heun"})").find("'sampler': unknown sampler 'heun' (known: rflow, ddim, unipc, euler)"), std::string::npos);
  EXPECT_NE(error(R"({"size": "32", "output": "a"})").find("'size' must be a string"), std::string::npos);
  EXPECT_NE(error(R"({"size": "32x32", "height": 8})").find("not both"), std::string::npos);
  EXPECT_NE(error(R"({"prompt": "x", "random_caption": 3})").find("give exactly one of"), std::string::npos);
  EXPECT_NE(error(R"({"output": "../escape"})").find("output name '../escape'"), std::string::npos);
  EXPECT_NE(error(R"({"output": "manifest.jsonl"})").find("the name of the render's own record"), std::string::npos);
  EXPECT_NE(error(R"({"output": "summary.json"})").find("the name of the render's own record"), std::string::npos);
  EXPECT_NE(error(R"({"cache_opts": 3})").find("'cache_opts' must be an object"), std::string::npos);
  // cache_opts nested 66,000 levels deep (a stack overflow once): refused while parsing.
  EXPECT_NE(error(R"({"cache_opts": )" + std::string(66000, '[') + std::string(66000, ']') + "}").find("nested deeper than 64"),
            std::string::npos);

  // A whole file: blank lines skipped, duplicates rejected together, the check's verdict recorded.
  const std::string dir = temp_dir();
  write_bytes(dir + "/jobs.jsonl", "{\"output\": \"a\"}\n\n{\"output\": \"b\"}\n{\"output\": \"a\"}\n{\"output\": \"c\", \"steps\": 9}\n");
  const JobFile f = read_job_file(dir + "/jobs.jsonl", d, [](const JobLine& jl) {
    if (jl.job.steps == 9) fail("nine steps refused");
  });
  EXPECT_EQ(f.lines, 4);
  ASSERT_EQ(f.jobs.size(), 1u);
  EXPECT_EQ(f.jobs[0].output, "b");
  ASSERT_EQ(f.rejected.size(), 3u);
  EXPECT_EQ(f.rejected[0].line, 1);
  EXPECT_NE(f.rejected[0].reason.find("also used by line 4"), std::string::npos);
  EXPECT_EQ(f.rejected[2].reason, "nine steps refused");
  EXPECT_THROW(read_job_file(dir + "/none.jsonl", d), Error);
}

TEST(VideoOptions, OneTableForTheCommandLineWithTheModelsDefaultsInItsHelp) {
  ShownDefaults shown;
  shown.model = "the-model";
  shown.sampling = SamplingDefaults{};
  shown.sampling->frames = 16;
  shown.sampling->cfg_scale = 2.5;
  po::options_description desc;
  add_video_options(desc, all_video_flags(), shown);
  std::ostringstream help;
  help << desc;
  EXPECT_NE(help.str().find("(default: 16, the-model's)"), std::string::npos) << help.str();
  EXPECT_NE(help.str().find("(default: 2.5, the-model's)"), std::string::npos) << help.str();
  auto parse = [&](std::vector<std::string> args) {
    po::variables_map vm;
    po::store(po::command_line_parser(args).options(desc).run(), vm);
    VideoJob job;
    apply_video_options(vm, all_video_flags(), job);
    return job;
  };
  const VideoJob job = parse({"--frames", "24", "--seed", "18446744073709551615", "--cache-opt", "a=1", "--cache-opt", "b=2",
                              "--schedule", "s.json", "--no-mp4"});
  EXPECT_EQ(job.frames, 24);
  EXPECT_EQ(job.height, 0);  // not given: the model's default later
  EXPECT_EQ(job.seed, 18446744073709551615ull);
  EXPECT_EQ(job.cache_opts, (std::vector<std::string>{"a=1", "b=2", "schedule=s.json"}));
  EXPECT_FALSE(job.mp4);
  auto error = [&](std::vector<std::string> args) {
    try {
      parse(args);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(error({"--frames", "0"}), "--frames must be positive, got 0");
  EXPECT_EQ(error({"--height", "12abc"}), "--height: '12abc' is not an integer");
  EXPECT_EQ(error({"--seed", "-1"}), "--seed must be a non-negative integer, got -1");
  EXPECT_EQ(error({"--cfg-scale", "nan"}), "--cfg-scale must be a number >= 0, got nan");
  EXPECT_NE(error({"--flow-shift", "-2"}).find("flow shift must be a positive number"), std::string::npos);
  EXPECT_NE(error({"--sampler", "heun"}).find("unknown sampler 'heun'"), std::string::npos);
  EXPECT_EQ(error({"--upscale", "-1"}), "--upscale must be in 0..64, got -1");
  // The job file reads the same settings under its own names.
  VideoJob fromfile;
  EXPECT_TRUE(apply_job_field(fromfile, "flow_shift", 2.5));
  EXPECT_EQ(fromfile.flow_shift, 2.5);
  EXPECT_FALSE(apply_job_field(fromfile, "output", "x"));  // not a video setting
}

TEST(RenderDir, OneRenderAtATimeAndResumeSkipsFinishedRejectsChanged) {
  const std::string d = temp_dir() + "/out";
  JobLine a, b, c;
  a.line = 1, a.output = "a", a.spec = {{"seed", 1}};
  b.line = 2, b.output = "b", b.spec = {{"seed", 2}};
  c.line = 3, c.output = "c", c.spec = {{"seed", 3}};
  {
    RenderDir dir(d);
    EXPECT_THROW(RenderDir second(d), Error);  // the lock is held
    // Job a finished with its manifest line; b finished but its line was lost; c was in flight.
    for (const std::string name : {"a", "b"}) {
      const std::string p = begin_job_dir(d, name);
      make_dir(p);
      write_bytes(p + "/metrics.json", "{}");
      commit_job_dir(d, name);
    }
    dir.append_manifest({{"output", "a"}, {"line", 1}, {"job", a.spec}});
    make_dir(begin_job_dir(d, "c"));
  }
  RenderDir dir(d);  // the lock was released
  JobLine changed = a;
  changed.spec = {{"seed", 100}};
  RenderDir::Resume r = dir.resume({changed, b, c});
  ASSERT_EQ(r.todo.size(), 1u);
  EXPECT_EQ(r.todo[0].output, "c");
  EXPECT_EQ(r.skipped, 1);  // b, recovered from its directory
  EXPECT_EQ(r.recovered, 1);
  ASSERT_EQ(r.rejected.size(), 1u);
  EXPECT_NE(r.rejected[0].reason.find("rendered from different settings"), std::string::npos);
  EXPECT_NE(read_bytes(d + "/manifest.jsonl").find("\"recovered\":true"), std::string::npos);
  struct stat st {};
  EXPECT_NE(::stat((d + "/.c.partial").c_str(), &st), 0);  // the in-flight job was cleared
}
