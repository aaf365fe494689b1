// `ditto calibrate`: trains Block Caching's scale-shift layers with the base model frozen. The
// student samples with the schedule (reusing units, its reused residuals scale-shifted); at every
// reused unit the teacher, the same model uncached, computes the unit's true residual from the
// student's own input to it, and the loss is the mean squared difference. Adam on the layers only.
#include <c10/core/GradMode.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "cache/block_schedule.h"
#include "cache/cache_runner.h"
#include "dist/mpi_communicator.h"
#include "launcher/commands.h"
#include "pipeline/model_options.h"
#include "pipeline/video_job.h"
#include "pipeline/video_options.h"
#include "model/error.h"
#include "model/text_encoder.h"

namespace ditto {

int run_calibrate(const std::vector<std::string>& args, const MpiEnv& mpi) {
  ModelOptions mo;
  VideoJob base;
  std::string schedule_path, out_path;
  int prompts = 0, seeds = 0, epochs = 0;
  double lr = 0;
  bool quiet = false;
  po::options_description desc("options");
  add_model_options(desc, mo);
  // clang-format off
  desc.add_options()
    ("schedule", po::value(&schedule_path)->required(), "block-cache schedule (from ditto profile): which units are reused when")
    ("prompts", po::value(&prompts)->default_value(16), "training prompts (the demo's prompt set; random captions for models without a text encoder)")
    ("seeds", po::value(&seeds)->default_value(1), "seeds per prompt")
    ("epochs", po::value(&epochs)->default_value(4), "passes over the prompts x seeds (0: write the identity)")
    ("lr", po::value(&lr)->default_value(1e-3), "Adam learning rate (one update per video)")
    ("out", po::value(&out_path)->default_value("calibration.safetensors"), "the scale-shift layers (use with --cache-opt calibration=FILE)")
    ("quiet", po::bool_switch(&quiet), "no progress output");
  // clang-format on
  const std::vector<std::string> video_flags = {"cfg-scale", "frames", "height", "width", "flow-shift"};
  add_video_options(desc, video_flags, shown_defaults(args));
  po::variables_map vm;
  if (!parse_command_line("calibrate", "train Block Caching's scale-shift calibration", desc, args, vm)) return 0;
  apply_video_options(vm, video_flags, base);
  if (mpi.size() > 1) fail("ditto calibrate runs on one rank");
  if (prompts <= 0 || seeds <= 0 || epochs < 0) fail("--prompts and --seeds must be positive, --epochs >= 0");
  const at::TensorOptions options = resolve_tensor_options(mo, mpi);
  default_to_demo_model(mo);
  const std::unique_ptr<DiT> model = load_model(mo, options);
  const ModelOutline& outline = model->outline();
  const BlockSchedule schedule = BlockSchedule::load(schedule_path);
  if (schedule.depth != outline.shape.depth)
    fail("schedule '", schedule_path, "' is for depth ", schedule.depth, ", the model has ", outline.shape.depth);
  ScaleShift ss = ScaleShift::identity(schedule, outline.units, outline.shape.hidden_size);
  struct Adam {
    at::Tensor m, v;
  };
  std::vector<std::pair<at::Tensor, Adam>> params;
  for (auto& [u, p] : ss.params())
    for (at::Tensor* t : {&p.first, &p.second}) {
      t->requires_grad_(true);
      params.push_back({*t, {at::zeros_like(*t), at::zeros_like(*t)}});
    }

  base.steps = schedule.steps;
  base.cache = "blockcache";
  base.cache_opts = {"schedule=" + schedule_path};
  MpiCommunicator world(MPI_COMM_WORLD);
  const WorldLayout wl = make_world_layout(1, 0, 1, 1);
  ProcessGroups groups = make_process_groups(world, wl);
  const bool talk = !quiet;
  if (talk)
    std::cerr << "ditto calibrate: " << model_source(mo) << ", schedule " << schedule_path << " (delta " << schedule.delta
              << ", computes " << 100 * schedule.compute_fraction() << "% of the units), " << ss.params().size()
              << " calibrated units, " << epochs << " epochs of " << prompts * seeds << " videos\n";
  int64_t adam_step = 0;
  // Adam on the gradients accumulated over one video's reused units (every timestep in one update: a
  // per-step update chases the current timestep and measured worse).
  auto adam = [&] {
    c10::NoGradGuard no_grad;
    ++adam_step;
    const double b1 = 0.9, b2 = 0.999;
    for (auto& [t, a] : params) {
      if (!t.grad().defined()) continue;
      const at::Tensor g = t.grad();
      a.m.mul_(b1).add_(g, 1 - b1);
      a.v.mul_(b2).addcmul_(g, g, 1 - b2);
      t.sub_(lr * (a.m / (1 - std::pow(b1, adam_step))) / ((a.v / (1 - std::pow(b2, adam_step))).sqrt() + 1e-8));
      t.mutable_grad() = at::Tensor();
    }
  };
  double first_loss = NAN, last_loss = NAN, baseline = NAN;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    // On the run's device, read once per epoch (no transfer per reused unit).
    at::Tensor loss_sum = at::zeros({}, options.dtype(at::kDouble)), base_sum = at::zeros({}, options.dtype(at::kDouble));
    int64_t terms = 0;
    for (int run = 0; run < prompts * seeds; ++run) {
      VideoJob job = base;
      const int p = run / seeds, s = run % seeds;
      use_prompt_set(job, mo.model_dir, outline, "calibration", p, s, seeds, 2000);  // not the profile's seeds
      job.decode = false;  // the losses read the residuals, not the frames
      render_video(*model, mo.model_dir, model_source(mo), options, wl, job,
                   {groups.sp.get(), groups.cfg.get(), groups.video.get(), "mpi"},
                   nullptr, [&](CacheRunner& runner) {
                     runner.set_reuse_hook([&](int idx, int, const at::Tensor& cached, const at::Tensor& x,
                                               const DiTContext& c, AttentionSeam* seam) {
                       if (!ss.has(idx)) return cached;
                       at::Tensor target;
                       {
                         c10::NoGradGuard no_grad;
                         target = runner.compute_unit(idx, x, c, seam).to(at::kFloat);
                       }
                       const at::Tensor pred = ss.apply(idx, cached.detach(), c.timestep_embedding().detach()).to(at::kFloat);
                       const at::Tensor loss = (pred - target).pow(2).mean();
                       loss.backward();
                       loss_sum += loss.detach().to(at::kDouble);
                       base_sum += (cached.to(at::kFloat) - target).pow(2).mean().to(at::kDouble);
                       ++terms;
                       return pred.detach().to(cached.scalar_type());
                     });
                   });
      adam();
    }
    const double mean = terms ? loss_sum.item<double>() / terms : 0, base_mean = terms ? base_sum.item<double>() / terms : 0;
    if (epoch == 0) first_loss = mean, baseline = base_mean;
    last_loss = mean;
    if (talk)
      std::fprintf(stderr, "calibrate epoch %d/%d loss %.6g (uncalibrated reuse %.6g, %lld reused units)\n", epoch + 1,
                   epochs, mean, base_mean, static_cast<long long>(terms));
  }
  char buf[64];
  auto num = [&](double v) {
    std::snprintf(buf, sizeof buf, "%.9g", v);
    return std::string(buf);
  };
  ss.save(out_path, {{"schedule", schedule_path}, {"delta", num(schedule.delta)}, {"epochs", std::to_string(epochs)},
                     {"first_epoch_loss", num(first_loss)}, {"last_epoch_loss", num(last_loss)},
                     {"uncalibrated_loss", num(baseline)}, {"model", model_source(mo)}});
  if (talk) std::cerr << "ditto calibrate: wrote " << out_path << " (use --cache-opt calibration=" << out_path << ")\n";
  return 0;
}

}  // namespace ditto
