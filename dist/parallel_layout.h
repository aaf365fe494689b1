// How the world of ranks is laid out: world = dp x cfg x sp (sp fastest, so a sequence-parallel
// group is contiguous ranks on one node), the process groups of that layout, and the checks that
// refuse an impossible layout before any model work.
#pragma once
#include <memory>
#include <string>

#include "dist/communicator.h"

namespace ditto {

struct WorldLayout {
  int world = 1, dp = 1, cfg = 1, sp = 1;
  int rank = 0, dp_index = 0, cfg_index = 0, sp_index = 0;
  std::string describe() const;  // "world 8 = dp 2 x cfg 2 x sp 2"
};

// Validates --sp and --cfg-parallel against the world size; throws an Error that says why not.
WorldLayout make_world_layout(int world, int rank, int sp, int cfg_parallel);

struct ProcessGroups {
  std::unique_ptr<Communicator> sp;     // ranks sharing one video's tokens
  std::unique_ptr<Communicator> cfg;    // the conditional/unconditional pair (same sp index)
  std::unique_ptr<Communicator> video;  // every rank working on one video (cfg x sp)
  std::unique_ptr<Communicator> dp;     // ranks with the same (cfg, sp) index across videos
};
// Collective over `world`: every rank calls it.
ProcessGroups make_process_groups(Communicator& world, const WorldLayout& layout);

}  // namespace ditto
