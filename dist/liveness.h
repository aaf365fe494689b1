// Telling a slow rank from one that stopped answering. Every process of a multi-rank job answers
// pings from a thread of its own (started by MpiEnv), so a rank that has waited `peer_timeout()`
// seconds on a collective or a message can ask its peers whether they are alive: a rank that computes
// for a long time answers, one stopped (SIGSTOP), hung in the kernel or dead does not, and the job is
// ended with a message naming it instead of waiting forever.
#pragma once
#include <mpi.h>

#include <functional>
#include <string>
#include <vector>

namespace ditto {

// Seconds a rank waits before it checks its peers (0: wait forever). Process-wide; --timeout.
void set_peer_timeout(double seconds);
double peer_timeout();

// Starts / stops the ping responder (MpiEnv does both; needs MPI_THREAD_MULTIPLE and a world of more
// than one rank, otherwise nothing answers and no rank is ever accused).
void start_liveness();
void stop_liveness();
bool liveness_running();

// The ranks of `world_ranks` that do not answer a ping within `grace_s` seconds.
std::vector<int> silent_ranks(const std::vector<int>& world_ranks, double grace_s);

// The MPI_COMM_WORLD ranks of `comm`'s members other than the caller.
std::vector<int> peer_world_ranks(MPI_Comm comm);

// Polls `done` (backing off to ~1 ms sleeps) until it returns true. Each time peer_timeout() passes
// without it, the peers are pinged: if any is silent the job is ended ("WHAT waited T s: rank R
// stopped answering ..."); if all answer, the wait goes on (they are slow, not gone).
void wait_with_liveness(const std::function<bool()>& done, const std::vector<int>& peers, const std::string& what);

// Ends every rank of the job: "[rank r] error: MESSAGE" on stderr, then MPI_Abort.
[[noreturn]] void abort_job(const std::string& message, int code = 1);

}  // namespace ditto
