// A render's job file: JSON Lines, one video per line. Every line is parsed and validated before
// anything renders; a bad line, and every line sharing an output name with another, is rejected with
// its line number and reason while the others go on.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pipeline/video_job.h"

namespace ditto {

// Where the files a job line names may be. A line's paths (caption_embedding, negative_caption_embedding,
// init_noise, model, and the files of its cache_opts) are resolved against the job file's directory
// and, with every link resolved, must lie under one of `allowed`: a job file cannot make ditto read
// /etc/passwd or another user's files. The command line's own paths are the operator's and are not
// confined.
struct JobPaths {
  std::string base_dir;               // where a line's relative paths start ("": the working directory)
  std::vector<std::string> allowed;   // canonical directories (empty: not confined)
};
// base_dir: the job file's directory; allowed: each directory made canonical (it need not exist yet).
JobPaths make_job_paths(const std::string& job_file, const std::vector<std::string>& allowed);
// `path` (a line's field `field`) resolved and checked; an Error naming the field when it does not
// exist or lies outside.
std::string confined_path(const JobPaths& paths, const std::string& field, const std::string& path);

// What a line does not say: the command line's settings and model.
struct JobDefaults {
  VideoJob job;
  std::string model;  // model directory ("": the run's --config model)
  JobPaths paths;     // where the line's files may be
};

struct JobLine {
  int line = 0;                 // 1-based line in the job file
  std::string output;           // the output name (a directory under the render's output)
  std::string model;            // model directory (empty: the run's model)
  nlohmann::ordered_json spec;  // the line's own fields
  VideoJob job;                 // the line over the defaults
};

struct RejectedLine {
  int line = 0;
  std::string output, reason;
};

// Letters, digits, '-', '_', '.'; not starting with '.'; at most 200 characters.
bool is_safe_output_name(const std::string& name);

// One line (its text) over the defaults; an Error saying what is wrong with it.
JobLine parse_job_line(const std::string& text, int line, const JobDefaults& defaults);

struct JobFile {
  int lines = 0;                       // non-blank lines
  std::vector<JobLine> jobs;           // valid lines with unique output names, in file order
  std::vector<RejectedLine> rejected;  // sorted by line
};
// Reads and validates `path`. `check` (optional) validates a parsed line further (its prompt against
// the model's text encoder, its cache policy against the model's units) by throwing. An unreadable
// file is an Error.
JobFile read_job_file(const std::string& path, const JobDefaults& defaults,
                      const std::function<void(const JobLine&)>& check = nullptr);

// The fields a job line may have, for help texts.
std::string job_fields_help();

}  // namespace ditto
