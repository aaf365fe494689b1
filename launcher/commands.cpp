// The command table and its dispatch (see commands.h).
#include "launcher/commands.h"

#include <iostream>

#include "demo/demo.h"
#include "demo/trainer.h"
#include "model/error.h"
#include "model/t5.h"
#include "pipeline/version.h"

namespace ditto {

namespace {

void print_usage(std::ostream& os) {
  os << "ditto " << ditto_version() << " (" << ditto_git_sha() << "): sample video Diffusion Transformers on one or many GPUs\n\n"
        "usage: ditto COMMAND [options]     (ditto COMMAND --help for its options)\n\n"
        "commands:\n"
        "  sample    render one video from a prompt, a caption embedding or a random caption\n"
        "  render    render a job file (JSON Lines) of videos over data-parallel groups, resumable\n"
        "  profile   per-unit change curves (JSON, CSV, heatmap) and Block Caching schedules\n"
        "  calibrate train Block Caching's scale-shift layers for a schedule (base model frozen)\n"
        "  encode    a prompt through a T5 / umT5 text encoder into a caption-embedding file\n"
        "  decode    a saved latent through a VAE into a video (tiles shared among MPI ranks)\n"
        "  forward   one model forward pass on saved inputs, to check against another implementation\n"
        "  train     train the demo text-to-video model on generated clips\n"
        "  version   print the version and the git commit\n";
}

}  // namespace

int run_command(int argc, char** argv, const MpiEnv& mpi) {
  if (argc < 2) {
    print_usage(std::cerr);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    print_usage(std::cout);
    return 0;
  }
  if (cmd == "version" || cmd == "--version") {
    std::cout << "ditto " << ditto_version() << " " << ditto_git_sha() << "\n";
    return 0;
  }
  register_demo();
  register_t5_text_encoder();
  std::vector<std::string> args(argv + 2, argv + argc);
  try {
    if (cmd == "sample") return run_sample(args, mpi);
    if (cmd == "forward") return run_forward(args, mpi);
    if (cmd == "train") return run_train(args, mpi);
    if (cmd == "render") return run_render(args, mpi);
    if (cmd == "profile") return run_profile(args, mpi);
    if (cmd == "calibrate") return run_calibrate(args, mpi);
    if (cmd == "encode") return run_encode(args, mpi);
    if (cmd == "decode") return run_decode(args, mpi);
    fail("unknown command '", cmd, "' (ditto --help lists the commands)");
  } catch (const std::exception& e) {
    if (mpi.size() > 1) mpi.abort(error_text(e));
    std::cerr << "ditto " << cmd << ": error: " << error_text(e) << "\n";
    return 1;
  }
}

}  // namespace ditto
