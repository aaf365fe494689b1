// Caption sources and the text-encoder registry (see text_encoder.h).
#include "model/text_encoder.h"

#include <map>
#include <mutex>

#include "model/error.h"
#include "model/safetensors.h"

namespace ditto {

Caption load_caption_embedding(const std::string& path, int tokens, int channels) {
  SafetensorsFile f(path);
  if (!f.contains("y")) fail("caption embedding '", path, "' has no tensor 'y'");
  // An embedding is real-valued: integer or bool tensors are not converted without a word.
  if (!at::isFloatingType(safetensors_scalar_type(f.find("y")->dtype)))
    fail("caption embedding '", path, "': y is ", f.find("y")->dtype, ", a text encoder's output is floating point");
  at::Tensor y = f.tensor("y", at::TensorOptions().dtype(at::kFloat));
  if (!at::isfinite(y).all().item<bool>()) fail("caption embedding '", path, "': y has NaN or infinite values");
  while (y.dim() > 2 && y.size(0) == 1) y = y.squeeze(0);
  if (y.dim() != 2) fail("caption embedding '", path, "': y must be [L, C] or [1, 1, L, C], got ", y.sizes());
  const int64_t L = y.size(0);
  if (y.size(1) != channels)
    fail("caption embedding '", path, "': y has ", y.size(1), " channels, the model's caption_channels is ", channels);
  if (L > tokens) fail("caption embedding '", path, "': ", L, " tokens, the model takes at most ", tokens);
  at::Tensor mask = at::ones({L}, at::kLong);
  if (f.contains("mask")) {
    mask = f.tensor("mask", at::TensorOptions().dtype(at::kLong)).reshape({-1});
    if (mask.size(0) != L) fail("caption embedding '", path, "': mask has ", mask.size(0), " entries, y has ", L, " tokens");
  }
  if (mask.ne(0).sum().item<int64_t>() == 0) fail("caption embedding '", path, "': the mask has no valid token");
  Caption cap;
  cap.y = at::zeros({tokens, channels}, at::kFloat);
  cap.y.narrow(0, 0, L).copy_(y);
  cap.mask = at::zeros({tokens}, at::kLong);
  cap.mask.narrow(0, 0, L).copy_(mask);
  cap.y = cap.y.reshape({1, 1, tokens, channels});
  cap.mask = cap.mask.unsqueeze(0);
  return cap;
}

Caption random_caption(int valid, uint64_t seed, int tokens, int channels) {
  if (valid <= 0 || valid > tokens) fail("random caption tokens must be in 1..", tokens, ", got ", valid);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed ^ 0x5eedcafeull);
  Caption cap;
  cap.y = at::randn({1, 1, tokens, channels}, gen, at::kFloat);
  cap.mask = at::zeros({1, tokens}, at::kLong);
  cap.mask.narrow(1, 0, valid).fill_(1);
  return cap;
}

namespace {

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::vector<TextEncoderKind>& kinds() {
  static std::vector<TextEncoderKind> k;
  return k;
}

}  // namespace

void register_text_encoder(TextEncoderKind kind) {
  std::lock_guard<std::mutex> g(registry_mutex());
  for (const auto& k : kinds())
    if (k.name == kind.name) return;  // registering the same kind again changes nothing
  kinds().push_back(std::move(kind));
}

const TextEncoderKind* text_encoder_kind(const std::string& dir) {
  if (dir.empty()) return nullptr;
  std::lock_guard<std::mutex> g(registry_mutex());
  for (const auto& k : kinds())
    if (k.present(dir)) return &k;
  return nullptr;
}

std::shared_ptr<const TextEncoder> find_text_encoder(const std::string& dir) {
  const TextEncoderKind* kind = text_encoder_kind(dir);
  if (!kind) return nullptr;
  static std::mutex m;
  static std::map<std::string, std::shared_ptr<const TextEncoder>> loaded;
  std::lock_guard<std::mutex> g(m);
  auto& slot = loaded[dir];
  if (!slot) slot = kind->load(dir);
  return slot;
}

}  // namespace ditto
