// World layout and process groups (see parallel_layout.h).
#include "dist/parallel_layout.h"

#include "model/error.h"

namespace ditto {

std::string WorldLayout::describe() const {
  return "world " + std::to_string(world) + " = dp " + std::to_string(dp) + " x cfg " + std::to_string(cfg) +
         " x sp " + std::to_string(sp);
}

WorldLayout make_world_layout(int world, int rank, int sp, int cfg) {
  if (sp < 1) fail("--sp must be at least 1, got ", sp);
  if (cfg != 1 && cfg != 2) fail("--cfg-parallel must be 1 or 2, got ", cfg);
  if (world % (sp * cfg) != 0)
    fail("cannot lay out ", world, " ranks as dp x cfg ", cfg, " x sp ", sp, ": ", world, " is not a multiple of ",
         sp * cfg, " (launch a multiple of ", sp * cfg, " ranks, or change --sp/--cfg-parallel)");
  WorldLayout l;
  l.world = world;
  l.rank = rank;
  l.sp = sp;
  l.cfg = cfg;
  l.dp = world / (sp * cfg);
  l.sp_index = rank % sp;
  l.cfg_index = (rank / sp) % cfg;
  l.dp_index = rank / (sp * cfg);
  return l;
}

ProcessGroups make_process_groups(Communicator& world, const WorldLayout& l) {
  ProcessGroups g;
  g.sp = world.split(l.dp_index * l.cfg + l.cfg_index, l.sp_index);
  g.cfg = world.split(l.dp_index * l.sp + l.sp_index, l.cfg_index);
  g.video = world.split(l.dp_index, l.cfg_index * l.sp + l.sp_index);
  g.dp = world.split(l.cfg_index * l.sp + l.sp_index, l.dp_index);
  return g;
}

}  // namespace ditto
