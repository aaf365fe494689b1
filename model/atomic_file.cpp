// Atomic file replacement (temporary name + fsync + rename).
#include "model/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "model/error.h"

namespace ditto {

void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::ostringstream content;
  write(content);
  if (!content) fail("writing '", path, "' failed");
  const std::string bytes = content.str();
  // The temporary file is created here and now (O_EXCL) and never through a link (O_NOFOLLOW): a
  // file or link planted under its name is removed first, not written through.
  ::unlink(tmp.c_str());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create '", tmp, "' for writing: ", std::strerror(errno));
  try {
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("writing '", path, "' failed: ", std::strerror(errno));
      done += static_cast<size_t>(n);
    }
    if (::fsync(fd) != 0) fail("writing '", path, "' failed: ", std::strerror(errno));
    ::close(fd);
    // rename replaces a link at `path` itself; it never writes through it.
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      fail("cannot rename '", tmp, "' to '", path, "': ", std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read '", path, "'");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

nlohmann::json read_json_file(const std::string& path, const std::string& what) {
  std::ifstream in(path);
  if (!in) fail("cannot open ", what, " '", path, "'");
  try {
    return parse_json<nlohmann::json>(in);
  } catch (const std::exception& e) {
    fail("'", path, "': malformed JSON: ", e.what());
  }
}

}  // namespace ditto
