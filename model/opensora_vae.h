// Open-Sora 1.2's VAE decoder in LibTorch, loaded from its VideoAutoencoderPipeline directory
// (hpcai-tech/OpenSora-VAE-v1.2: config.json + model.safetensors, spatial_vae.module.* / temporal_vae.*):
// the latent scaled back (z * scale + shift), cut into independent chunks of 5 latent frames, each
// decoded by the temporal VAE (MAGVIT-style causal 3-D convolutions, GroupNorm, depth-to-space in
// time) into 17 frames of the 2-D latent (its leading padding frames dropped), then every frame by the
// 2-D KL decoder (diffusers' AutoencoderKL decoder: the SDXL VAE's shape, latent / 0.18215). Chunks are
// independent: ranks share them, each decoding whole chunks, and the frames are those of one rank.
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

struct OpenSoraVaeConfig {
  // The temporal VAE (VAE_Temporal_SD's values; a config may give others, as ditto's tiny test model does).
  int channels = 4;  // in_out_channels = latent_embed_dim = embed_dim
  int filters = 128, num_res_blocks = 4, num_groups = 32;
  std::vector<int> channel_multipliers{1, 2, 2, 4};
  std::vector<bool> temporal_downsample{false, true, true};
  // The 2-D VAE (the SDXL VAE's decoder).
  std::vector<int> block_out_channels{128, 256, 512, 512};
  int layers_per_block = 2, norm_num_groups = 32, latent_channels = 4;
  int micro_frame_size = 17;
  std::vector<double> scale{3.85, 2.32, 2.33, 3.06}, shift{-0.10, 0.34, 0.27, 0.98};
  int time_factor() const;   // 2 ^ (temporal stages): 4
  int chunk_latents() const;  // latent frames of micro_frame_size frames: 5
  int spatial_factor() const { return 1 << (static_cast<int>(block_out_channels.size()) - 1); }
};

// The pipeline's config.json (model_type VideoAutoencoderPipeline); an Error naming the field.
OpenSoraVaeConfig parse_opensora_vae_config(const nlohmann::json& j, const std::string& where);
std::vector<ParamSpec> opensora_vae_decoder_specs(const OpenSoraVaeConfig& c);
// Whether a config.json is Open-Sora's VAE pipeline.
bool is_opensora_vae_config(const nlohmann::json& j);

class OpenSoraVae : public VAE {
 public:
  static std::shared_ptr<OpenSoraVae> from_pretrained(const std::string& dir, const at::TensorOptions& options);
  OpenSoraVae(OpenSoraVaeConfig config, std::map<std::string, at::Tensor> weights, const at::TensorOptions& options);

  const OpenSoraVaeConfig& config() const { return config_; }
  std::string name() const override { return "opensora-v1.2"; }
  LatentShape latent_shape(int frames, int height, int width) const override;
  bool can_decode() const override { return true; }
  at::Tensor decode(const at::Tensor& latent, int frames) const override;
  // The frames before [-1, 1] is imposed (the reference's decode output).
  at::Tensor decode_unclamped(const at::Tensor& latent, int frames) const;
  // One part per chunk of 5 latent frames.
  int parts(const at::Tensor& latent) const override;
  std::vector<int64_t> part_shape(const at::Tensor& latent, int k, int frames) const override;
  at::Tensor decode_part(const at::Tensor& latent, int k, int frames) const override;
  at::Tensor join_parts(std::vector<at::Tensor> parts, const at::Tensor& latent) const override;
  // The temporal VAE's output for one chunk of the scaled latent: [B, 4, n, h, w] (n frames kept).
  at::Tensor temporal_decode(const at::Tensor& chunk, int n) const;
  // The 2-D decoder on frames [N, 4, h, w] of the 2-D latent (already divided by 0.18215).
  at::Tensor spatial_decode(const at::Tensor& frames) const;

 private:
  const at::Tensor& w(const std::string& name) const;
  at::Tensor causal_conv(const at::Tensor& x, const std::string& name) const;
  at::Tensor temporal_res(const at::Tensor& x, const std::string& name) const;
  at::Tensor spatial_res(const at::Tensor& x, const std::string& name) const;
  at::Tensor spatial_attention(const at::Tensor& x, const std::string& name) const;
  int frames_of(const at::Tensor& latent, int frames) const;  // 0: all the latent holds
  int chunk_frames(const at::Tensor& latent, int k, int frames) const;

  OpenSoraVaeConfig config_;
  std::map<std::string, at::Tensor> weights_;
  at::TensorOptions options_;
};

}  // namespace ditto
