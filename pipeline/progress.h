// Step progress: a redrawn bar with time per step and ETA on a terminal, plain lines otherwise.
#pragma once
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

}  // namespace ditto
