// The pixel latent space and Open-Sora 1.2's latent geometry (see vae.h).
#include "model/vae.h"

#include "model/error.h"

namespace ditto {

namespace {
void check_size(int frames, int height, int width) {
  if (frames <= 0 || height <= 0 || width <= 0)
    fail("frames, height and width must be positive (got ", frames, "x", height, "x", width, ")");
}
}  // namespace

at::Tensor VAE::encode(const at::Tensor&) const { fail("the ", name(), " VAE cannot encode videos"); }

LatentShape PixelSpace::latent_shape(int frames, int height, int width) const {
  check_size(frames, height, width);
  return {channels_, frames, height, width};
}

std::string PixelSpace::cannot_decode_reason() const {
  return can_decode() ? "" : "a pixel-space model with " + std::to_string(channels_) + " channels is not RGB";
}

at::Tensor PixelSpace::decode(const at::Tensor& latent) const {
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
  return "the model works in Open-Sora 1.2's VAE latent space and ditto does not load that VAE yet; "
         "decode latent.safetensors with Open-Sora's VAE";
}

at::Tensor OpenSoraV12Geometry::decode(const at::Tensor&) const { fail("cannot decode: ", cannot_decode_reason()); }

}  // namespace ditto
