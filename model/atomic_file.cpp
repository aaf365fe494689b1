// Atomic file replacement (temporary name + fsync + rename).
#include "model/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "model/error.h"

namespace ditto {

std::string write_error_text(int err) {
  std::string s = std::strerror(err);
  switch (err) {
    case ENOSPC: return s + " (the filesystem is full: free space, or write elsewhere)";
    case EDQUOT: return s + " (the disk quota is used up)";
    case EFBIG: return s + " (over the file-size limit of this process, ulimit -f)";
    case EROFS: return s + " (the filesystem is read-only)";
    default: return s;
  }
}

namespace {
std::mutex g_guard_mu;
std::set<std::string> g_guarded;
}  // namespace

void guard_output_dir(const std::string& dir) {
  std::lock_guard<std::mutex> lock(g_guard_mu);
  g_guarded.insert(dir);
}

void unguard_output_dir(const std::string& dir) {
  std::lock_guard<std::mutex> lock(g_guard_mu);
  g_guarded.erase(dir);
}

DirEntryRef::~DirEntryRef() {
  if (dir_fd >= 0) ::close(dir_fd);
}

void open_parent_dir(const std::string& path, DirEntryRef& out) {
  const size_t slash = path.find_last_of('/');
  out.dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  out.name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (out.name.empty() || out.name == "." || out.name == "..") fail("'", path, "' does not name a file");
  bool guarded = false;
  {
    std::lock_guard<std::mutex> lock(g_guard_mu);
    guarded = g_guarded.count(out.dir) > 0;
  }
  out.dir_fd = ::open(out.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | (guarded ? O_NOFOLLOW : 0));
  if (out.dir_fd < 0) {
    const int err = errno;
    if (guarded && (err == ELOOP || err == ENOTDIR))
      fail("'", out.dir, "' was replaced by a link or a file while ditto wrote into it: ditto does not write through it");
    fail("cannot open the directory '", out.dir, "' to write '", out.name, "': ", write_error_text(err));
  }
}

void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write) {
  std::ostringstream content;
  write(content);
  if (!content) fail("writing '", path, "' failed");
  const std::string bytes = content.str();
  DirEntryRef parent;
  open_parent_dir(path, parent);
  const int dir = parent.dir_fd;
  const std::string tmp = parent.name + ".tmp." + std::to_string(::getpid());
  // The temporary file is created here and now (O_EXCL) and never through a link (O_NOFOLLOW): a
  // file or link planted under its name is removed first, not written through.
  ::unlinkat(dir, tmp.c_str(), 0);
  int fd = ::openat(dir, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create '", path, ".tmp.", ::getpid(), "' for writing: ", write_error_text(errno));
  try {
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("writing '", path, "' failed: ", write_error_text(n < 0 ? errno : ENOSPC));
      done += static_cast<size_t>(n);
    }
    if (::fsync(fd) != 0) fail("writing '", path, "' failed: ", write_error_text(errno));
    const int closed = ::close(fd);
    fd = -1;
    if (closed != 0) fail("writing '", path, "' failed: ", write_error_text(errno));
    // renameat replaces a link at `path` itself; it never writes through it.
    if (::renameat(dir, tmp.c_str(), dir, parent.name.c_str()) != 0)
      fail("cannot rename '", tmp, "' to '", path, "': ", write_error_text(errno));
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlinkat(dir, tmp.c_str(), 0);
    throw;
  }
  ::fsync(dir);  // the rename itself survives a crash
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string read_text_file(const std::string& path, size_t max_bytes) {
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
    if (bytes.size() + static_cast<size_t>(n) > max_bytes) {  // checked while reading: the file may grow
      ::close(fd);
      fail("cannot read '", path, "': larger than ", max_bytes >> 20, " MiB, more than a file of this kind can be");
    }
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

size_t utf8_decode(const std::string& text, size_t i, uint32_t* cp) {
  const auto* b = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  if (i >= n) return 0;
  const unsigned char c = b[i];
  size_t len = 0;
  uint32_t v = 0;
  if (c < 0x80) len = 1, v = c;
  else if ((c & 0xE0) == 0xC0) len = 2, v = c & 0x1F;
  else if ((c & 0xF0) == 0xE0) len = 3, v = c & 0x0F;
  else if ((c & 0xF8) == 0xF0) len = 4, v = c & 0x07;
  else return 0;
  if (i + len > n) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((b[i + k] & 0xC0) != 0x80) return 0;
    v = (v << 6) | (b[i + k] & 0x3F);
  }
  // Overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8 either.
  static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (v < kMin[len] || (v >= 0xD800 && v <= 0xDFFF) || v > 0x10FFFF) return 0;
  *cp = v;
  return len;
}

size_t first_invalid_utf8(const std::string& text) {
  uint32_t cp = 0;
  for (size_t i = 0; i < text.size();) {
    const size_t len = utf8_decode(text, i, &cp);
    if (len == 0) return i;
    i += len;
  }
  return std::string::npos;
}

}  // namespace ditto
