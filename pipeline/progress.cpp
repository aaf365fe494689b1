// Progress display (see progress.h).
#include "pipeline/progress.h"

#include <unistd.h>

#include <chrono>
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

std::string fmt_seconds(double s) {
  char b[32];
  if (s < 100) std::snprintf(b, sizeof b, "%.1f s", s);
  else std::snprintf(b, sizeof b, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return b;
}

RenderBoard::RenderBoard(int total, bool talk) : total_(total), talk_(talk), tty_(::isatty(STDERR_FILENO)), t0_(now()) {}

double RenderBoard::now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void RenderBoard::started(const std::string& name) {
  std::lock_guard<std::mutex> g(m_);
  ++running_;
  if (talk_ && !tty_) std::fprintf(stderr, "render: started %s\n", name.c_str());
  draw();
}

void RenderBoard::finished(const std::string& name, bool ok, const std::string& reason, double seconds, double computed,
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

void RenderBoard::step(const std::string& name, int step, int steps) {
  std::lock_guard<std::mutex> g(m_);
  step_name_ = name;
  step_ = step;
  steps_ = steps;
  draw();
}

double RenderBoard::hit_rate() const {
  std::lock_guard<std::mutex> g(m_);
  return units_total_ > 0 ? 1 - units_computed_ / units_total_ : 0;
}

double RenderBoard::compute_fraction() const {
  std::lock_guard<std::mutex> g(m_);
  return units_total_ > 0 ? units_computed_ / units_total_ : 1;
}

double RenderBoard::elapsed() const { return now() - t0_; }

void RenderBoard::end() {
  std::lock_guard<std::mutex> g(m_);
  if (talk_ && tty_) std::fprintf(stderr, "\r\033[K");
}

void RenderBoard::draw() {
  if (!talk_ || !tty_) return;
  const int finished = done_ + failed_;
  const double el = elapsed(), eta = finished > 0 ? el / finished * (total_ - finished) : 0;
  const int width = 24, filled = total_ > 0 ? width * finished / total_ : width;
  std::string bar(filled, '=');
  bar.resize(width, ' ');
  const double hit = units_total_ > 0 ? 1 - units_computed_ / units_total_ : 0;
  std::fprintf(stderr, "\r\033[Krender [%s] %d/%d done, %d failed, %d running | %s step %d/%d | ETA %s | cache hit %.0f%%",
               bar.c_str(), done_, total_, failed_, running_, step_name_.c_str(), step_, steps_,
               finished ? fmt_seconds(eta).c_str() : "?", 100 * hit);
  std::fflush(stderr);
}

}  // namespace ditto
