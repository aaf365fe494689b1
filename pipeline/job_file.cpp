// Parsing and validating job files (see job_file.h).
#include "pipeline/job_file.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "model/atomic_file.h"
#include "model/error.h"
#include "pipeline/video_options.h"

namespace ditto {

namespace {

// Fields a job line has besides the table's settings.
const std::vector<std::string> kLineFields = {"size", "model", "output"};

}  // namespace

bool is_safe_output_name(const std::string& s) {
  if (s.empty() || s[0] == '.' || s.size() > 200) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  return true;
}

std::string job_fields_help() {
  std::string s;
  for (const auto& f : job_setting_fields()) s += (s.empty() ? "" : ", ") + f;
  for (const auto& f : kLineFields) s += ", " + f;
  return s;
}

JobLine parse_job_line(const std::string& text, int line, const JobDefaults& d) {
  nlohmann::ordered_json j;
  try {
    j = parse_json<nlohmann::ordered_json>(text);
  } catch (const std::exception& e) {
    fail("not valid JSON (", e.what(), ")");
  }
  if (!j.is_object()) fail("a job must be a JSON object");
  const std::vector<std::string> settings = job_setting_fields();
  for (auto it = j.begin(); it != j.end(); ++it)
    if (std::find(settings.begin(), settings.end(), it.key()) == settings.end() &&
        std::find(kLineFields.begin(), kLineFields.end(), it.key()) == kLineFields.end()) {
      std::vector<std::string> known = settings;
      known.insert(known.end(), kLineFields.begin(), kLineFields.end());
      std::sort(known.begin(), known.end());
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      fail("unknown field '", it.key(), "' (known: ", list, ")");
    }
  JobLine jl;
  jl.line = line;
  jl.job = d.job;
  jl.model = d.model;
  VideoJob& v = jl.job;
  // The line's caption source replaces the command line's, and so does its negative caption; a line
  // that names its policy does not inherit the command line's policy options.
  if (j.contains("prompt") || j.contains("caption_embedding") || j.contains("random_caption")) {
    v.prompt.clear();
    v.caption_file.clear();
    v.random_caption = 0;
  }
  if (j.contains("negative_prompt") && j.contains("negative_caption_embedding"))
    fail("give 'negative_prompt' or 'negative_caption_embedding', not both");
  if (j.contains("negative_prompt") || j.contains("negative_caption_embedding")) {
    v.negative_prompt.clear();
    v.negative_caption_file.clear();
  }
  if (j.contains("cache") || j.contains("cache_opts")) v.cache_opts.clear();
  if (j.contains("size") && (j.contains("height") || j.contains("width"))) fail("give 'size' or 'height'/'width', not both");
  for (auto it = j.begin(); it != j.end(); ++it) apply_job_field(v, it.key(), it.value());
  const int sources = !v.prompt.empty() + !v.caption_file.empty() + (v.random_caption > 0);
  if (sources != 1) fail("give exactly one of 'prompt', 'caption_embedding' or 'random_caption'");
  if (j.contains("size")) {
    int h = 0, w = 0;
    char x = 0;
    std::istringstream in(j["size"].is_string() ? j["size"].get<std::string>() : "");
    if (!(in >> h >> x >> w) || x != 'x' || h <= 0 || w <= 0 || h > 1000000 || w > 1000000 || !in.eof())
      fail("'size' must be a string \"HEIGHTxWIDTH\", e.g. \"32x32\"");
    v.height = h;
    v.width = w;
  }
  if (j.contains("model")) {
    if (!j["model"].is_string()) fail("'model' must be a string");
    jl.model = j["model"].get<std::string>();
  }
  jl.output = "line" + std::to_string(line);
  if (j.contains("output")) {
    if (!j["output"].is_string()) fail("'output' must be a string");
    jl.output = j["output"].get<std::string>();
  }
  if (!is_safe_output_name(jl.output))
    fail("output name '", jl.output, "' must be letters, digits, '-', '_' or '.', not start with '.', at most 200 characters");
  // The render's own records share the output directory: a job may not take their names.
  for (const char* reserved : {"manifest.jsonl", "failures.jsonl", "summary.json", "render.lock"})
    if (jl.output == reserved) fail("output name '", jl.output, "' is the name of the render's own record; choose another");
  jl.spec = j;
  return jl;
}

JobFile read_job_file(const std::string& path, const JobDefaults& d, const std::function<void(const JobLine&)>& check) {
  std::istringstream in(read_text_file(path));
  JobFile f;
  std::vector<JobLine> parsed;
  std::map<std::string, std::vector<int>> by_name;
  std::string text;
  for (int line = 1; std::getline(in, text); ++line) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines are allowed
    ++f.lines;
    std::string name = "line" + std::to_string(line);
    try {
      JobLine jl = parse_job_line(text, line, d);
      name = jl.output;
      if (check) check(jl);
      by_name[jl.output].push_back(line);
      parsed.push_back(std::move(jl));
    } catch (const std::exception& e) {
      f.rejected.push_back({line, name, e.what()});
    }
  }
  // Two lines with one output name: neither is rendered (which one was meant is unknowable).
  for (auto& jl : parsed) {
    const auto& lines = by_name[jl.output];
    if (lines.size() > 1) {
      std::string others;
      for (int l : lines)
        if (l != jl.line) others += (others.empty() ? "" : ", ") + std::to_string(l);
      f.rejected.push_back({jl.line, jl.output, "output name '" + jl.output + "' is also used by line " + others});
    } else {
      f.jobs.push_back(std::move(jl));
    }
  }
  std::sort(f.rejected.begin(), f.rejected.end(), [](const RejectedLine& a, const RejectedLine& b) { return a.line < b.line; });
  return f;
}

}  // namespace ditto
