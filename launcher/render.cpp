// `ditto render`: a job file (JSON Lines) of many videos over data-parallel groups. World rank 0
// validates the file, hands jobs to the groups as they become free (a scheduler thread answering
// each group leader's request, which carries the previous job's result), and keeps the manifest,
// the failures file and the summary. A job's outputs are written into OUT/.NAME.partial and renamed
// to OUT/NAME when complete; the manifest line follows. A restart skips what is finished and removes
// what was in flight.
#include <dirent.h>
#include <fcntl.h>
#include <mpi.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "cache/policy.h"
#include "dist/mpi_communicator.h"
#include "dist/parallel_layout.h"
#include "launcher/commands.h"
#include "pipeline/model_options.h"
#include "pipeline/video_job.h"
#include "model/atomic_file.h"
#include "model/error.h"
#include "model/text_encoder.h"

namespace ditto {

namespace {

using json = nlohmann::ordered_json;
constexpr int kTagRequest = 701, kTagJob = 702;

struct JobLine {
  int line = 0;        // 1-based line in the job file
  std::string output;  // the output name (directory under --out)
  std::string model;   // model directory (empty: the run's model)
  json spec;           // the line's fields, after defaults
  VideoJob job;
};

struct Invalid {
  int line;
  std::string output, reason;
};

// One line of failures.jsonl (and of the summary's failures).
json failure_record(int line, const std::string& output, const char* stage, const std::string& error) {
  return {{"line", line}, {"output", output}, {"stage", stage}, {"error", error}};
}

// A job's settings: the line's fields over the command line's defaults.
struct Defaults {
  VideoJob job;
  std::string model;
};

bool is_safe_name(const std::string& s) {
  if (s.empty() || s[0] == '.' || s.size() > 200) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  return true;
}

// Parses one job line; throws an Error saying what is wrong with it.
JobLine parse_job(const std::string& text, int line, const Defaults& d) {
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    fail("not valid JSON (", e.what(), ")");
  }
  if (!j.is_object()) fail("a job must be a JSON object");
  static const std::set<std::string> known = {"prompt", "caption_embedding", "random_caption", "seed", "frames",
                                              "height", "width", "size", "steps", "cfg_scale", "cache", "cache_opts",
                                              "output", "model", "sampler", "flow_shift", "fps", "init_noise",
                                              "negative_prompt", "negative_caption_embedding"};
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!known.count(it.key())) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      fail("unknown field '", it.key(), "' (known: ", list, ")");
    }
  JobLine jl;
  jl.line = line;
  jl.job = d.job;
  jl.model = d.model;
  VideoJob& v = jl.job;
  auto str = [&](const char* k, std::string& dst) {
    if (!j.contains(k)) return;
    if (!j[k].is_string()) fail("'", k, "' must be a string");
    dst = j[k].get<std::string>();
  };
  auto positive = [&](const char* k, int& dst) {
    if (!j.contains(k)) return;
    if (!j[k].is_number_integer() || j[k].get<int64_t>() <= 0 || j[k].get<int64_t>() > 1000000)
      fail("'", k, "' must be a positive integer");
    dst = j[k].get<int>();
  };
  str("prompt", v.prompt);
  str("caption_embedding", v.caption_file);
  positive("random_caption", v.random_caption);
  if (j.contains("prompt") || j.contains("caption_embedding") || j.contains("random_caption")) {
    // The line's caption source replaces the command line's.
    if (!j.contains("prompt")) v.prompt.clear();
    if (!j.contains("caption_embedding")) v.caption_file.clear();
    if (!j.contains("random_caption")) v.random_caption = 0;
  }
  const int sources = !v.prompt.empty() + !v.caption_file.empty() + (v.random_caption > 0);
  if (sources != 1) fail("give exactly one of 'prompt', 'caption_embedding' or 'random_caption'");
  if (j.contains("seed")) {
    if (!j["seed"].is_number_unsigned()) fail("'seed' must be a non-negative integer");
    v.seed = j["seed"].get<uint64_t>();
  }
  positive("frames", v.frames);
  positive("height", v.height);
  positive("width", v.width);
  if (j.contains("size")) {
    if (j.contains("height") || j.contains("width")) fail("give 'size' or 'height'/'width', not both");
    int h = 0, w = 0;
    char x = 0;
    std::istringstream in(j["size"].is_string() ? j["size"].get<std::string>() : "");
    if (!(in >> h >> x >> w) || x != 'x' || h <= 0 || w <= 0 || !in.eof())
      fail("'size' must be a string \"HEIGHTxWIDTH\", e.g. \"32x32\"");
    v.height = h;
    v.width = w;
  }
  positive("steps", v.steps);
  positive("fps", v.fps);
  if (j.contains("cfg_scale")) {
    if (!j["cfg_scale"].is_number() || !(j["cfg_scale"].get<double>() >= 0)) fail("'cfg_scale' must be a number >= 0");
    v.cfg_scale = j["cfg_scale"].get<double>();
  }
  str("sampler", v.sampler);
  str("negative_prompt", v.negative_prompt);
  str("negative_caption_embedding", v.negative_caption_file);
  if (j.contains("negative_prompt") && j.contains("negative_caption_embedding"))
    fail("give 'negative_prompt' or 'negative_caption_embedding', not both");
  if (j.contains("negative_prompt")) v.negative_caption_file.clear();  // the line's replaces the command line's
  if (j.contains("negative_caption_embedding")) v.negative_prompt.clear();
  if (v.sampler != "rflow" && v.sampler != "ddim") fail("'sampler' must be rflow or ddim");
  if (j.contains("flow_shift")) {
    if (!j["flow_shift"].is_number() || !(j["flow_shift"].get<double>() >= 0) || !std::isfinite(j["flow_shift"].get<double>()))
      fail("'flow_shift' must be a number >= 0 (0: no shift)");
    v.flow_shift = j["flow_shift"].get<double>();
  }
  str("cache", v.cache);
  if (j.contains("cache_opts")) {
    v.cache_opts.clear();
    const json& o = j["cache_opts"];
    if (o.is_object()) {
      for (auto it = o.begin(); it != o.end(); ++it)
        v.cache_opts.push_back(it.key() + "=" + (it.value().is_string() ? it.value().get<std::string>() : it.value().dump()));
    } else if (o.is_array()) {
      for (const auto& e : o) {
        if (!e.is_string()) fail("'cache_opts' entries must be \"KEY=VALUE\" strings");
        v.cache_opts.push_back(e.get<std::string>());
      }
    } else {
      fail("'cache_opts' must be an object {\"key\": value} or a list of \"KEY=VALUE\"");
    }
  } else if (j.contains("cache")) {
    v.cache_opts.clear();  // the command line's options belong to the command line's policy
  }
  str("init_noise", v.init_noise);
  str("model", jl.model);
  jl.output = "line" + std::to_string(line);
  str("output", jl.output);
  if (!is_safe_name(jl.output))
    fail("output name '", jl.output, "' must be letters, digits, '-', '_' or '.', not start with '.', at most 200 characters");
  jl.spec = j;
  return jl;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read '", path, "'");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

