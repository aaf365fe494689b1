// Parsing, validation and built-in presets of STDiT3Config.
#include "model/config.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "model/atomic_file.h"
#include "model/error.h"

namespace ditto {

const char* latent_space_name(LatentSpace s) { return s == LatentSpace::Pixel ? "pixel" : "opensora-v1.2"; }

void STDiT3Config::validate() const {
  // Positive and within what any DiT uses, so a hostile config is refused before specs or weights
  // are sized from it (depth 2^24 would ask for hundreds of millions of tensors).
  check_config_size("hidden_size", hidden_size, 65536);
  check_config_size("depth", depth, 1024);
  check_config_size("num_heads", num_heads, 1024);
  check_config_size("in_channels", in_channels, 4096);
  check_config_size("caption_channels", caption_channels, 65536);
  check_config_size("model_max_length", model_max_length, 65536);
  check_config_size("input_sq_size", input_sq_size, 65536);
  for (int p : patch_size) check_config_size("patch_size", p, 64);
  if (hidden_size % num_heads != 0)
    fail("config: hidden_size ", hidden_size, " is not divisible by num_heads ", num_heads);
  if (frame_caption_modulation && !frame_modulation)
    fail("config: frame_caption_modulation needs frame_modulation (it changes what the per-frame term reads)");
  if (head_dim() % 2 != 0) fail("config: head dim ", head_dim(), " must be even for the temporal RoPE");
  if (hidden_size % 4 != 0) fail("config: hidden_size ", hidden_size, " must be divisible by 4 (2D sin-cos position embedding)");
  if (!(mlp_ratio > 0 && mlp_ratio <= 64)) fail("config: mlp_ratio must be in (0, 64], got ", mlp_ratio);
}

STDiT3Config load_config(const std::string& path) { return parse_config(read_json_file(path, "model config"), path); }

STDiT3Config parse_config(const nlohmann::json& j, const std::string& path) {
  if (!j.is_object()) fail("'", path, "': the config is not a JSON object");
  STDiT3Config c;
  auto where = [&](const char* key) { return "'" + path + "', field '" + key + "'"; };
  auto get = [&](const char* key, auto& out) { config_field(j, key, out, "'" + path + "'"); };
  if (j.contains("model_type") && j["model_type"] != "STDiT3")
    fail(where("model_type"), ": '", dump_json(j["model_type"]), "' is not STDiT3");
  get("hidden_size", c.hidden_size);
  get("depth", c.depth);
  get("num_heads", c.num_heads);
  if (j.contains("patch_size") && j["patch_size"].is_number_integer()) {  // one number: 1 x n x n
    int n = 0;
    get("patch_size", n);
    c.patch_size = {1, n, n};
  } else {
    get("patch_size", c.patch_size);
  }
  get("in_channels", c.in_channels);
  get("mlp_ratio", c.mlp_ratio);
  get("pred_sigma", c.pred_sigma);
  get("caption_channels", c.caption_channels);
  get("model_max_length", c.model_max_length);
  get("qk_norm", c.qk_norm);
  get("input_sq_size", c.input_sq_size);
  get("class_dropout_prob", c.class_dropout_prob);
  bool skip_y = false;
  get("skip_y_embedder", skip_y);
  if (skip_y) fail(where("skip_y_embedder"), ": true is not supported (ditto needs the caption embedder)");
  if (j.contains("latent_space")) {
    std::string s;
    get("latent_space", s);
    if (s == "pixel") c.latent_space = LatentSpace::Pixel;
    else if (s == "opensora-v1.2") c.latent_space = LatentSpace::OpenSoraV12;
    else fail(where("latent_space"), ": unknown '", s, "' (known: opensora-v1.2, pixel)");
  }
  if (j.contains("temporal_pos_embed")) {
    const auto& v = j["temporal_pos_embed"];
    if (!v.is_string() || (v != "sincos" && v != "none"))
      fail(where("temporal_pos_embed"), ": unknown ", dump_json(v), " (known: \"none\", \"sincos\")");
    c.temporal_pos_embed = v == "sincos";
  }
  get("frame_modulation", c.frame_modulation);
  get("frame_caption_modulation", c.frame_caption_modulation);
  try {
    c.validate();
  } catch (const Error& e) {
    fail("'", path, "': ", e.what());
  }
  return c;
}

void save_config(const STDiT3Config& c, const std::string& path) {
  const nlohmann::ordered_json j = config_json(c);
  write_file_atomic(path, [&](std::ostream& out) { out << dump_json(j, 2) << "\n"; });
}

nlohmann::ordered_json config_json(const STDiT3Config& c) {
  nlohmann::ordered_json j;
  j["architectures"] = {"STDiT3"};
  j["model_type"] = "STDiT3";
  j["input_size"] = {nullptr, nullptr, nullptr};
  j["input_sq_size"] = c.input_sq_size;
  j["in_channels"] = c.in_channels;
  j["patch_size"] = c.patch_size;
  j["hidden_size"] = c.hidden_size;
  j["depth"] = c.depth;
  j["num_heads"] = c.num_heads;
  j["mlp_ratio"] = c.mlp_ratio;
  j["class_dropout_prob"] = c.class_dropout_prob;
  j["pred_sigma"] = c.pred_sigma;
  j["drop_path"] = 0.0;
  j["caption_channels"] = c.caption_channels;
  j["model_max_length"] = c.model_max_length;
  j["qk_norm"] = c.qk_norm;
  j["enable_flash_attn"] = false;
  j["enable_layernorm_kernel"] = false;
  j["enable_sequence_parallelism"] = false;
  j["only_train_temporal"] = false;
  j["freeze_y_embedder"] = false;
  j["skip_y_embedder"] = false;
  j["torch_dtype"] = "float32";
  j["latent_space"] = latent_space_name(c.latent_space);
  j["temporal_pos_embed"] = c.temporal_pos_embed ? "sincos" : "none";
  if (c.frame_modulation) j["frame_modulation"] = true;
  if (c.frame_caption_modulation) j["frame_caption_modulation"] = true;
  return j;
}

STDiT3Config builtin_config(const std::string& name) {
  STDiT3Config c;  // defaults are STDiT3-XL/2
  if (name == "stdit3-xl") {
  } else if (name == "stdit3-3b") {
    c.hidden_size = 1872;
    c.num_heads = 26;
  } else if (name == "stdit3-small") {  // CPU benchmarks: same structure, ~1/20 of the width
    c.hidden_size = 256;
    c.depth = 4;
    c.num_heads = 4;
    c.caption_channels = 256;
    c.model_max_length = 32;
  } else if (name == "stdit3-tiny") {  // unit tests
    c.hidden_size = 64;
    c.depth = 2;
    c.num_heads = 4;
    c.caption_channels = 32;
    c.model_max_length = 8;
  } else if (name == "ditto-demo" || name == "ditto-demo-fm" || name == "ditto-demo-fcm" || name == "ditto-demo-tiny") {  // pixel space, 16 x 32 x 32 RGB
    c.latent_space = LatentSpace::Pixel;
    c.in_channels = 3;
    c.pred_sigma = false;
    c.patch_size = {1, 4, 4};
    const bool full = name != "ditto-demo-tiny";
    c.hidden_size = full ? 128 : 32;
    c.depth = full ? 4 : 1;
    c.num_heads = 4;
    c.caption_channels = full ? 64 : 16;
    c.model_max_length = 18;  // the longest demo prompt (two objects and a background) has 17 words
    c.input_sq_size = 32;
    c.temporal_pos_embed = true;
    c.frame_modulation = name == "ditto-demo-fm" || name == "ditto-demo-fcm";
    c.frame_caption_modulation = name == "ditto-demo-fcm";
  } else {
    std::string known;
    for (const auto& n : builtin_config_names()) known += (known.empty() ? "" : ", ") + n;
    fail("unknown model config '", name, "' (built-in: ", known, ")");
  }
  c.validate();
  return c;
}

std::vector<std::string> builtin_config_names() {
  return {"stdit3-xl", "stdit3-3b", "stdit3-small", "stdit3-tiny", "ditto-demo", "ditto-demo-fm", "ditto-demo-fcm", "ditto-demo-tiny"};
}

}  // namespace ditto
