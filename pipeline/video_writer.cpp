// Y4M, PNG and MP4 writers (see video_writer.h).
#include "pipeline/video_writer.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cerrno>
#include <cstring>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "model/atomic_file.h"
#include "model/error.h"

namespace ditto {

namespace {

uint8_t clamp_u8(double v) { return static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L)); }

uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc = 0) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

void put_be32(std::vector<uint8_t>& v, uint32_t x) {
  for (int i = 3; i >= 0; --i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
}

void png_chunk(std::vector<uint8_t>& out, const char* type, const std::vector<uint8_t>& data) {
  put_be32(out, static_cast<uint32_t>(data.size()));
  const size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put_be32(out, crc32(out.data() + start, out.size() - start));
}

}  // namespace

void write_y4m(const std::string& path, const RgbVideo& v) {
  write_file_atomic(path, [&](std::ostream& out) {
    out << "YUV4MPEG2 W" << v.width << " H" << v.height << " F" << v.fps << ":1 Ip A1:1 C444\n";
    const size_t n = static_cast<size_t>(v.width) * v.height;
    std::vector<char> y(n), u(n), w(n);
    for (const auto& f : v.frames) {
      for (size_t i = 0; i < n; ++i) {
        const double r = f[3 * i], g = f[3 * i + 1], b = f[3 * i + 2];
        y[i] = static_cast<char>(clamp_u8(16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0));
        u[i] = static_cast<char>(clamp_u8(128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0));
        w[i] = static_cast<char>(clamp_u8(128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0));
      }
      out << "FRAME\n";
      out.write(y.data(), n);
      out.write(u.data(), n);
      out.write(w.data(), n);
    }
  });
}

void write_png(const std::string& path, int width, int height, const uint8_t* rgb) {
  // Raw scanlines (filter byte 0), stored in uncompressed deflate blocks inside a zlib stream.
  std::vector<uint8_t> raw;
  const size_t row = static_cast<size_t>(width) * 3;
  for (int yy = 0; yy < height; ++yy) {
    raw.push_back(0);
    raw.insert(raw.end(), rgb + yy * row, rgb + (yy + 1) * row);
  }
  std::vector<uint8_t> z = {0x78, 0x01};
  for (size_t pos = 0; pos < raw.size() || pos == 0;) {
    const size_t len = std::min<size_t>(65535, raw.size() - pos);
    const bool last = pos + len == raw.size();
    z.push_back(last ? 1 : 0);
    z.push_back(len & 0xff);
    z.push_back(len >> 8);
    z.push_back(~len & 0xff);
    z.push_back((~len >> 8) & 0xff);
    z.insert(z.end(), raw.begin() + pos, raw.begin() + pos + len);
    pos += len;
    if (last) break;
  }
  uint32_t a = 1, b = 0;
  for (uint8_t c : raw) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  put_be32(z, (b << 16) | a);
  std::vector<uint8_t> ihdr;
  put_be32(ihdr, width);
  put_be32(ihdr, height);
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit RGB, no interlace
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  png_chunk(png, "IHDR", ihdr);
  png_chunk(png, "IDAT", z);
  png_chunk(png, "IEND", {});
  write_file_atomic(path, [&](std::ostream& out) { out.write(reinterpret_cast<const char*>(png.data()), png.size()); });
}

namespace {

// The executable `name` on $PATH ("" when there is none).
std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  for (size_t start = 0; start <= dirs.size();) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    const std::string dir = dirs.substr(start, end - start);
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(candidate.c_str(), X_OK) == 0)
      return candidate;
    start = end + 1;
  }
  return "";
}

