// Handing a render's jobs to its data-parallel groups as they become free. World rank 0 runs the
// scheduler (a thread beside its own rendering); each group's leader asks for a job, carrying the
// result of its previous one, until it is told there is none left. The messages travel through a
// transport: MPI point-to-point in a run, an in-process queue in the tests.
#pragma once
#include <mpi.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ditto {

class JobTransport {
 public:
  virtual ~JobTransport() = default;
  // Scheduler side: the next request of any leader (its previous result, empty at first) and who sent it.
  virtual std::string receive_request(int* from) = 0;
  // Scheduler side: the reply to leader `to` (an assignment; empty: no more jobs).
  virtual void send_assignment(int to, const std::string& assignment) = 0;
  // Leader side: sends a request with the previous result and waits for the reply.
  virtual std::string request(const std::string& last_result) = 0;
};

struct SchedulerHooks {
  std::function<void(size_t job, const nlohmann::json& result)> on_result;  // a leader's report of job `job`
  std::function<void(size_t job)> on_start;                                 // job handed out
};

// Hands out jobs 0..jobs-1 in order, one per request, until each of `leaders` leaders has been told
// there are no more. An assignment is {"index": i, ...assignment(i)}; a result must carry "index".
void run_scheduler(JobTransport& transport, size_t jobs, int leaders,
                   const std::function<nlohmann::json(size_t job)>& assignment, const SchedulerHooks& hooks);

// MPI point-to-point on a communicator of its own (a duplicate of `world`, never mixed with the
// groups' collectives); waiting ranks poll with short sleeps so they leave the cores to the renderers.
class MpiJobTransport : public JobTransport {
 public:
  explicit MpiJobTransport(MPI_Comm world);
  ~MpiJobTransport() override;
  std::string receive_request(int* from) override;
  void send_assignment(int to, const std::string& assignment) override;
  std::string request(const std::string& last_result) override;

 private:
  MPI_Comm comm_;
  std::vector<int> peers_;  // every other rank (pinged when a wait passes --timeout)
};

}  // namespace ditto
