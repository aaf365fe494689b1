// The render's job scheduler and its MPI transport (see scheduler.h).
#include "pipeline/scheduler.h"

#include <chrono>
#include <deque>
#include <thread>

#include "dist/liveness.h"
#include "dist/mpi_communicator.h"
#include "model/atomic_file.h"
#include "model/error.h"

namespace ditto {

namespace {
constexpr int kTagRequest = 701, kTagJob = 702;
}

void run_scheduler(JobTransport& transport, size_t jobs, int leaders,
                   const std::function<nlohmann::json(size_t)>& assignment, const SchedulerHooks& hooks) {
  std::deque<size_t> queue;
  for (size_t i = 0; i < jobs; ++i) queue.push_back(i);
  for (int active = leaders; active > 0;) {
    int from = 0;
    const std::string msg = transport.receive_request(&from);
    if (!msg.empty()) {
      const nlohmann::json r = nlohmann::json::parse(msg);
      const size_t index = r.at("index").get<size_t>();
      if (index >= jobs) fail("scheduler: a report names job ", index, " of ", jobs);
      if (hooks.on_result) hooks.on_result(index, r);
    }
    std::string reply;
    if (!queue.empty()) {
      const size_t i = queue.front();
      queue.pop_front();
      nlohmann::json a = assignment ? assignment(i) : nlohmann::json::object();
      a["index"] = i;
      reply = dump_json(a);
      if (hooks.on_start) hooks.on_start(i);
    } else {
      --active;
    }
    transport.send_assignment(from, reply);
  }
}

MpiJobTransport::MpiJobTransport(MPI_Comm world) {
  MPI_Comm_dup(world, &comm_);
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  peers_ = peer_world_ranks(comm_);
}

MpiJobTransport::~MpiJobTransport() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Comm_free(&comm_);
}

namespace {

void send_string(MPI_Comm comm, int dest, int tag, const std::string& s) {
  check_mpi(MPI_Send(s.data(), static_cast<int>(s.size()), MPI_CHAR, dest, tag, comm), "render scheduler send");
}

// Waits (polling, sleeping: a waiting rank leaves the cores to the renderers) for a message from
// `source`; `peers` are pinged when the wait passes --timeout (a stopped sender ends the job).
std::string recv_string(MPI_Comm comm, int source, int tag, int* from, const std::vector<int>& peers, const char* what) {
  MPI_Status st;
  int rc = MPI_SUCCESS;
  wait_with_liveness(
      [&] {
        int flag = 0;
        rc = MPI_Iprobe(source, tag, comm, &flag, &st);
        return flag != 0 || rc != MPI_SUCCESS;
      },
      peers, what);
  check_mpi(rc, "render scheduler probe");
  int n = 0;
  MPI_Get_count(&st, MPI_CHAR, &n);
  std::string s(static_cast<size_t>(n), '\0');
  check_mpi(MPI_Recv(s.data(), n, MPI_CHAR, st.MPI_SOURCE, tag, comm, MPI_STATUS_IGNORE), "render scheduler receive");
  if (from) *from = st.MPI_SOURCE;
  return s;
}

}  // namespace

std::string MpiJobTransport::receive_request(int* from) {
  // Any rank may be the next to ask; while none does, every other rank must still answer pings.
  return recv_string(comm_, MPI_ANY_SOURCE, kTagRequest, from, peers_, "the render scheduler's wait for the groups");
}

void MpiJobTransport::send_assignment(int to, const std::string& assignment) { send_string(comm_, to, kTagJob, assignment); }

std::string MpiJobTransport::request(const std::string& last_result) {
  send_string(comm_, 0, kTagRequest, last_result);
  return recv_string(comm_, 0, kTagJob, nullptr, {0}, "a wait for the render scheduler (rank 0)");
}

}  // namespace ditto
