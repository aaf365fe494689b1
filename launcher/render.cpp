// `ditto render`: a job file of videos over data-parallel groups. World rank 0 reads and validates the
// job file (pipeline/job_file), takes the output directory and resumes what a previous run left
// (pipeline/render_dir), and hands jobs to the groups as they become free (pipeline/scheduler, a
// thread beside its own rendering); every group renders its jobs with the pipeline and its leader
// writes them into the output directory.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <thread>

#include "cache/policy.h"
#include "dist/liveness.h"
#include "dist/mpi_communicator.h"
#include "dist/parallel_layout.h"
#include "launcher/commands.h"
#include "model/atomic_file.h"
#include "model/error.h"
#include "model/t5.h"
#include "model/text_encoder.h"
#include "pipeline/job_file.h"
#include "pipeline/model_options.h"
#include "pipeline/progress.h"
#include "pipeline/render_dir.h"
#include "pipeline/scheduler.h"
#include "pipeline/video_job.h"
#include "pipeline/video_options.h"

namespace ditto {

namespace {
// A job whose latent was written but whose video could not be decoded.
struct DecodeFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace


namespace {

using json = nlohmann::ordered_json;

// The settings a job line can leave to the command line.
const std::vector<std::string> kDefaultsFlags = {
    "prompt", "text-encoder", "max-sequence-length", "caption-embedding", "random-caption", "negative-prompt", "negative-caption-embedding", "init-noise",
    "seed", "frames", "height", "width", "steps", "cfg-scale", "cfg-scale-2", "expert-boundary", "fps", "sampler", "sigma-grid",
    "no-timestep-transform", "flow-shift", "cache", "cache-opt", "schedule", "vae", "vae-dtype", "vae-tile", "vae-tile-stride",
    "vae-chunk", "upscale", "png", "y4m", "no-mp4"};

// Validates a parsed line against its model without loading weights: the prompt against the model's
// text encoder, the cache policy and its options against the model's units and steps. `outlines`
// keeps each model's outline, read once for the whole file.
void check_against_model(const JobLine& jl, const ModelOptions& mo, std::map<std::string, ModelOutline>& outlines) {
  if (!jl.job.prompt.empty() && !jl.job.text_encoder.empty()) t5_dirs(jl.job.text_encoder);  // found, not loaded here
  // The model's own encoder checks the words it knows (the demo's); a T5 takes any text and is not
  // loaded for validation (umT5-XXL is 11 GB).
  if (!jl.job.prompt.empty() && jl.job.text_encoder.empty())
    if (const TextEncoderKind* kind = text_encoder_kind(jl.model); kind && kind->name != "t5")
      find_text_encoder(jl.model)->check(jl.job.prompt);
  std::optional<ModelOutline> outline;
  const std::string key = jl.model.empty() ? "config:" + mo.config_name : jl.model;
  if (auto it = outlines.find(key); it != outlines.end()) outline = it->second;
  else if (!jl.model.empty()) outline = outlines[key] = read_outline(jl.model);
  else if (!mo.config_name.empty()) outline = outlines[key] = builtin_outline(mo.config_name);
  if (outline)
    make_cache_policy(jl.job.cache, parse_policy_options(jl.job.cache_opts),
                      policy_context(*outline, with_model_defaults(jl.job, *outline).steps));
}

}  // namespace

int run_render(const std::vector<std::string>& args, const MpiEnv& mpi) {
  ModelOptions mo;
  JobDefaults d;
  std::string jobs_file, out_dir, comm_name, summary_path;
  std::vector<std::string> allow_dirs;
  int sp = 1, cfg_parallel = 1;
  bool quiet = false;
  po::options_description desc("options");
  add_model_options(desc, mo);
  // clang-format off
  desc.add_options()
    ("jobs", po::value(&jobs_file)->required(), ("job file, JSON Lines: one object per video (fields: " + job_fields_help() + ")").c_str())
    ("out", po::value(&out_dir)->required(), "output directory: NAME/ per job (video, latent, metrics.json), manifest.jsonl, failures.jsonl, summary.json")
    ("sp", po::value(&sp)->default_value(1), "sequence-parallel ranks per video (the world is dp x cfg x sp; each dp group renders one job at a time)")
    ("cfg-parallel", po::value(&cfg_parallel)->default_value(1), "2: conditional and unconditional branch on two ranks")
    ("summary", po::value(&summary_path), "also write the summary JSON here (always written to OUT/summary.json)")
    ("allow-dir", po::value(&allow_dirs)->composing(), "a directory whose files job lines may name (repeatable; default: the job file's directory, the output directory and --model's); a line's paths are relative to the job file's directory")
    ("comm", po::value(&comm_name)->default_value("auto"), "communication backend: auto | mpi | nccl")
    ("quiet", po::bool_switch(&quiet), "no progress output (the summary JSON is still written)");
  // clang-format on
  po::options_description defaults("defaults of the jobs (a job line's fields override them)");
  add_video_options(defaults, kDefaultsFlags, shown_defaults(args));
  desc.add(defaults);
  po::variables_map vm;
  if (!parse_command_line("render", "render a job file of videos over data-parallel groups", desc, args, vm)) return 0;
  apply_video_options(vm, kDefaultsFlags, d.job);
  const WorldLayout wl = make_world_layout(mpi.size(), mpi.rank(), sp, cfg_parallel);
  const at::TensorOptions options = resolve_tensor_options(mo, mpi);
  const auto dev = options.device();
  const std::string backend = resolve_backend(comm_name, dev);
  default_to_demo_model(mo);
  d.model = mo.model_dir;
  if (allow_dirs.empty()) {
    allow_dirs = {std::filesystem::path(jobs_file).parent_path().string(), out_dir};
    if (!mo.model_dir.empty()) allow_dirs.push_back(mo.model_dir);
    if (allow_dirs[0].empty()) allow_dirs[0] = ".";
  }
  d.paths = make_job_paths(jobs_file, allow_dirs);
  const bool root = mpi.rank() == 0, talk = root && !quiet;
  const auto t0 = std::chrono::steady_clock::now();

  // Rank 0: read and validate every line, then recover the state of a previous run.
  std::unique_ptr<RenderDir> out;
  JobFile file;
  std::vector<JobLine> jobs;
  std::vector<RejectedLine> rejected;
  int skipped = 0, recovered = 0;
  std::string setup_error;
  if (root) {
    try {
      std::map<std::string, ModelOutline> outlines;
      file = read_job_file(jobs_file, d, [&](const JobLine& jl) { check_against_model(jl, mo, outlines); });
      out = std::make_unique<RenderDir>(out_dir);
      RenderDir::Resume r = out->resume(std::move(file.jobs));
      jobs = std::move(r.todo);
      rejected = file.rejected;
      rejected.insert(rejected.end(), r.rejected.begin(), r.rejected.end());
      std::sort(rejected.begin(), rejected.end(), [](const RejectedLine& a, const RejectedLine& b) { return a.line < b.line; });
      skipped = r.skipped;
      recovered = r.recovered;
      out->start_failures(rejected);
      if (talk) {
        for (const auto& f : rejected) std::cerr << "render: " << jobs_file << " line " << f.line << ": " << f.reason << "\n";
        std::cerr << "ditto render: " << file.lines << " jobs in " << jobs_file << ": " << jobs.size() << " to render, "
                  << skipped << " already done" << (recovered ? " (" + std::to_string(recovered) + " recovered)" : "")
                  << ", " << rejected.size() << " rejected; " << wl.describe() << " (" << backend << ")\n";
      }
    } catch (const std::exception& e) {
      setup_error = e.what();
    }
  }
  // A setup failure on rank 0 (unreadable job file, output directory) ends every rank cleanly.
  MpiCommunicator world(MPI_COMM_WORLD);
  {
    at::Tensor bad = at::tensor({setup_error.empty() ? 0.0 : 1.0}, at::kDouble);
    world.broadcast(bad, 0);
    if (bad.item<double>() != 0) {
      if (root) fail(setup_error);
      return 1;
    }
  }

  ProcessGroups groups = make_process_groups(world, wl);
  std::unique_ptr<Communicator> sp_comm = group_backend(std::move(groups.sp), backend, dev, mo.timeout);
  std::unique_ptr<Communicator> cfg_comm = group_backend(std::move(groups.cfg), backend, dev, mo.timeout);
  Communicator& video = *groups.video;
  const bool leader = video.rank() == 0;
  // Rank 0's scheduler thread calls MPI beside the rendering thread: that needs MPI_THREAD_MULTIPLE.
  if (mpi.thread_support() < MPI_THREAD_MULTIPLE)
    fail("the MPI library grants thread level ", mpi.thread_support(), ", and render's job scheduler needs ",
         "MPI_THREAD_MULTIPLE (", MPI_THREAD_MULTIPLE, ") to call MPI beside the rendering thread: use an MPI built with "
         "thread support (Open MPI and MPICH are, by default)");
  MpiJobTransport transport(MPI_COMM_WORLD);

  // Rank 0's scheduler thread: records each leader's result and hands out the next job.
  RenderBoard board(static_cast<int>(jobs.size()), talk);
  int rendered = 0, failed = 0, unrecorded = 0;  // unrecorded: results the output directory could not take
  json outputs = json::array(), job_failures = json::array();
  std::thread scheduler;
  if (root) {
    SchedulerHooks hooks;
    hooks.on_start = [&](size_t i) { board.started(jobs[i].output); };
    hooks.on_result = [&](size_t i, const nlohmann::json& r) {
      const JobLine& jl = jobs[i];
      const bool ok = r.at("ok").get<bool>();
      try {
        if (ok) {
          out->append_manifest(json{{"output", jl.output}, {"line", jl.line}, {"job", jl.spec}, {"files", r.at("files")},
                                    {"seconds", r.at("seconds")}, {"compute_fraction", r.at("compute_fraction")}});
          outputs.push_back({{"output", jl.output}, {"line", jl.line}, {"seconds", r.at("seconds")},
                             {"compute_fraction", r.at("compute_fraction")}});
          ++rendered;
        } else {
          job_failures.push_back(failure_record(jl.line, jl.output, "render", r.at("error").get<std::string>()));
          out->append_failure(job_failures.back());
          ++failed;
        }
      } catch (const std::exception& e) {
        // The exit code still says so (a full disk must not end in "0 failed" and exit 0).
        ++unrecorded;
        if (!ok) ++failed;
        std::cerr << "render: cannot record " << jl.output << ": " << e.what() << "\n";
      }
      board.finished(jl.output, ok, ok ? "" : r.at("error").get<std::string>(), r.value("seconds", 0.0),
                     r.value("units_computed", 0.0), r.value("units_total", 0.0));
    };
    scheduler = std::thread([&, hooks] {
      try {
        run_scheduler(transport, jobs.size(), wl.dp,
                      [&](size_t i) { return nlohmann::json{{"line", jobs[i].line}, {"output", jobs[i].output}, {"spec", jobs[i].spec}}; },
                      hooks);
      } catch (const std::exception& e) {
        mpi.abort(std::string("render scheduler: ") + e.what());
      }
    });
  }
  // The scheduler thread references this frame: an exception must not unwind past it while the thread
  // runs. Rank 0 ends the job from here instead (every rank, as run_command would), before unwinding.
  struct EndJobIfRunning {
    std::thread& t;
    ~EndJobIfRunning() {
      if (t.joinable()) abort_job("render: rank 0 failed while its job scheduler was running (see the error above)");
    }
  } end_job{scheduler};
  try {
  // Every group: ask for a job, render it, report, until there is none. Every rank of the group
  // parses the job from the same line text and the same command line.
  std::string loaded_source;  // the group's resident model (one at a time)
  std::unique_ptr<DiT> loaded;
  std::string last_result;
  for (;;) {
    const std::string assignment = broadcast_string(video, leader ? transport.request(last_result) : "");
    if (assignment.empty()) break;
    const nlohmann::json a = nlohmann::json::parse(assignment);
    const std::string name = a.at("output").get<std::string>();
    const int line = a.at("line").get<int>();
    const auto t_job = std::chrono::steady_clock::now();
    std::string error;
    RenderedVideo v;
    JobLine jl;
    try {
      jl = parse_job_line(dump_json(a.at("spec")), line, d);
      ModelOptions jmo = mo;
      if (jl.model != mo.model_dir) jmo = ModelOptions{jl.model, "", false, 0, mo.dtype, mo.device, mo.threads, mo.timeout, mo.max_memory_gb, mo.attention};
      const std::string key = model_source(jmo);
      if (!loaded || loaded_source != key) {
        loaded.reset();  // free the old one before loading
        loaded = load_model(jmo, options);
        loaded_source = key;
      }
      v = render_video(*loaded, jmo.model_dir, key, options, wl, jl.job, {sp_comm.get(), cfg_comm.get(), &video, backend},
                       [&](int done, int steps, double, double) {
                         if (root) board.step(name, done, steps);
                       });
    } catch (const std::exception& e) {
      error = error_text(e);
    }
    // A job failed if it failed on any rank of its group (failures of bad input strike every rank alike).
    at::Tensor flag = at::tensor({error.empty() ? 0.0 : 1.0}, at::kDouble);
    video.all_reduce(flag, ReduceOp::Max);
    if (flag.item<double>() != 0 && error.empty()) error = "failed on another rank of the group (see its error output)";
    if (!error.empty() && !leader) std::cerr << "[rank " << mpi.rank() << "] render: " << name << ": " << error << "\n";
    if (!leader) continue;
    json result = {{"index", a.at("index")}, {"ok", false}};
    if (error.empty()) {
      // Written beside the final name, renamed into place when whole.
      try {
        const std::string partial = begin_job_dir(out_dir, name);
        v.metrics["command"] = "render";
        v.metrics["job"] = {{"line", line}, {"output", name}};
        const json m = write_video_outputs(partial, v, jl.job, loaded->outline());
        // A failed decode leaves the job unfinished, its latent kept where it was written.
        if (!v.decode_error.empty())
          throw DecodeFailed("decoding failed: " + v.decode_error + " (the latent is in " + partial +
                             "/latent.safetensors until the job runs again; ditto decode can retry it)");
        commit_job_dir(out_dir, name);
        const json& c = m.at("cache");
        result["ok"] = true;
        result["files"] = m.at("outputs");
        result["compute_fraction"] = c.at("compute_fraction");
        result["units_computed"] = c.at("units_computed");
        result["units_total"] = c.at("units_total");
        result["flops_total"] = c.at("flops_total");
        result["flops_saved"] = c.at("flops_saved");
      } catch (const DecodeFailed& e) {
        error = e.what();
      } catch (const std::exception& e) {
        abandon_job_dir(out_dir, name);
        error = std::string("writing the outputs: ") + e.what();
      }
    }
    if (!error.empty()) result["error"] = error;
    result["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_job).count();
    last_result = dump_json(result);
  }
  } catch (const std::exception& e) {
    if (scheduler.joinable()) abort_job(std::string("render: ") + e.what());
    throw;
  }
  int code = 0;
  if (root) {
    scheduler.join();
    board.end();
    const int nrejected = static_cast<int>(rejected.size());
    json fails = json::array();
    for (const auto& f : rejected) fails.push_back(failure_record(f.line, f.output, "validation", f.reason));
    for (const auto& f : job_failures) fails.push_back(f);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double fraction = board.compute_fraction();
    json summary = {{"command", "render"},
                    {"jobs_file", jobs_file},
                    {"jobs", file.lines},
                    {"rendered", rendered},
                    {"already_done", skipped},
                    {"failed", failed + nrejected},
                    {"rejected", nrejected},
                    {"ok", failed + nrejected == 0 && unrecorded == 0},
                    {"unrecorded", unrecorded},
                    {"seconds", seconds},
                    {"layout", {{"world", wl.world}, {"dp", wl.dp}, {"cfg", wl.cfg}, {"sp", wl.sp}}},
                    {"cache_compute_fraction", fraction},
                    {"cache_speedup_compute", fraction > 0 ? 1 / fraction : 0.0},
                    {"outputs", outputs},
                    {"failures", fails}};
    bool summary_written = true;
    try {
      out->write_summary(summary, summary_path);
    } catch (const std::exception& e) {
      summary_written = false;
      std::cerr << "render: cannot write the summary: " << e.what() << "\n";
    }
    if (talk) {
      std::fprintf(stderr, "ditto render: %d rendered, %d already done, %d failed (%d rejected) of %d jobs in %s", rendered,
                   skipped, failed + nrejected, nrejected, file.lines, fmt_seconds(seconds).c_str());
      if (fraction < 1)
        std::fprintf(stderr, "; caching computed %.0f%% of the blocks (%.2fx less block compute)", 100 * fraction, 1 / fraction);
      std::fprintf(stderr, "\n");
      for (const auto& f : fails)
        std::cerr << "  failed: line " << f.at("line") << " (" << f.at("output").get<std::string>()
                  << "): " << f.at("error").get<std::string>() << "\n";
      if (summary_written) std::cerr << "  summary: " << out_dir << "/summary.json\n";
    }
    if (unrecorded > 0)
      std::cerr << "render: " << unrecorded << " result" << (unrecorded > 1 ? "s" : "") << " could not be recorded in "
                << out_dir << " (see above)\n";
    code = failed + nrejected == 0 && unrecorded == 0 && summary_written ? 0 : 1;
    out.reset();  // releases the lock
  }
  at::Tensor c = at::tensor({static_cast<double>(code)}, at::kDouble);
  world.broadcast(c, 0);
  return static_cast<int>(c.item<double>());
}

}  // namespace ditto
