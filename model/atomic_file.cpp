// Atomic file replacement (temporary name + fsync + rename).
#include "model/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
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

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::string read_text_file(const std::string& path) {
  // Opened without blocking (a FIFO named here would wait forever for a writer), then refused unless
  // it is a regular file.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) fail("cannot read '", path, "': ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("cannot read '", path, "': not a regular file");
  }
  std::string bytes;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      ::close(fd);
      fail("cannot read '", path, "': ", std::strerror(e));
    }
    if (n == 0) break;
    bytes.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return bytes;
}

nlohmann::json read_json_file(const std::string& path, const std::string& what) {
  std::string text;
  try {
    text = read_text_file(path);
  } catch (const Error& e) {
    fail("cannot open ", what, " '", path, "': ", std::string(e.what()).substr(std::string(e.what()).rfind(": ") + 2));
  }
  try {
    return parse_json<nlohmann::json>(text);
  } catch (const std::exception& e) {
    fail("'", path, "': malformed JSON: ", e.what());
  }
}

}  // namespace ditto
