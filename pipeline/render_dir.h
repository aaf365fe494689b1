// A render's output directory: one render at a time (render.lock), each job written into
// OUT/.NAME.partial and renamed to OUT/NAME when whole, then a line appended (and fsynced) to
// OUT/manifest.jsonl; failures in OUT/failures.jsonl, the summary in OUT/summary.json. A restart skips
// what is finished, removes what was in flight, and refuses to overwrite a finished job whose line
// has since changed.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pipeline/job_file.h"

namespace ditto {

class RenderDir {
 public:
  // Creates the directory and takes its lock; an Error when another render holds it.
  explicit RenderDir(std::string dir);
  ~RenderDir();  // releases the lock
  RenderDir(const RenderDir&) = delete;
  RenderDir& operator=(const RenderDir&) = delete;

  const std::string& path() const { return dir_; }

  // What a previous run left: finished jobs are skipped (a finished directory whose manifest line was
  // lost is recorded again), in-flight ones are cleared to render again, and a finished job whose line
  // changed is rejected.
  struct Resume {
    std::vector<JobLine> todo;
    std::vector<RejectedLine> rejected;
    int skipped = 0, recovered = 0;
  };
  Resume resume(std::vector<JobLine> jobs);

  // failures.jsonl, anew, with the rejected lines (stage "validation").
  void start_failures(const std::vector<RejectedLine>& rejected);
  void append_failure(const nlohmann::ordered_json& record);
  // A finished job's manifest line.
  void append_manifest(const nlohmann::ordered_json& entry);

  // summary.json (and a copy at `extra` when not empty).
  void write_summary(const nlohmann::ordered_json& summary, const std::string& extra);

 private:
  std::string dir_;
  int lock_fd_ = -1;
};

// A job's files in the output directory `dir`, written by its group's leader (any rank): the
// directory it is written into while in flight (emptied first), its rename into place when whole,
// and its removal after a failure.
std::string begin_job_dir(const std::string& dir, const std::string& name);
void commit_job_dir(const std::string& dir, const std::string& name);
void abandon_job_dir(const std::string& dir, const std::string& name);

// One line of failures.jsonl (and of the summary's failures).
nlohmann::ordered_json failure_record(int line, const std::string& output, const char* stage, const std::string& error);

}  // namespace ditto
