// Wan-VAE 2.1's decoder in LibTorch, loaded as diffusers saves it (AutoencoderKLWan: config.json +
// diffusion_pytorch_model.safetensors, a pipeline's vae/), the VAE of Wan 2.1 and of Wan 2.2's A14B
// experts. Causal 3-D convolutions (time padded in front only), the L2 "RMS" norm, one single-head
// attention per frame in the middle, nearest x2 upsampling in space and a causal time convolution
// that doubles frames after the first: 1 + 4k frames from k + 1 latent frames.
//
// Decoding runs a few latent frames at a time and carries, for every causal convolution, the last two
// frames of its input to the next chunk (the reference's feature cache, as diffusers' _decode and the
// official WanVAE do it one latent frame at a time): memory is bounded by the chunk, not the clip.
// Spatial tiling (diffusers' tiled_decode: overlapping tiles blended linearly) bounds it further for
// large frames and is how decoding is shared between ranks.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/vae.h"

namespace ditto {

struct WanVaeConfig {
  int base_dim = 96, decoder_base_dim = 0;  // 0: base_dim
  int z_dim = 16, num_res_blocks = 2, in_channels = 3, out_channels = 3;
  std::vector<int> dim_mult{1, 2, 4, 4};
  std::vector<bool> temporal_downsample{false, true, true};  // the encoder's; the decoder's is reversed
  std::vector<double> latents_mean, latents_std;             // z_dim each
  int decoder_dim() const { return decoder_base_dim ? decoder_base_dim : base_dim; }
  int temporal_factor() const;  // 2 ^ (temporal stages)
  int spatial_factor() const;   // 2 ^ (stages - 1)
};

// Built-in configs (benchmarks with random weights): "wan2.1" (Wan-VAE 2.1: base width 96, 16 latent
// channels, its per-channel mean and std) and "wan-tiny" (base width 4, 4 channels: the tests' shape).
WanVaeConfig wan_vae_builtin_config(const std::string& name);

// diffusers' config.json (AutoencoderKLWan); an Error naming the file and field, and one for what
// ditto does not decode yet (Wan 2.2's residual VAE with patch_size).
WanVaeConfig parse_wan_vae_config(const nlohmann::json& j, const std::string& where);
std::vector<ParamSpec> wan_vae_decoder_specs(const WanVaeConfig& c);

// The latent of a Wan video: F = 4k + 1 frames -> k + 1 latent frames; 8x in space; sizes a multiple
// of 16 (the VAE's 8x and the transformer's 2x2 patches). An Error for other sizes.
LatentShape wan_latent_shape(int channels, int frames, int height, int width);

// Spatial tiles in pixels (diffusers' tile_sample_min_* and tile_sample_stride_*): tiles of `size`
// every `stride` pixels, blended over size - stride. size 0: no tiling.
struct VaeTiling {
  int size = 0, stride = 0;
};

class WanVaeDecoder {
 public:
  // A diffusers AutoencoderKLWan directory; weights converted to `options` (float32 or bfloat16).
  static WanVaeDecoder from_pretrained(const std::string& dir, const at::TensorOptions& options);
  // Random weights drawn from `seed` (convolutions ~ N(0, 1 / fan_in), norms 1, biases 0): benchmarks.
  static WanVaeDecoder random(const WanVaeConfig& config, uint64_t seed, const at::TensorOptions& options);
  WanVaeDecoder(WanVaeConfig config, std::map<std::string, at::Tensor> weights, const at::TensorOptions& options);

  const WanVaeConfig& config() const { return config_; }
  const at::TensorOptions& options() const { return options_; }
  // The normalised latent z [B, z_dim, T, h, w] as the transformer samples it -> the VAE's latent
  // (z * std + mean, WanPipeline's and the official decode's de-normalisation).
  at::Tensor denormalize(const at::Tensor& z) const;
  // The VAE's latent [B, z_dim, T, h, w] -> frames [B, 3, 1 + 4 (T - 1), 8h, 8w] in [-1, 1]
  // (float32, on the decoder's device), `chunk` latent frames at a time (1: as the reference).
  at::Tensor decode_latent(const at::Tensor& latent, int chunk = 1) const;
  // The same through spatial tiles (diffusers' tiled_decode): tile k (row-major) unclamped, its
  // shape, the number of tiles; every tile.
  int tiles(const at::Tensor& latent, const VaeTiling& tiling) const;
  std::vector<int64_t> tile_shape(const at::Tensor& latent, const VaeTiling& tiling, int k) const;
  at::Tensor decode_tile(const at::Tensor& latent, const VaeTiling& tiling, int k, int chunk = 1) const;
  std::vector<at::Tensor> decode_tiles(const at::Tensor& latent, const VaeTiling& tiling, int chunk = 1) const;
  // Every tile of decode_tiles blended into the frames, clamped to [-1, 1].
  at::Tensor blend_tiles(std::vector<at::Tensor> tiles, const at::Tensor& latent, const VaeTiling& tiling) const;

 private:
  struct Stream;  // the causal convolutions' carried frames while a clip is decoded
  const at::Tensor& w(const std::string& name) const;
  at::Tensor causal_conv(const at::Tensor& x, const std::string& name, at::Tensor* carried) const;
  at::Tensor causal_conv(const at::Tensor& x, const std::string& name, Stream& s) const;
  at::Tensor decode_frames(const at::Tensor& latent, int chunk) const;  // unclamped
  at::Tensor residual(const at::Tensor& x, const std::string& name, Stream& s) const;
  at::Tensor attention(const at::Tensor& x, const std::string& name) const;
  at::Tensor upsample(const at::Tensor& x, const std::string& name, bool temporal, Stream& s) const;
  at::Tensor norm(const at::Tensor& x, const std::string& name) const;
  at::Tensor decode_chunk(const at::Tensor& latent_chunk, Stream& s) const;

  WanVaeConfig config_;
  std::map<std::string, at::Tensor> weights_;
  at::TensorOptions options_;
};

// Wan-VAE 2.1 behind the VAE seam: the latent as the transformer samples it -> frames; 8-bit frames
// truncate as the official Wan code and diffusers' export_to_video do.
class WanVae : public VAE {
 public:
  WanVae(std::shared_ptr<const WanVaeDecoder> decoder, VaeTiling tiling = {}, int chunk = 1)
      : decoder_(std::move(decoder)), tiling_(tiling), chunk_(chunk) {}
  std::string name() const override { return "wan2.1"; }
  LatentShape latent_shape(int frames, int height, int width) const override;
  bool can_decode() const override { return true; }
  at::Tensor decode(const at::Tensor& latent, int frames = 0) const override;  // every frame of the latent
  FrameRounding frame_rounding() const override { return FrameRounding::Truncate; }
  // With tiles (and a frame larger than one): one part per tile.
  int parts(const at::Tensor& latent) const override;
  std::vector<int64_t> part_shape(const at::Tensor& latent, int k, int frames) const override;
  at::Tensor decode_part(const at::Tensor& latent, int k, int frames) const override;
  at::Tensor join_parts(std::vector<at::Tensor> parts, const at::Tensor& latent) const override;
  const WanVaeDecoder& decoder() const { return *decoder_; }

 private:
  bool tiled(const at::Tensor& latent) const;  // tiles given and the frame larger than one
  std::shared_ptr<const WanVaeDecoder> decoder_;
  VaeTiling tiling_;
  int chunk_;
};

}  // namespace ditto
