// `ditto profile`: runs the model uncached over prompts x seeds, records every unit's relative
// residual change per step, L1rel(i, t) = ||o_t - o_{t-1}||_1 / ||o_t||_1, averages it over the runs,
// and writes the curves (JSON, CSV, a units x steps heatmap PNG), a Block Caching schedule per
// threshold delta and MagCache's magnitude ratios of the block stack's residual. Runs under mpirun like sample: sequence/CFG-parallel groups, data-parallel groups
// split the runs; the sums are exact over shards (all-reduced), so every layout profiles alike.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cache/block_schedule.h"
#include "cache/cache_runner.h"
#include "cache/output_policies.h"
#include "dist/mpi_communicator.h"
#include "launcher/commands.h"
#include "pipeline/model_options.h"
#include "pipeline/video_job.h"
#include "pipeline/video_options.h"
#include "pipeline/video_writer.h"
#include "model/atomic_file.h"
#include "model/error.h"
#include "model/text_encoder.h"

namespace ditto {

int run_profile(const std::vector<std::string>& args, const MpiEnv& mpi) {
  ModelOptions mo;
  VideoJob base;
  std::string out_dir, deltas_text, comm_name;
  int prompts = 0, seeds = 0, sp = 1, cfg_parallel = 1;
  bool quiet = false;
  po::options_description desc("options");
  add_model_options(desc, mo);
  // clang-format off
  desc.add_options()
    ("prompts", po::value(&prompts)->default_value(32), "prompts (the demo's fixed prompt set; random captions for models without a text encoder)")
    ("seeds", po::value(&seeds)->default_value(2), "seeds per prompt")
    ("deltas", po::value(&deltas_text)->default_value("0.05,0.1,0.2,0.4"), "thresholds: one schedule file per delta")
    ("sp", po::value(&sp)->default_value(1), "sequence-parallel ranks per video")
    ("cfg-parallel", po::value(&cfg_parallel)->default_value(1), "2: conditional and unconditional branch on two ranks")
    ("comm", po::value(&comm_name)->default_value("auto"), "communication backend: auto | mpi | nccl")
    ("out", po::value(&out_dir)->default_value("profile"), "output directory: curves.json, curves.csv, heatmap.png, schedule-delta-D.json (Block Caching), magcache.json (MagCache's ratios)")
    ("quiet", po::bool_switch(&quiet), "no progress output");
  // clang-format on
  const std::vector<std::string> video_flags = {"steps", "cfg-scale", "cfg-scale-2", "expert-boundary", "frames",
                                                "height", "width", "sampler", "sigma-grid", "flow-shift"};
  add_video_options(desc, video_flags, shown_defaults(args));
  po::variables_map vm;
  if (!parse_command_line("profile", "profile per-unit change curves and derive Block Caching schedules", desc, args, vm))
    return 0;
  apply_video_options(vm, video_flags, base);
  if (prompts <= 0 || seeds <= 0) fail("--prompts and --seeds must be positive");
  std::vector<double> deltas;
  {
    std::stringstream ss(deltas_text);
    for (std::string d; std::getline(ss, d, ',');) {
      try {
        deltas.push_back(std::stod(d));
      } catch (const std::exception&) {
        fail("--deltas: '", d, "' is not a number");
      }
      if (!(deltas.back() >= 0)) fail("--deltas: thresholds must be >= 0");
    }
  }
  const WorldLayout wl = make_world_layout(mpi.size(), mpi.rank(), sp, cfg_parallel);
  const at::TensorOptions options = resolve_tensor_options(mo, mpi);
  const std::string backend = resolve_backend(comm_name, options.device());
  default_to_demo_model(mo);
  const std::unique_ptr<DiT> model = load_model(mo, options);
  const ModelOutline& outline = model->outline();
  const TextEncoderKind* text = text_encoder_kind(mo.model_dir);
  const bool has_prompts = text && text->prompt_set;

  MpiCommunicator world(MPI_COMM_WORLD);
  ProcessGroups groups = make_process_groups(world, wl);
  auto sp_comm = group_backend(std::move(groups.sp), backend, options.device(), 600);
  auto cfg_comm = group_backend(std::move(groups.cfg), backend, options.device(), 600);
  base = with_model_defaults(base, outline);  // a schedule is for this step count
  const int units = model->unit_count(), steps = base.steps;
  // Sum over this group's runs of each run's L1rel(unit, step).
  at::Tensor curve_sum = at::zeros({units, steps}, at::kDouble);
  // MagCache's magnitude ratios: per branch (conditional, unconditional) and step, the sum over this
  // group's runs of each run's mean over tokens of ||r_t|| / ||r_{t-1}|| (r the block stack's residual).
  at::Tensor ratio_sum = at::zeros({2, steps}, at::kDouble), ratio_runs = at::zeros({2, steps}, at::kDouble);
  const int cfg_rank = wl.cfg > 1 ? cfg_comm->rank() : 0;
  std::vector<float> timesteps;
  const int runs = prompts * seeds;
  const bool talk = !quiet && mpi.rank() == 0;
  if (talk)
    std::cerr << "ditto profile: " << model_source(mo) << ", " << runs << " uncached runs (" << prompts << " prompts x "
              << seeds << " seeds) of " << steps << " steps, " << wl.describe() << "\n";
  for (int run = wl.dp_index; run < runs; run += wl.dp) {
    VideoJob job = base;
    const int p = run / seeds, s = run % seeds;
    use_prompt_set(job, mo.model_dir, outline, "profile", p, s, seeds, 1000);
    job.decode = false;  // the curves read the residuals, not the frames
    // Per run: sums of |o_t - o_{t-1}| and |o_t| of this rank's shard, reduced over the group after.
    // Kept on the run's device (no transfer per unit); the residuals are kept in their own dtype.
    const auto sum_options = options.dtype(at::kDouble);
    at::Tensor num = at::zeros({units, steps}, sum_options), den = at::zeros({units, steps}, sum_options);
    std::vector<at::Tensor> prev(units);
    MagnitudeProfiler magnitudes(units, steps, cfg_rank, sum_options);
    RenderedVideo v = render_video(*model, mo.model_dir, model_source(mo), options, wl, job,
                                   {sp_comm.get(), cfg_comm.get(), groups.video.get(), backend}, nullptr,
                                   [&](CacheRunner& runner) {
                                     runner.set_unit_observer([&](int unit, int step, const at::Tensor& r) {
                                       const at::Tensor cur = r.detach();
                                       if (prev[unit].defined()) {
                                         num[unit][step] = (cur.to(at::kDouble) - prev[unit].to(at::kDouble)).abs().sum();
                                         den[unit][step] = cur.abs().sum(at::kDouble);
                                       }
                                       prev[unit] = cur;
                                       magnitudes.observe(unit, step, cur);
                                     });
                                   });
    num = num.cpu();
    den = den.cpu();
    groups.video->all_reduce(num, ReduceOp::Sum);
    groups.video->all_reduce(den, ReduceOp::Sum);
    curve_sum += at::where(den > 0, num / den.clamp_min(1e-300), at::zeros_like(num));
    at::Tensor mag_sum = magnitudes.sums().cpu(), mag_count = magnitudes.counts().cpu();
    groups.video->all_reduce(mag_sum, ReduceOp::Sum);
    groups.video->all_reduce(mag_count, ReduceOp::Sum);
    ratio_sum += at::where(mag_count > 0, mag_sum / mag_count.clamp_min(1), at::zeros_like(mag_sum));
    ratio_runs += (mag_count > 0).to(at::kDouble);
    if (timesteps.empty()) timesteps = v.metrics["timesteps"].get<std::vector<float>>();
    if (talk) std::cerr << "profile run " << run + 1 << "/" << runs << "\n";
  }
  // Every group's sums (a group's video ranks hold the same values; count each group once).
  if (groups.video->rank() != 0) curve_sum.zero_(), ratio_sum.zero_(), ratio_runs.zero_();
  world.all_reduce(curve_sum, ReduceOp::Sum);
  world.all_reduce(ratio_sum, ReduceOp::Sum);
  world.all_reduce(ratio_runs, ReduceOp::Sum);
  at::Tensor ts = at::tensor(timesteps.empty() ? std::vector<float>(steps, 0.f) : timesteps, at::kFloat).to(at::kDouble);
  world.all_reduce(ts, ReduceOp::Max);

  if (mpi.rank() == 0) {
    ChangeCurves c;
    c.depth = outline.shape.depth;
    c.units_per_layer = units / std::max(1, outline.shape.depth);
    c.steps = steps;
    c.runs = runs;
    for (int t = 0; t < steps; ++t) c.timesteps.push_back(static_cast<float>(ts[t].item<double>()));
    c.source = {{"model", model_source(mo)}, {"prompts", prompts}, {"seeds", seeds}, {"steps", steps},
                {"prompt_set", has_prompts ? text->name + " profile set" : "random captions"}};
    for (int u = 0; u < units; ++u) {
      c.units.push_back(outline.units[u].name);
      std::vector<double> curve(steps);
      for (int t = 0; t < steps; ++t) curve[t] = curve_sum[u][t].item<double>() / runs;
      c.l1rel.push_back(curve);
    }
    make_dir(out_dir);
    write_file_atomic(out_dir + "/curves.json", [&](std::ostream& os) { os << dump_json(c.to_json(), 2) << "\n"; });
    write_file_atomic(out_dir + "/curves.csv", [&](std::ostream& os) { os << c.to_csv(); });
    int w = 0, h = 0;
    const auto rgb = c.heatmap(12, &w, &h);
    write_png(out_dir + "/heatmap.png", w, h, rgb.data());
    if (!quiet) std::cerr << "ditto profile: wrote " << out_dir << "/curves.json, curves.csv, heatmap.png (units x steps)\n";
    // MagCache's ratios: step 0 has none (1); an unguided run has no unconditional branch (its = the conditional's).
    MagnitudeRatios mag;
    for (int b = 0; b < 2; ++b)
      for (int t = 0; t < steps; ++t) {
        const double n = ratio_runs[b][t].item<double>();
        (b ? mag.uncond : mag.cond).push_back(n > 0 ? ratio_sum[b][t].item<double>() / n : b && t > 0 ? mag.cond[t] : 1.0);
      }
    nlohmann::json mj = mag.to_json();
    mj["source"] = c.source;
    mj["timesteps"] = c.timesteps;
    write_file_atomic(out_dir + "/magcache.json", [&](std::ostream& os) { os << dump_json(mj, 2) << "\n"; });
    if (!quiet) std::cerr << "ditto profile: wrote " << out_dir << "/magcache.json (MagCache's ratios: --cache magcache --cache-opt ratios=" << out_dir << "/magcache.json)\n";
    for (double d : deltas) {
      BlockSchedule s = derive_schedule(c, d);
      char name[64];
      std::snprintf(name, sizeof name, "/schedule-delta-%g.json", d);
      s.save(out_dir + name);
      if (!quiet)
        std::fprintf(stderr, "  delta %-6g computes %5.1f%% of the units: %s%s\n", d, 100 * s.compute_fraction(),
                     out_dir.c_str(), name);
    }
  }
  world.barrier();
  return 0;
}

}  // namespace ditto
