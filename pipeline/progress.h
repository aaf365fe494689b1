// Progress on stderr: a video's steps (Progress), and a render's jobs (RenderBoard); a redrawn bar on
// a terminal, plain lines otherwise.
#pragma once
#include <mutex>
#include <string>

namespace ditto {

class Progress {
 public:
  Progress(int total, std::string label, bool enabled);
  // Reports that `done` steps are finished, the last of which took `step_seconds`.
  void update(int done, double step_seconds, double elapsed_seconds);
  void finish();

 private:
  int total_;
  std::string label_;
  bool enabled_, tty_;
};

// "12.3 s", or "4m05s" from 100 s on.
std::string fmt_seconds(double seconds);

// Rank 0's view of a render, shared by the scheduler thread and the rendering main thread: jobs done /
// total, failures, running jobs, the current job's step, the ETA and the cache hit rate.
class RenderBoard {
 public:
  RenderBoard(int total, bool talk);
  void started(const std::string& name);
  void finished(const std::string& name, bool ok, const std::string& reason, double seconds, double units_computed,
                double units_total);
  void step(const std::string& name, int step, int steps);
  double hit_rate() const;
  double compute_fraction() const;
  double elapsed() const;
  void end();

 private:
  static double now();
  void draw();  // the caller holds m_
  mutable std::mutex m_;
  int total_, done_ = 0, failed_ = 0, running_ = 0, step_ = 0, steps_ = 0;
  std::string step_name_;
  double units_computed_ = 0, units_total_ = 0;
  bool talk_, tty_;
  double t0_;
};

}  // namespace ditto
