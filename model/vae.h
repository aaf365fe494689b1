// The VAE seam: how a video's size in pixels maps to the model's latent, and back to pixels. Behind
// it: the pixel latent space (the demo works on RGB frames), each family's latent geometry (a model
// without a VAE directory writes its latent), and the VAEs loaded from directories: Wan-VAE 2.1
// (model/wan_vae) and Open-Sora 1.2's (model/opensora_vae).
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

namespace ditto {

struct LatentShape {
  int channels, frames, height, width;
};

// How a decoded frame in [-1, 1] becomes 8 bits: rounded ((x + 1) * 127.5 + 0.5, Open-Sora and the
// demo) or truncated ((x + 1) / 2 * 255, the official Wan code and diffusers' export_to_video).
enum class FrameRounding { Round, Truncate };

class VAE {
 public:
  virtual ~VAE() = default;
  virtual std::string name() const = 0;
  // The latent of a video of `frames` x `height` x `width` pixels; an Error for sizes it cannot take.
  virtual LatentShape latent_shape(int frames, int height, int width) const = 0;
  // Decoding a latent [1, C, T, H, W] into RGB frames [1, 3, F, H', W'] in [-1, 1]: `frames` of them
  // (the video's frame count, for VAEs whose latent length leaves it open; 0: all the latent holds).
  virtual bool can_decode() const = 0;
  // Why decode() is unavailable (empty when it is available).
  virtual std::string cannot_decode_reason() const { return ""; }
  virtual at::Tensor decode(const at::Tensor& latent, int frames) const = 0;
  // Encoding RGB frames into a latent (optional).
  virtual bool can_encode() const { return false; }
  virtual at::Tensor encode(const at::Tensor& video) const;
  virtual FrameRounding frame_rounding() const { return FrameRounding::Round; }
  // Decoding in parts that ranks can share (spatial tiles): how many parts `latent` has, part k's
  // shape, part k decoded, and the frames from every part (decode()'s result). A VAE that cannot
  // share has one part, the whole decode.
  virtual int parts(const at::Tensor&) const { return 1; }
  virtual std::vector<int64_t> part_shape(const at::Tensor& latent, int k, int frames) const;
  virtual at::Tensor decode_part(const at::Tensor& latent, int k, int frames) const;
  virtual at::Tensor join_parts(std::vector<at::Tensor> parts, const at::Tensor& latent) const;
};

// How a VAE directory is decoded: its weights' dtype and device, latent frames per chunk and
// spatial tiles (pixels; size 0: none).
struct VaeOptions {
  at::TensorOptions options = at::TensorOptions().dtype(at::kFloat);
  int chunk = 1;
  int tile = 0, tile_stride = 0;
};

// A VAE directory as diffusers saves one (config.json's _class_name picks the kind:
// AutoencoderKLWan; model_type VideoAutoencoderPipeline: Open-Sora 1.2's), or a diffusers pipeline's (its vae/). Loaded once per directory and options per
// process. An Error names the directory and what is missing or not supported.
std::shared_ptr<const VAE> load_vae(const std::string& dir, const VaeOptions& options);
// The VAE directory of a diffusers pipeline directory (its vae/), or "" when it has none.
std::string pipeline_vae_dir(const std::string& model_dir);

// Models that work on pixels: the latent is the video itself ([-1, 1] RGB when channels is 3).
class PixelSpace : public VAE {
 public:
  explicit PixelSpace(int channels) : channels_(channels) {}
  std::string name() const override { return "pixel"; }
  LatentShape latent_shape(int frames, int height, int width) const override;
  bool can_decode() const override { return channels_ == 3; }
  std::string cannot_decode_reason() const override;
  at::Tensor decode(const at::Tensor& latent, int frames) const override;
  bool can_encode() const override { return channels_ == 3; }
  at::Tensor encode(const at::Tensor& video) const override;

 private:
  int channels_;
};

// Open-Sora 1.2's VAE geometry: 8x in space (floor), micro-batches of 17 frames -> 5 latents and a
// remainder r -> ceil(r / 4). Decoding needs its VAE's weights (model/opensora_vae, --vae DIR).
class OpenSoraV12Geometry : public VAE {
 public:
  explicit OpenSoraV12Geometry(int channels) : channels_(channels) {}
  std::string name() const override { return "opensora-v1.2"; }
  LatentShape latent_shape(int frames, int height, int width) const override;
  bool can_decode() const override { return false; }
  std::string cannot_decode_reason() const override;
  at::Tensor decode(const at::Tensor& latent, int frames) const override;

 private:
  int channels_;
};

}  // namespace ditto