// Runs `program` with `args` without a shell (any byte in an argument is just that byte), stdin
// and stdout on /dev/null, `fds` as the child's descriptors 3, 4, ... and no other descriptor of this
// process. The child is killed when this thread's process dies (PR_SET_PDEATHSIG), so a render that
// is killed leaves no encoder behind. Returns the exit status, or 128 + the signal that ended it.
int run_program(const std::string& program, const std::vector<std::string>& args, const std::vector<int>& fds) {
  std::vector<std::string> all = {program};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) fail("cannot start ", program, ": ", std::strerror(errno));
  if (pid == 0) {  // the child: async-signal-safe calls only, until exec
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the parent died before the line above
    const int null_fd = ::open("/dev/null", O_RDWR);
    if (null_fd < 0) ::_exit(127);
    ::dup2(null_fd, 0);
    ::dup2(null_fd, 1);
    // Move the passed descriptors out of the way first, then into 3, 4, ...
    std::array<int, 8> high{};
    const size_t n = std::min(fds.size(), high.size());
    for (size_t i = 0; i < n; ++i) high[i] = ::fcntl(fds[i], F_DUPFD, 64);
    for (size_t i = 0; i < n; ++i) ::dup2(high[i], static_cast<int>(3 + i));
    ::syscall(SYS_close_range, static_cast<unsigned>(3 + n), ~0U, 0U);
    ::execv(program.c_str(), argv.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) fail("waiting for ", program, ": ", std::strerror(errno));
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The ffmpeg on PATH that runs ("" when none), looked up once per process.
const std::string& ffmpeg_program() {
  static const std::string program = [] {
    const std::string ffmpeg = find_on_path("ffmpeg");
    return !ffmpeg.empty() && run_program(ffmpeg, {"-version"}, {}) == 0 ? ffmpeg : std::string();
  }();
  return program;
}

}  // namespace

bool ffmpeg_available() { return !ffmpeg_program().empty(); }

void y4m_to_mp4(const std::string& y4m_path, const std::string& mp4_path) {
  const std::string& ffmpeg = ffmpeg_program();
  if (ffmpeg.empty()) fail("cannot encode '", mp4_path, "': no ffmpeg that runs is on PATH");
  // ffmpeg gets descriptors, never the paths: whatever characters the output path holds, it cannot
  // be read as an option or a protocol ("pipe:"), and ffmpeg writes only the file ditto created
  // (O_EXCL, O_NOFOLLOW: not through a link planted under the name).
  const int in = ::open(y4m_path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (in < 0) fail("cannot read '", y4m_path, "': ", std::strerror(errno));
  DirEntryRef parent;
  try {
    open_parent_dir(mp4_path, parent);
  } catch (...) {
    ::close(in);
    throw;
  }
  const std::string tmp = mp4_path + ".tmp.mp4", tmp_name = parent.name + ".tmp.mp4";
  ::unlinkat(parent.dir_fd, tmp_name.c_str(), 0);
  const int out = ::openat(parent.dir_fd, tmp_name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (out < 0) {
    const int err = errno;
    ::close(in);
    fail("cannot create '", tmp, "': ", write_error_text(err));
  }
  int rc = 0;
  try {
    rc = run_program(ffmpeg,
                     {"-nostdin", "-y", "-loglevel", "error", "-f", "yuv4mpegpipe", "-i", "/dev/fd/3", "-vf",
                      "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "mp4", "/dev/fd/4"},
                     {in, out});
  } catch (...) {
    ::close(in);
    ::close(out);
    ::unlinkat(parent.dir_fd, tmp_name.c_str(), 0);
    throw;
  }
  ::close(in);
  const int sync_error = ::fsync(out) == 0 ? 0 : errno;
  ::close(out);
  if (rc != 0 || sync_error) {
    ::unlinkat(parent.dir_fd, tmp_name.c_str(), 0);
    if (rc != 0) fail("ffmpeg failed (exit ", rc, ") encoding '", mp4_path, "'");
    fail("cannot write '", mp4_path, "': ", write_error_text(sync_error));
  }
  if (::renameat(parent.dir_fd, tmp_name.c_str(), parent.dir_fd, parent.name.c_str()) != 0)
    fail("cannot rename '", tmp, "' to '", mp4_path, "': ", write_error_text(errno));
}

}  // namespace ditto