bool file_exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

void remove_tree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    if (DIR* d = ::opendir(path.c_str())) {
      while (dirent* e = ::readdir(d)) {
        const std::string n = e->d_name;
        if (n != "." && n != "..") remove_tree(path + "/" + n);
      }
      ::closedir(d);
    }
    ::rmdir(path.c_str());
  } else {
    ::unlink(path.c_str());
  }
}

// Appends one line and flushes it to disk (the manifest and failures files).
void append_line(const std::string& path, const std::string& line) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) fail("cannot open '", path, "' for appending");
  const std::string s = line + "\n";
  const bool ok = ::write(fd, s.data(), s.size()) == static_cast<ssize_t>(s.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) fail("cannot append to '", path, "'");
}

// Point-to-point strings on the scheduler's own communicator (never mixed with the groups' collectives).
void send_string(MPI_Comm comm, int dest, int tag, const std::string& s) {
  MPI_Send(s.data(), static_cast<int>(s.size()), MPI_CHAR, dest, tag, comm);
}
// Polls (sleeping) so a waiting rank does not spin a core the renderers need.
std::string recv_string(MPI_Comm comm, int source, int tag, int* from = nullptr) {
  MPI_Status st;
  for (int flag = 0;;) {
    MPI_Iprobe(source, tag, comm, &flag, &st);
    if (flag) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  int n = 0;
  MPI_Get_count(&st, MPI_CHAR, &n);
  std::string s(static_cast<size_t>(n), '\0');
  MPI_Recv(s.data(), n, MPI_CHAR, st.MPI_SOURCE, tag, comm, MPI_STATUS_IGNORE);
  if (from) *from = st.MPI_SOURCE;
  return s;
}

// A string from the group's rank 0 to every rank of the group.
std::string group_broadcast(Communicator& group, const std::string& s) {
  at::Tensor n = at::tensor({static_cast<int64_t>(s.size())}, at::kLong);
  group.broadcast(n, 0);
  at::Tensor bytes = at::empty({n.item<int64_t>()}, at::kByte);
  if (group.rank() == 0 && !s.empty()) std::memcpy(bytes.data_ptr(), s.data(), s.size());
  if (bytes.numel() > 0) group.broadcast(bytes, 0);
  return std::string(reinterpret_cast<const char*>(bytes.data_ptr()), static_cast<size_t>(bytes.numel()));
}

std::string fmt_seconds(double s) {
  char b[32];
  if (s < 100) std::snprintf(b, sizeof b, "%.1f s", s);
  else std::snprintf(b, sizeof b, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return b;
}

// Rank 0's view of the run, shared by the scheduler thread and the rendering main thread.
class Board {
 public:
  Board(int total, bool talk) : total_(total), talk_(talk), tty_(::isatty(STDERR_FILENO)), t0_(now()) {}
  static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }
  void started(const std::string& name) {
    std::lock_guard<std::mutex> g(m_);
    ++running_;
    if (talk_ && !tty_) std::fprintf(stderr, "render: started %s\n", name.c_str());
    draw();
  }
  void finished(const std::string& name, bool ok, const std::string& reason, double seconds, double computed,
                double total_units) {
    std::lock_guard<std::mutex> g(m_);
    --running_;
    (ok ? done_ : failed_) += 1;
    units_computed_ += computed;
    units_total_ += total_units;
    if (talk_) {
      if (tty_) std::fprintf(stderr, "\r\033[K");
      if (ok)
        std::fprintf(stderr, "render: %s done in %s (%d/%d)\n", name.c_str(), fmt_seconds(seconds).c_str(), done_ + failed_, total_);
      else
        std::fprintf(stderr, "render: %s FAILED: %s\n", name.c_str(), reason.c_str());
    }
    draw();
  }
  void step(const std::string& name, int step, int steps) {
    std::lock_guard<std::mutex> g(m_);
    step_name_ = name;
    step_ = step;
    steps_ = steps;
    draw();
  }
  double hit_rate() const { return units_total_ > 0 ? 1 - units_computed_ / units_total_ : 0; }
  double compute_fraction() const { return units_total_ > 0 ? units_computed_ / units_total_ : 1; }
  double elapsed() const { return now() - t0_; }
  void end() {
    std::lock_guard<std::mutex> g(m_);
    if (talk_ && tty_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  void draw() {  // caller holds m_
    if (!talk_ || !tty_) return;
    const int finished = done_ + failed_;
    const double el = elapsed(), eta = finished > 0 ? el / finished * (total_ - finished) : 0;
    const int width = 24, filled = total_ > 0 ? width * finished / total_ : width;
    std::string bar(filled, '=');
    bar.resize(width, ' ');
    std::fprintf(stderr, "\r\033[Krender [%s] %d/%d done, %d failed, %d running | %s step %d/%d | ETA %s | cache hit %.0f%%",
                 bar.c_str(), done_, total_, failed_, running_, step_name_.c_str(), step_, steps_,
                 finished ? fmt_seconds(eta).c_str() : "?", 100 * hit_rate());
    std::fflush(stderr);
  }
  std::mutex m_;
  int total_, done_ = 0, failed_ = 0, running_ = 0, step_ = 0, steps_ = 0;
  std::string step_name_;
  double units_computed_ = 0, units_total_ = 0;
  bool talk_, tty_;
  double t0_;
};

}  // namespace

int run_render(const std::vector<std::string>& args, const MpiEnv& mpi) {
  ModelOptions mo;
  Defaults d;
  std::string jobs_file, out_dir, comm_name, summary_path, schedule;
  int sp = 1, cfg_parallel = 1;
  double nccl_timeout = 0;
  bool no_mp4 = false, quiet = false;
  po::options_description desc("options");
  add_model_options(desc, mo);
  // clang-format off
  desc.add_options()
    ("jobs", po::value(&jobs_file)->required(), "job file, JSON Lines: one object per video (fields: prompt | caption_embedding | random_caption, seed, frames, height, width or size \"HxW\", steps, cfg_scale, fps, sampler, flow_shift, negative_prompt | negative_caption_embedding, cache, cache_opts, init_noise, model, output)")
    ("out", po::value(&out_dir)->required(), "output directory: NAME/ per job (video, latent, metrics.json), manifest.jsonl, failures.jsonl, summary.json")
    ("sp", po::value(&sp)->default_value(1), "sequence-parallel ranks per video (the world is dp x cfg x sp; each dp group renders one job at a time)")
    ("cfg-parallel", po::value(&cfg_parallel)->default_value(1), "2: conditional and unconditional branch on two ranks")
    ("prompt", po::value(&d.job.prompt), "default prompt for jobs without a caption source")
    ("negative-prompt", po::value(&d.job.negative_prompt), "default negative prompt (see ditto sample --help)")
    ("negative-caption-embedding", po::value(&d.job.negative_caption_file), "default negative caption embedding file")
    ("seed", po::value(&d.job.seed)->default_value(42), "default seed")
    ("frames", po::value(&d.job.frames)->default_value(0), "default frames (0: the model's)")
    ("height", po::value(&d.job.height)->default_value(0), "default height (0: the model's)")
    ("width", po::value(&d.job.width)->default_value(0), "default width (0: the model's)")
    ("steps", po::value(&d.job.steps)->default_value(30), "default sampling steps")
    ("cfg-scale", po::value(&d.job.cfg_scale)->default_value(NAN, "model's"), "default CFG scale")
    ("fps", po::value(&d.job.fps)->default_value(24), "default frames per second")
    ("sampler", po::value(&d.job.sampler)->default_value("rflow"), "default sampler: rflow | ddim")
    ("flow-shift", po::value(&d.job.flow_shift)->default_value(NAN, "model's"), "default rflow timestep shift s (0: none), as ditto sample --flow-shift")
    ("cache", po::value(&d.job.cache)->default_value("none"), "default caching policy: none | static | pab | adacache | teacache | fbcache")
    ("cache-opt", po::value(&d.job.cache_opts)->composing(), "default policy option KEY=VALUE (repeatable)")
    ("schedule", po::value(&schedule), "block-cache schedule file (made by ditto profile) for --cache blockcache; the same as --cache-opt schedule=FILE")
    ("upscale", po::value(&d.job.upscale)->default_value(0), "pixel-space videos: enlarge each pixel N x N (0: to at least 256 px)")
    ("png", po::bool_switch(&d.job.png), "also write PNG frames")
    ("no-mp4", po::bool_switch(&no_mp4), "do not encode video.mp4 even when ffmpeg is installed")
    ("summary", po::value(&summary_path), "also write the summary JSON here (always written to OUT/summary.json)")
    ("comm", po::value(&comm_name)->default_value("auto"), "communication backend: auto | mpi | nccl")
    ("nccl-timeout", po::value(&nccl_timeout)->default_value(600), "seconds a NCCL collective may take before the job is ended")
    ("quiet", po::bool_switch(&quiet), "no progress output (the summary JSON is still written)");
  // clang-format on
  po::variables_map vm;
  if (!parse_command_line("render", "render a job file of videos over data-parallel groups", desc, args, vm)) return 0;
  d.job.mp4 = !no_mp4;
  if (!schedule.empty()) d.job.cache_opts.push_back("schedule=" + schedule);
  const WorldLayout wl = make_world_layout(mpi.size(), mpi.rank(), sp, cfg_parallel);
  const at::TensorOptions options = resolve_tensor_options(mo, mpi);
  const auto dev = options.device();
  const std::string backend = resolve_backend(comm_name, dev);
  default_to_demo_model(mo);
  d.model = mo.model_dir;
  const bool root = mpi.rank() == 0, talk = root && !quiet;
  const auto t0 = std::chrono::steady_clock::now();

  // Rank 0: read and validate every line, then recover the state of a previous run.
  std::vector<JobLine> jobs;
  std::vector<Invalid> invalid;
  int skipped = 0, recovered = 0, total_lines = 0;
  const std::string manifest = out_dir + "/manifest.jsonl", failures = out_dir + "/failures.jsonl";
  std::string setup_error;
  int lock_fd = -1;
  if (root) {
    try {
      make_dir(out_dir);
      // One render per output directory at a time (the lock goes with the process, even on SIGKILL).
      lock_fd = ::open((out_dir + "/render.lock").c_str(), O_RDWR | O_CREAT, 0644);
      if (lock_fd < 0 || ::flock(lock_fd, LOCK_EX | LOCK_NB) != 0)
        fail("another ditto render is writing to '", out_dir, "' (", out_dir, "/render.lock is held)");
      std::istringstream in(read_text(jobs_file));
      std::string text;
      std::map<std::string, std::vector<int>> by_name;
      for (int line = 1; std::getline(in, text); ++line) {
        if (text.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines are allowed
        ++total_lines;
        std::string name = "line" + std::to_string(line);
        try {
          JobLine jl = parse_job(text, line, d);
          name = jl.output;
          // Prompts must tokenize with the job's model's text encoder (when the model has one).
          if (!jl.job.prompt.empty())
            if (const auto text = find_text_encoder(jl.model)) text->check(jl.job.prompt);
          // The cache policy and its options, against the job's model's units and steps.
          std::optional<ModelOutline> outline;
          if (!jl.model.empty() && file_exists(jl.model + "/config.json")) outline = read_outline(jl.model);
          else if (jl.model.empty() && !mo.config_name.empty()) outline = builtin_outline(mo.config_name);
          if (outline)
            make_cache_policy(jl.job.cache, parse_policy_options(jl.job.cache_opts),
                              policy_context(*outline, with_model_defaults(jl.job, *outline).steps));
          by_name[jl.output].push_back(line);
          jobs.push_back(std::move(jl));
        } catch (const std::exception& e) {
          invalid.push_back({line, name, e.what()});
        }
      }
      // Two lines with one output name: neither is rendered (which one was meant is unknowable).
      std::vector<JobLine> unique;
      for (auto& jl : jobs) {
        const auto& lines = by_name[jl.output];
        if (lines.size() > 1) {
          std::string others;
          for (int l : lines)
            if (l != jl.line) others += (others.empty() ? "" : ", ") + std::to_string(l);
          invalid.push_back({jl.line, jl.output, "output name '" + jl.output + "' is also used by line " + others});
        } else {
          unique.push_back(std::move(jl));
        }
      }
      jobs = std::move(unique);
      std::sort(invalid.begin(), invalid.end(), [](const Invalid& a, const Invalid& b) { return a.line < b.line; });
      // What a previous run finished: the manifest's entries whose metrics.json exists. A directory
      // renamed into place whose manifest line was lost is finished too (the rename is the commit).
      std::map<std::string, json> finished;
      if (file_exists(manifest)) {
        std::istringstream m(read_text(manifest));
        for (std::string l; std::getline(m, l);) {
          try {
            json e = json::parse(l);
            finished[e.at("output").get<std::string>()] = e;
          } catch (const std::exception&) {  // a line cut short by a crash
          }
        }
      }
      std::vector<JobLine> todo;
      for (auto& jl : jobs) {
        const std::string dir = out_dir + "/" + jl.output;
        remove_tree(out_dir + "/." + jl.output + ".partial");  // in flight when the last run stopped
        if (!file_exists(dir + "/metrics.json")) {
          if (file_exists(dir)) {
            invalid.push_back({jl.line, jl.output, "'" + dir + "' exists but is not a finished render; move it away to render this job"});
            continue;
          }
          todo.push_back(std::move(jl));
          continue;
        }
        auto it = finished.find(jl.output);
        if (it == finished.end()) {
          append_line(manifest, json{{"output", jl.output}, {"line", jl.line}, {"job", jl.spec}, {"recovered", true}}.dump());
          ++recovered;
        } else if (it->second.contains("job") && it->second["job"] != jl.spec) {
          invalid.push_back({jl.line, jl.output, "'" + dir + "' was rendered from different settings (" +
                                                     it->second["job"].dump() + "); remove it to render this line"});
          continue;
        }
        ++skipped;
      }
      jobs = std::move(todo);
      write_file_atomic(failures, [&](std::ostream& os) {
        for (const auto& f : invalid) os << failure_record(f.line, f.output, "validation", f.reason).dump() << "\n";
      });
      if (talk) {
        for (const auto& f : invalid) std::cerr << "render: " << jobs_file << " line " << f.line << ": " << f.reason << "\n";
        std::cerr << "ditto render: " << total_lines << " jobs in " << jobs_file << ": " << jobs.size() << " to render, "
                  << skipped << " already done" << (recovered ? " (" + std::to_string(recovered) + " recovered)" : "")
                  << ", " << invalid.size() << " rejected; " << wl.describe() << " (" << backend << ")\n";
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
  std::unique_ptr<Communicator> sp_comm = group_backend(std::move(groups.sp), backend, dev, nccl_timeout);
  std::unique_ptr<Communicator> cfg_comm = group_backend(std::move(groups.cfg), backend, dev, nccl_timeout);
  Communicator& video = *groups.video;
  const bool leader = video.rank() == 0;
  MPI_Comm sched;
  MPI_Comm_dup(MPI_COMM_WORLD, &sched);

  // Rank 0's scheduler: answers each group leader's request (carrying its last result) with the next job.
  Board board(static_cast<int>(jobs.size()), talk);
  std::atomic<int> rendered{0}, failed{0};
  json outputs = json::array(), job_failures = json::array();
  std::thread scheduler;
  // An exception leaving this function ends the job (run_command aborts every rank); the scheduler
  // thread must not be joinable then.
  struct Detach {
    std::thread& t;
    ~Detach() {
      if (t.joinable()) t.detach();
    }
  } detach{scheduler};
  if (root) {
    scheduler = std::thread([&] {
      try {
        std::deque<size_t> queue;
        for (size_t i = 0; i < jobs.size(); ++i) queue.push_back(i);
        int active = wl.dp;
        while (active > 0) {
          int from = 0;
          const std::string msg = recv_string(sched, MPI_ANY_SOURCE, kTagRequest, &from);
          if (!msg.empty()) {
            const json r = json::parse(msg);
            const JobLine& jl = jobs.at(r.at("index").get<size_t>());
            const bool ok = r.at("ok").get<bool>();
            try {
              if (ok) {
                append_line(manifest, json{{"output", jl.output}, {"line", jl.line}, {"job", jl.spec},
                                           {"files", r.at("files")}, {"seconds", r.at("seconds")},
                                           {"compute_fraction", r.at("compute_fraction")}}.dump());
                outputs.push_back({{"output", jl.output}, {"line", jl.line}, {"seconds", r.at("seconds")},
                                   {"compute_fraction", r.at("compute_fraction")}});
                ++rendered;
              } else {
                job_failures.push_back(failure_record(jl.line, jl.output, "render", r.at("error").get<std::string>()));
                append_line(failures, job_failures.back().dump());
                ++failed;
              }
            } catch (const std::exception& e) {
              std::cerr << "render: cannot record " << jl.output << ": " << e.what() << "\n";
            }
            board.finished(jl.output, ok, ok ? "" : r.at("error").get<std::string>(), r.value("seconds", 0.0),
                           r.value("units_computed", 0.0), r.value("units_total", 0.0));
          }
          std::string reply;
          if (!queue.empty()) {
            const size_t i = queue.front();
            queue.pop_front();
            reply = json{{"index", i}, {"line", jobs[i].line}, {"output", jobs[i].output}, {"spec", jobs[i].spec}}.dump();
            board.started(jobs[i].output);
          } else {
            --active;
          }
          send_string(sched, from, kTagJob, reply);
        }
      } catch (const std::exception& e) {
        mpi.abort(std::string("render scheduler: ") + e.what());
      }
    });
  }

  // Every group: ask for a job, render it, report, until there is none. Every rank of the group
  // parses the job from the same line text and the same command line.
  std::string loaded_source;  // the group's resident model (one at a time)
  std::unique_ptr<DiT> loaded;
  std::string last_result;
  for (;;) {
    std::string assignment;
    if (leader) {
      send_string(sched, 0, kTagRequest, last_result);
      assignment = recv_string(sched, 0, kTagJob);
    }
    assignment = group_broadcast(video, assignment);
    if (assignment.empty()) break;
    const json a = json::parse(assignment);
    const std::string name = a.at("output").get<std::string>();
    const int line = a.at("line").get<int>();
    const auto t_job = std::chrono::steady_clock::now();
    std::string error;
    RenderedVideo v;
    JobLine jl;
    const DiT* model = nullptr;
    try {
      jl = parse_job(a.at("spec").dump(), line, d);
      ModelOptions jmo = mo;
      if (jl.model != mo.model_dir) jmo = ModelOptions{jl.model, "", false, 0, mo.dtype, mo.device, mo.threads};
      const std::string key = model_source(jmo);
      if (!loaded || loaded_source != key) {
        loaded.reset();  // free the old one before loading
        loaded = load_model(jmo, options);
        loaded_source = key;
      }
      model = loaded.get();
      v = render_video(*model, jmo.model_dir, key, options, wl, jl.job,
                       {sp_comm.get(), cfg_comm.get(), &video, backend}, [&](int done, int steps, double, double) {
                         if (root) board.step(name, done, steps);
                       });
    } catch (const std::exception& e) {
      error = e.what();
    }
    // A job failed if it failed on any rank of its group (failures of bad input strike every rank alike).
    at::Tensor flag = at::tensor({error.empty() ? 0.0 : 1.0}, at::kDouble);
    video.all_reduce(flag, ReduceOp::Max);
    if (flag.item<double>() != 0 && error.empty()) error = "failed on another rank of the group (see its error output)";
    if (!error.empty() && !leader) std::cerr << "[rank " << mpi.rank() << "] render: " << name << ": " << error << "\n";
    json result = {{"index", a.at("index")}, {"ok", false}};
    if (leader) {
      if (error.empty()) {
        // Written beside the final name, renamed into place when whole.
        const std::string partial = out_dir + "/." + name + ".partial", final_dir = out_dir + "/" + name;
        try {
          remove_tree(partial);
          v.metrics["command"] = "render";
          v.metrics["job"] = {{"line", line}, {"output", name}};
          const json m = write_video_outputs(partial, v, jl.job, model->outline());
          if (::rename(partial.c_str(), final_dir.c_str()) != 0)
            fail("cannot rename '", partial, "' to '", final_dir, "': ", std::strerror(errno));
          const json& c = m.at("cache");
          result["ok"] = true;
          result["files"] = m.at("outputs");
          result["compute_fraction"] = c.at("compute_fraction");
          result["units_computed"] = c.at("units_computed");
          result["units_total"] = c.at("units_total");
          result["flops_total"] = c.at("flops_total");
          result["flops_saved"] = c.at("flops_saved");
        } catch (const std::exception& e) {
          remove_tree(partial);
          error = std::string("writing the outputs: ") + e.what();
        }
      }
      if (!error.empty()) result["error"] = error;
      result["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_job).count();
      last_result = result.dump();
    }
  }
  int code = 0;
  if (root) {
    scheduler.join();
    board.end();
    const int rejected = static_cast<int>(invalid.size());
    json fails = json::array();
    for (const auto& f : invalid) fails.push_back(failure_record(f.line, f.output, "validation", f.reason));
    for (const auto& f : job_failures) fails.push_back(f);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    json summary = {{"command", "render"},
                    {"jobs_file", jobs_file},
                    {"jobs", total_lines},
                    {"rendered", rendered.load()},
                    {"already_done", skipped},
                    {"failed", failed.load() + rejected},
                    {"rejected", rejected},
                    {"ok", failed.load() + rejected == 0},
                    {"seconds", seconds},
                    {"layout", {{"world", wl.world}, {"dp", wl.dp}, {"cfg", wl.cfg}, {"sp", wl.sp}}},
                    {"cache_compute_fraction", board.compute_fraction()},
                    {"cache_speedup_compute", board.compute_fraction() > 0 ? 1 / board.compute_fraction() : 0.0},
                    {"outputs", outputs},
                    {"failures", fails}};
    try {
      write_file_atomic(out_dir + "/summary.json", [&](std::ostream& os) { os << summary.dump(2) << "\n"; });
      if (!summary_path.empty()) write_file_atomic(summary_path, [&](std::ostream& os) { os << summary.dump(2) << "\n"; });
    } catch (const std::exception& e) {
      std::cerr << "render: " << e.what() << "\n";
    }
    if (talk) {
      std::fprintf(stderr, "ditto render: %d rendered, %d already done, %d failed (%d rejected) of %d jobs in %s",
                   rendered.load(), skipped, failed.load() + rejected, rejected, total_lines, fmt_seconds(seconds).c_str());
      if (board.compute_fraction() < 1)
        std::fprintf(stderr, "; caching computed %.0f%% of the blocks (%.2fx less block compute)",
                     100 * board.compute_fraction(), 1 / board.compute_fraction());
      std::fprintf(stderr, "\n");
      for (const auto& f : fails)
        std::cerr << "  failed: line " << f.at("line") << " (" << f.at("output").get<std::string>()
                  << "): " << f.at("error").get<std::string>() << "\n";
      std::cerr << "  summary: " << out_dir << "/summary.json\n";
    }
    code = failed.load() + rejected == 0 ? 0 : 1;
    ::unlink((out_dir + "/render.lock").c_str());
    ::close(lock_fd);
  }
  at::Tensor c = at::tensor({static_cast<double>(code)}, at::kDouble);
  world.broadcast(c, 0);
  MPI_Comm_free(&sched);
  return static_cast<int>(c.item<double>());
}

}  // namespace ditto
