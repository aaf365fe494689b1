// The pixel latent space and Open-Sora 1.2's latent geometry (see vae.h).
#include "model/vae.h"

#include <map>
#include <mutex>
#include <tuple>

#include "model/atomic_file.h"
#include "model/error.h"
#include "model/opensora_vae.h"
#include "model/wan_vae.h"

namespace ditto {

namespace {
void check_size(int frames, int height, int width) {
  if (frames <= 0 || height <= 0 || width <= 0)
    fail("frames, height and width must be positive (got ", frames, "x", height, "x", width, ")");
}
}  // namespace

at::Tensor VAE::encode(const at::Tensor&) const { fail("the ", name(), " VAE cannot encode videos"); }

std::vector<int64_t> VAE::part_shape(const at::Tensor&, int, int) const { fail("the ", name(), " VAE decodes in one part"); }

at::Tensor VAE::decode_part(const at::Tensor& latent, int k, int frames) const {
  if (k != 0) fail("the ", name(), " VAE decodes in one part, not part ", k);
  return decode(latent, frames);
}

at::Tensor VAE::join_parts(std::vector<at::Tensor> parts, const at::Tensor&) const {
  if (parts.size() != 1) fail("the ", name(), " VAE decodes in one part, got ", parts.size());
  return parts[0];
}

LatentShape PixelSpace::latent_shape(int frames, int height, int width) const {
  check_size(frames, height, width);
  return {channels_, frames, height, width};
}

std::string PixelSpace::cannot_decode_reason() const {
  return can_decode() ? "" : "a pixel-space model with " + std::to_string(channels_) + " channels is not RGB";
}

at::Tensor PixelSpace::decode(const at::Tensor& latent, int) const {
  if (!can_decode()) fail("cannot decode: ", cannot_decode_reason());
  return latent.clamp(-1, 1);
}

at::Tensor PixelSpace::encode(const at::Tensor& video) const {
  if (!can_encode()) fail("cannot encode: ", cannot_decode_reason());
  return video;
}

LatentShape OpenSoraV12Geometry::latent_shape(int frames, int height, int width) const {
  check_size(frames, height, width);
  if (height < 8 || width < 8) fail("height and width must be at least 8 pixels for the Open-Sora VAE");
  const int t = frames / 17 * 5 + (frames % 17 + 3) / 4;
  return {channels_, t, height / 8, width / 8};
}

std::string OpenSoraV12Geometry::cannot_decode_reason() const {
  return "no VAE was given: pass --vae DIR (Open-Sora 1.2's VAE, hpcai-tech/OpenSora-VAE-v1.2)";
}

at::Tensor OpenSoraV12Geometry::decode(const at::Tensor&, int) const { fail("cannot decode: ", cannot_decode_reason()); }

std::string pipeline_vae_dir(const std::string& model_dir) {
  if (!path_exists(model_dir + "/model_index.json") || !path_exists(model_dir + "/vae/config.json")) return "";
  return model_dir + "/vae";
}

std::shared_ptr<const VAE> load_vae(const std::string& dir_in, const VaeOptions& o) {
  const std::string dir = path_exists(dir_in + "/model_index.json") ? pipeline_vae_dir(dir_in) : dir_in;
  if (dir.empty()) fail("'", dir_in, "' is a pipeline without vae/config.json");
  static std::mutex mu;
  static std::map<std::tuple<std::string, std::string, int, int, int>, std::shared_ptr<const VAE>> loaded;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(dir, o.options.device().str() + "/" + std::string(c10::toString(o.options.dtype().toScalarType())),
                                   o.chunk, o.tile, o.tile_stride);
  auto& slot = loaded[key];
  if (slot) return slot;
  if (!path_exists(dir + "/config.json")) fail("'", dir, "' is not a VAE directory: it has no config.json");
  const nlohmann::json j = read_json_file(dir + "/config.json", "VAE config");
  if (is_opensora_vae_config(j)) {
    slot = OpenSoraVae::from_pretrained(dir, o.options);  // its parts are its chunks: no tiles, no chunk option
    return slot;
  }
  const std::string kind = j.is_object() && j.contains("_class_name") && j["_class_name"].is_string() ? j["_class_name"].get<std::string>() : "";
  if (kind != "AutoencoderKLWan")
    fail("'", dir, "/config.json': ", kind.empty() ? "neither _class_name nor model_type names a VAE" : "_class_name '" + kind + "' is not a VAE ditto decodes",
         " (AutoencoderKLWan: Wan-VAE 2.1; model_type VideoAutoencoderPipeline: Open-Sora 1.2's VAE)");
  if (o.chunk < 1) fail("VAE chunks of at least one latent frame, got ", o.chunk);
  // The weights once per directory, device and dtype, whatever the tiles and chunks.
  static std::map<std::tuple<std::string, std::string>, std::shared_ptr<const WanVaeDecoder>> decoders;
  auto& decoder = decoders[{dir, std::get<1>(key)}];
  if (!decoder) decoder = std::make_shared<const WanVaeDecoder>(WanVaeDecoder::from_pretrained(dir, o.options));
  slot = std::make_shared<WanVae>(decoder, VaeTiling{o.tile, o.tile_stride}, o.chunk);
  return slot;
}

}  // namespace ditto
