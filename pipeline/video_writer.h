// Video outputs for pixel-space models: Y4M (always), PNG frames (own encoder, no zlib needed),
// and MP4 through an installed ffmpeg. Frames are 8-bit RGB, row-major, height x width x 3.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ditto {

struct RgbVideo {
  int width = 0, height = 0, fps = 24;
  std::vector<std::vector<uint8_t>> frames;  // each width*height*3 bytes
};

void write_y4m(const std::string& path, const RgbVideo& video);   // 4:4:4, BT.601 studio range
void write_png(const std::string& path, int width, int height, const uint8_t* rgb);
bool ffmpeg_available();
// Encodes an existing Y4M file to H.264 MP4 (yuv420p, even-sized); throws with ffmpeg's exit code.
void y4m_to_mp4(const std::string& y4m_path, const std::string& mp4_path);

}  // namespace ditto
