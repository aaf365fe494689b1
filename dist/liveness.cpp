// Peer liveness over MPI (see liveness.h).
#include "dist/liveness.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <thread>

namespace ditto {

namespace {

constexpr int kPingTag = 32000;        // a ping carries the tag its answer is to use
constexpr int kFirstAnswerTag = 1000;  // answer tags cycle through 1000 .. 30999

std::atomic<double> g_timeout{0.0};
std::atomic<bool> g_running{false}, g_stop{false};
std::atomic<int> g_next_tag{0};
MPI_Comm g_comm = MPI_COMM_NULL;  // a duplicate of MPI_COMM_WORLD used only for pings
std::thread g_responder;

void respond() {
  while (!g_stop.load()) {
    int flag = 0;
    MPI_Message msg;
    MPI_Status st;
    if (MPI_Improbe(MPI_ANY_SOURCE, kPingTag, g_comm, &flag, &msg, &st) != MPI_SUCCESS) return;
    if (!flag) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    int answer_tag = 0;
    MPI_Mrecv(&answer_tag, 1, MPI_INT, &msg, MPI_STATUS_IGNORE);
    MPI_Send(&answer_tag, 1, MPI_INT, st.MPI_SOURCE, answer_tag, g_comm);
  }
}

std::string seconds_text(double s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

}  // namespace

void set_peer_timeout(double seconds) { g_timeout.store(seconds > 0 ? seconds : 0.0); }
double peer_timeout() { return g_timeout.load(); }
bool liveness_running() { return g_running.load(); }

void start_liveness() {
  if (g_running.load()) return;
  MPI_Comm_dup(MPI_COMM_WORLD, &g_comm);
  MPI_Comm_set_errhandler(g_comm, MPI_ERRORS_RETURN);
  g_stop.store(false);
  g_responder = std::thread(respond);
  g_running.store(true);
}

void stop_liveness() {
  if (!g_running.load()) return;
  g_stop.store(true);
  g_responder.join();
  g_running.store(false);
  // Every rank stops its responder before MPI_Finalize, so no ping is left to answer; the duplicate
  // is freed with the rest of MPI's state at finalize.
}

std::vector<int> peer_world_ranks(MPI_Comm comm) {
  MPI_Group group, world;
  MPI_Comm_group(comm, &group);
  MPI_Comm_group(MPI_COMM_WORLD, &world);
  int n = 0, me = 0;
  MPI_Group_size(group, &n);
  MPI_Group_rank(group, &me);
  std::vector<int> local(n), global(n);
  for (int i = 0; i < n; ++i) local[i] = i;
  MPI_Group_translate_ranks(group, n, local.data(), world, global.data());
  MPI_Group_free(&group);
  MPI_Group_free(&world);
  std::vector<int> peers;
  for (int i = 0; i < n; ++i)
    if (i != me) peers.push_back(global[i]);
  return peers;
}

std::vector<int> silent_ranks(const std::vector<int>& world_ranks, double grace_s) {
  if (!g_running.load() || world_ranks.empty()) return {};
  const int tag = kFirstAnswerTag + g_next_tag.fetch_add(1) % 30000;
  std::vector<MPI_Request> answers(world_ranks.size());
  std::vector<int> got(world_ranks.size());
  for (size_t i = 0; i < world_ranks.size(); ++i) {
    MPI_Irecv(&got[i], 1, MPI_INT, world_ranks[i], tag, g_comm, &answers[i]);
    // One int: MPI sends it eagerly, so this returns even when the peer is stopped.
    MPI_Send(&tag, 1, MPI_INT, world_ranks[i], kPingTag, g_comm);
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<bool> answered(world_ranks.size(), false);
  for (size_t left = world_ranks.size(); left > 0;) {
    for (size_t i = 0; i < answers.size(); ++i) {
      if (answered[i]) continue;
      int flag = 0;
      MPI_Test(&answers[i], &flag, MPI_STATUS_IGNORE);
      if (flag) answered[i] = true, --left;
    }
    if (left == 0 || std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > grace_s) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::vector<int> silent;
  for (size_t i = 0; i < answers.size(); ++i)
    if (!answered[i]) {
      silent.push_back(world_ranks[i]);
      MPI_Cancel(&answers[i]);
      MPI_Request_free(&answers[i]);
    }
  return silent;
}

void wait_with_liveness(const std::function<bool()>& done, const std::vector<int>& peers, const std::string& what) {
  const double timeout = peer_timeout();
  const auto start = std::chrono::steady_clock::now();
  auto since = start;
  double elapsed = 0;
  for (int polls = 0; !done(); ++polls) {
    // Poll without pausing for the first 20 ms (as MPI_Wait would: MPI progresses a non-blocking
    // collective only inside its calls), then sleep between polls so a rank that waits long leaves the
    // cores to the ranks that compute.
    if (polls % 64 == 0) elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (elapsed > 0.02) std::this_thread::sleep_for(std::chrono::microseconds(elapsed > 1.0 ? 1000 : 50));
    if (timeout <= 0 || !g_running.load() || polls % 64 != 0) continue;
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
    if (waited < timeout) continue;
    const std::vector<int> silent = silent_ranks(peers, std::min(timeout, 10.0));
    if (silent.empty()) {  // every peer answers: slow, not gone
      since = std::chrono::steady_clock::now();
      continue;
    }
    std::string who;
    for (int r : silent) who += (who.empty() ? "" : ", ") + std::to_string(r);
    abort_job(what + " waited " + seconds_text(waited) + " s (--timeout) and rank" + (silent.size() > 1 ? "s " : " ") +
              who + (silent.size() > 1 ? " do" : " does") +
              " not answer: stopped, hung or dead; ending the job on every rank");
  }
}

void abort_job(const std::string& message, int code) {
  int rank = 0, size = 1, initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  const bool mpi = initialized && !finalized;
  if (mpi) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  std::fprintf(stderr, "[rank %d] error: %s\n", rank, message.c_str());
  std::fflush(stderr);
  if (mpi && size > 1) MPI_Abort(MPI_COMM_WORLD, code);
  // One process: end it without unwinding frames other threads may still reference.
  std::fflush(stdout);
  std::_Exit(code);
}

}  // namespace ditto
