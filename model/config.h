// STDiT3 model configuration: the official STDiT3Config fields (config.json names) plus ditto's
// description of the latent space (which VAE the model works in), and the built-in named configs.
#pragma once
#include <array>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ditto {

// How pixels map to the model's input: Open-Sora 1.2's VAE (8x space, 17 frames -> 5 latents,
// 4 channels), or none at all (a pixel-space model such as ditto's demo).
enum class LatentSpace { OpenSoraV12, Pixel };

struct STDiT3Config {
  int hidden_size = 1152;
  int depth = 28;  // block pairs: depth spatial + depth temporal blocks
  int num_heads = 16;
  std::array<int, 3> patch_size{1, 2, 2};
  int in_channels = 4;
  double mlp_ratio = 4.0;
  bool pred_sigma = true;
  int caption_channels = 4096;
  int model_max_length = 300;
  bool qk_norm = true;
  int input_sq_size = 512;
  double class_dropout_prob = 0.1;
  LatentSpace latent_space = LatentSpace::OpenSoraV12;  // ditto field "latent_space"
  // ditto field "temporal_pos_embed": add the 1D sin-cos embedding of each token's frame index to
  // the patch embedding (as STDiT v1's pos_embed_temporal did). STDiT3 has none (its temporal
  // attention sees relative positions only, through RoPE); the demo model has it, because its
  // prompts fix where the object is in each frame, which relative positions alone cannot tell.
  bool temporal_pos_embed = false;
  // ditto field "frame_modulation": every block's adaLN shift/scale/gate also gets a per-frame term, a
  // linear map of the frame index's 1D sin-cos embedding ("frame_block", zero at initialisation), so
  // a block can scale its features by a function of the frame (a product the additive embedding
  // alone must learn through attention). The demo's experimental config ditto-demo-fm has it.
  bool frame_modulation = false;
  // ditto field "frame_caption_modulation" (needs frame_modulation): the per-frame term reads the frame,
  // the timestep and the caption, W SiLU(t + e_f + mean caption token) + b, instead of W e_f + b. The
  // SiLU's curvature holds the products of the frame's and the caption's features, so one linear map
  // (zero at the start) can turn a direction word into a frame-dependent scale and shift: "left"
  // makes the early frames differ from the late ones the other way than "right". Built-in
  // ditto-demo-fcm (experimental).
  bool frame_caption_modulation = false;
  // Whether the forward reads each token frame's index (ForwardArgs::frame_index).
  bool reads_frame_index() const { return temporal_pos_embed || frame_modulation; }

  int out_channels() const { return pred_sigma ? 2 * in_channels : in_channels; }
  int head_dim() const { return hidden_size / num_heads; }
  int mlp_hidden() const { return static_cast<int>(hidden_size * mlp_ratio); }
  int patch_volume() const { return patch_size[0] * patch_size[1] * patch_size[2]; }
  void validate() const;  // throws Error naming the inconsistent field
};

// Reads config.json (official field names; unknown fields are ignored, unsupported features are
// an Error). Writes the same names back, plus ditto's own fields.
STDiT3Config load_config(const std::string& path);
void save_config(const STDiT3Config& config, const std::string& path);
// The same from and to JSON; `where` names the source in errors.
STDiT3Config parse_config(const nlohmann::json& j, const std::string& where);
nlohmann::ordered_json config_json(const STDiT3Config& config);

// Named configs for random-weight runs: stdit3-xl, stdit3-3b, stdit3-small, stdit3-tiny.
STDiT3Config builtin_config(const std::string& name);
std::vector<std::string> builtin_config_names();

const char* latent_space_name(LatentSpace s);

}  // namespace ditto
