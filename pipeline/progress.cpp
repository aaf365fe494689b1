// Progress display (see progress.h).
#include "pipeline/progress.h"

#include <unistd.h>

#include <cstdio>

namespace ditto {

Progress::Progress(int total, std::string label, bool enabled)
    : total_(total), label_(std::move(label)), enabled_(enabled), tty_(::isatty(STDERR_FILENO)) {}

void Progress::update(int done, double step_s, double elapsed_s) {
  if (!enabled_) return;
  const double eta = done > 0 ? elapsed_s / done * (total_ - done) : 0.0;
  if (tty_) {
    const int width = 30, filled = total_ > 0 ? width * done / total_ : width;
    std::string bar(filled, '=');
    bar.resize(width, ' ');
    std::fprintf(stderr, "\r%s [%s] %d/%d  %.3f s/step  ETA %.1f s ", label_.c_str(), bar.c_str(), done, total_,
                 step_s, eta);
  } else {
    std::fprintf(stderr, "%s step %d/%d  %.3f s  elapsed %.1f s  ETA %.1f s\n", label_.c_str(), done, total_, step_s,
                 elapsed_s, eta);
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (enabled_ && tty_) std::fprintf(stderr, "\n");
}

}  // namespace ditto
