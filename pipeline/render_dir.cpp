// The render's output directory (see render_dir.h).
#include "pipeline/render_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "model/atomic_file.h"
#include "model/error.h"

namespace ditto {

namespace {

using json = nlohmann::ordered_json;

bool file_exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

void remove_tree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    if (DIR* d = ::opendir(path.c_str())) {
      while (dirent* e = ::readdir(d)) {
        const std::string n = e->d_name;
        if (n != "." && n != "..") remove_tree(path + "/" + n);
      }
      ::closedir(d);
    }
    ::rmdir(path.c_str());
  } else {
    ::unlink(path.c_str());
  }
}

// Appends one line and flushes it to disk.
void append_line(const std::string& path, const std::string& line) {
  // Never through a link planted under the name (O_NOFOLLOW): the line would land in its target.
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0)
    fail("cannot open '", path, "' for appending: ",
         errno == ELOOP ? "it is a symbolic link, which ditto does not write through" : write_error_text(errno));
  const std::string s = line + "\n";
  const ssize_t n = ::write(fd, s.data(), s.size());
  const int err = n < 0 ? errno : n != static_cast<ssize_t>(s.size()) ? ENOSPC : ::fsync(fd) != 0 ? errno : 0;
  ::close(fd);
  if (err) fail("cannot append to '", path, "': ", write_error_text(err));
}


}  // namespace

json failure_record(int line, const std::string& output, const char* stage, const std::string& error) {
  return {{"line", line}, {"output", output}, {"stage", stage}, {"error", error}};
}

RenderDir::RenderDir(std::string dir) : dir_(std::move(dir)) {
  make_dir(dir_);
  // One render per output directory at a time (the lock goes with the process, even on SIGKILL).
  const std::string lock = dir_ + "/render.lock";
  lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (lock_fd_ < 0)
    fail("cannot create '", lock, "': ",
         errno == ELOOP ? "it is a symbolic link, which ditto does not follow" : std::strerror(errno),
         errno == EACCES || errno == EROFS ? " (is the output directory writable?)" : "");
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
    fail("another ditto render is writing to '", dir_, "' (", lock, " is held)");
  }
  // The records the render appends to and replaces must be plain files: a link planted under one of
  // these names would send the render's lines into its target.
  for (const char* name : {"manifest.jsonl", "failures.jsonl", "summary.json"}) {
    const std::string path = dir_ + "/" + name;
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
      ::unlink(lock.c_str());
      ::close(lock_fd_);
      lock_fd_ = -1;
      fail("'", path, "' is ", S_ISLNK(st.st_mode) ? "a symbolic link" : "not a plain file",
           ": ditto does not write through it (remove it, or render into another directory)");
    }
  }
}

RenderDir::~RenderDir() {
  if (lock_fd_ < 0) return;
  ::unlink((dir_ + "/render.lock").c_str());
  ::close(lock_fd_);
}

RenderDir::Resume RenderDir::resume(std::vector<JobLine> jobs) {
  const std::string manifest = dir_ + "/manifest.jsonl";
  // What a previous run finished: the manifest's entries whose metrics.json exists. A directory
  // renamed into place whose manifest line was lost is finished too (the rename is the commit).
  std::map<std::string, json> finished;
  if (file_exists(manifest)) {
    std::istringstream m(read_text_file(manifest, size_t{1} << 30));
    for (std::string l; std::getline(m, l);) {
      try {
        json e = parse_json<json>(l);
        finished[e.at("output").get<std::string>()] = e;
      } catch (const std::exception&) {  // a line cut short by a crash
      }
    }
  }
  Resume r;
  for (auto& jl : jobs) {
    const std::string dir = dir_ + "/" + jl.output;
    abandon_job_dir(dir_, jl.output);  // in flight when the last run stopped
    if (!file_exists(dir + "/metrics.json")) {
      if (file_exists(dir)) {
        r.rejected.push_back({jl.line, jl.output, "'" + dir + "' exists but is not a finished render; move it away to render this job"});
        continue;
      }
      r.todo.push_back(std::move(jl));
      continue;
    }
    auto it = finished.find(jl.output);
    if (it == finished.end()) {
      append_manifest(json{{"output", jl.output}, {"line", jl.line}, {"job", jl.spec}, {"recovered", true}});
      ++r.recovered;
    } else if (it->second.contains("job") && it->second["job"] != jl.spec) {
      r.rejected.push_back({jl.line, jl.output, "'" + dir + "' was rendered from different settings (" +
                                                   dump_json(it->second["job"]) + "); remove it to render this line"});
      continue;
    }
    ++r.skipped;
  }
  return r;
}

void RenderDir::start_failures(const std::vector<RejectedLine>& rejected) {
  write_file_atomic(dir_ + "/failures.jsonl", [&](std::ostream& os) {
    for (const auto& f : rejected) os << dump_json(failure_record(f.line, f.output, "validation", f.reason)) << "\n";
  });
}

void RenderDir::append_failure(const json& record) { append_line(dir_ + "/failures.jsonl", dump_json(record)); }

void RenderDir::append_manifest(const json& entry) { append_line(dir_ + "/manifest.jsonl", dump_json(entry)); }

namespace {
// An Error unless `path` is a directory itself (not a link to one).
void expect_real_dir(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) fail("'", path, "' is missing: ", std::strerror(errno));
  if (S_ISLNK(st.st_mode)) fail("'", path, "' is a symbolic link, which ditto does not write through");
  if (!S_ISDIR(st.st_mode)) fail("'", path, "' is not a directory");
}
}  // namespace

std::string begin_job_dir(const std::string& dir, const std::string& name) {
  const std::string partial = dir + "/." + name + ".partial";
  remove_tree(partial);  // a leftover, or a link planted under the name (removed, not followed)
  if (::mkdir(partial.c_str(), 0755) != 0) fail("cannot create '", partial, "': ", write_error_text(errno));
  expect_real_dir(partial);
  guard_output_dir(partial);  // written into only through a descriptor that does not follow a swapped-in link
  return partial;
}

void commit_job_dir(const std::string& dir, const std::string& name) {
  const std::string partial = dir + "/." + name + ".partial", final_dir = dir + "/" + name;
  unguard_output_dir(partial);
  expect_real_dir(partial);  // what is renamed into place is the job's own directory
  if (::rename(partial.c_str(), final_dir.c_str()) != 0)
    fail("cannot rename '", partial, "' to '", final_dir, "': ", std::strerror(errno));
}

void abandon_job_dir(const std::string& dir, const std::string& name) {
  unguard_output_dir(dir + "/." + name + ".partial");
  remove_tree(dir + "/." + name + ".partial");
}

void RenderDir::write_summary(const json& summary, const std::string& extra) {
  write_file_atomic(dir_ + "/summary.json", [&](std::ostream& os) { os << dump_json(summary, 2) << "\n"; });
  if (!extra.empty()) write_file_atomic(extra, [&](std::ostream& os) { os << dump_json(summary, 2) << "\n"; });
}

}  // namespace ditto
