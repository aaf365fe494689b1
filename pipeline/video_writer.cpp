// Y4M, PNG and MP4 writers (see video_writer.h).
#include "pipeline/video_writer.h"

#include <sys/wait.h>

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

bool ffmpeg_available() { return std::system("ffmpeg -version >/dev/null 2>&1") == 0; }

void y4m_to_mp4(const std::string& y4m_path, const std::string& mp4_path) {
  const std::string tmp = mp4_path + ".tmp.mp4";
  const std::string cmd = "ffmpeg -nostdin -y -loglevel error -i '" + y4m_path +
                          "' -vf 'pad=ceil(iw/2)*2:ceil(ih/2)*2' -c:v libx264 -pix_fmt yuv420p '" + tmp + "'";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) {
    std::remove(tmp.c_str());
    fail("ffmpeg failed (exit ", WEXITSTATUS(rc), ") encoding '", mp4_path, "'");
  }
  if (std::rename(tmp.c_str(), mp4_path.c_str()) != 0) fail("cannot rename '", tmp, "' to '", mp4_path, "'");
}

}  // namespace ditto
