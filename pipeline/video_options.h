// One table of a video's settings. The command-line options of sample, render, profile and
// calibrate and the fields of a job file all come from it: one parser and one check per setting, and
// --help shows the defaults the model in question actually uses.
#pragma once
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/family.h"
#include "pipeline/video_job.h"

namespace ditto {

namespace po = boost::program_options;

// What --help shows as the defaults of the settings the model decides.
struct ShownDefaults {
  std::string model;                        // "models/ditto-demo", "random:stdit3-tiny", or empty
  std::optional<SamplingDefaults> sampling;  // empty: the model could not be read; help says "the model's"
  std::optional<ModelOutline> outline;
};
// The defaults of the model that `args` name (--model DIR or --config NAME; the shipped demo when
// neither): read from its config alone, never an Error.
ShownDefaults shown_defaults(const std::vector<std::string>& args);

// Adds the settings called `flags` (CLI names, e.g. "frames", "cache-opt") to desc, in table order.
void add_video_options(po::options_description& desc, const std::vector<std::string>& flags, const ShownDefaults& shown);
// After parsing: every given setting of `flags` into job (the others keep job's values). A value a
// setting cannot take is an Error naming the option.
void apply_video_options(const po::variables_map& vm, const std::vector<std::string>& flags, VideoJob& job);
// The options of every setting.
std::vector<std::string> all_video_flags();

// A job file's field into job; an Error naming the field when the value does not fit. Returns false
// when `field` is not a setting of the table.
bool apply_job_field(VideoJob& job, const std::string& field, const nlohmann::json& value);
// The job-file fields the table holds, in table order.
std::vector<std::string> job_setting_fields();

}  // namespace ditto
