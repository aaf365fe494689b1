// Parsing and validating job files (see job_file.h).
#include "pipeline/job_file.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "cache/policy.h"
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

JobPaths make_job_paths(const std::string& job_file, const std::vector<std::string>& allowed) {
  namespace fs = std::filesystem;
  JobPaths p;
  std::error_code ec;
  p.base_dir = fs::weakly_canonical(fs::absolute(job_file, ec).parent_path(), ec).string();
  for (const auto& a : allowed) {
    const fs::path c = fs::weakly_canonical(fs::absolute(a, ec), ec);
    if (ec) fail("--allow-dir '", a, "': ", ec.message());
    p.allowed.push_back(c.string());
  }
  return p;
}

std::string confined_path(const JobPaths& paths, const std::string& field, const std::string& path) {
  namespace fs = std::filesystem;
  fs::path p(path);
  if (p.is_relative() && !paths.base_dir.empty()) p = fs::path(paths.base_dir) / p;
  if (paths.allowed.empty()) return p.string();
  std::error_code ec;
  const fs::path c = fs::canonical(p, ec);
  if (ec) fail("'", field, "': cannot open '", path, "': ", ec.message());
  const std::string cs = c.string();
  std::string list;
  for (const auto& a : paths.allowed) {
    if (cs == a || (cs.size() > a.size() && cs.compare(0, a.size(), a) == 0 && (a.back() == '/' || cs[a.size()] == '/')))
      return cs;
    list += (list.empty() ? "" : ", ") + a;
  }
  fail("'", field, "' names '", path, "'", cs != path ? " (" + cs + ")" : "", ", outside the directories this render may read (",
       list, "; --allow-dir DIR allows another)");
}

JobLine parse_job_line(const std::string& text, int line, const JobDefaults& d) {
  if (const size_t bad = first_invalid_utf8(text); bad != std::string::npos) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02X", static_cast<unsigned char>(text[bad]));
    fail("not UTF-8 text: byte ", bad + 1, " is ", hex, " (a job file is JSON Lines, which is UTF-8)");
  }
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
    jl.model = confined_path(d.paths, "model", j["model"].get<std::string>());
  }
  // The files the line names (the command line's are the operator's own and stay as given).
  if (j.contains("caption_embedding")) v.caption_file = confined_path(d.paths, "caption_embedding", v.caption_file);
  if (j.contains("negative_caption_embedding"))
    v.negative_caption_file = confined_path(d.paths, "negative_caption_embedding", v.negative_caption_file);
  if (j.contains("init_noise")) v.init_noise = confined_path(d.paths, "init_noise", v.init_noise);
  if (j.contains("text_encoder")) v.text_encoder = confined_path(d.paths, "text_encoder", v.text_encoder);
  if (j.contains("vae")) v.vae = confined_path(d.paths, "vae", v.vae);
  if (j.contains("cache_opts"))
    for (std::string& item : v.cache_opts) {
      const size_t eq = item.find('=');
      if (eq == std::string::npos) continue;  // refused with its reason by the policy
      const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
      const std::string file = policy_option_file(key, value);
      if (!file.empty())
        item = policy_option_with_file(key, value, confined_path(d.paths, "cache_opts." + key, file));
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
  std::istringstream in(read_text_file(path, size_t{1} << 30));
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
