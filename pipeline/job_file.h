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

// What a line does not say: the command line's settings and model.
struct JobDefaults {
  VideoJob job;
  std::string model;  // model directory ("": the run's --config model)
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
