// The T5 / umT5 encoder (see t5.h).
#include "model/t5.h"

#include <cmath>
#include <tuple>
#include <mutex>
#include <limits>
#include <sstream>

#include "model/atomic_file.h"
#include "model/error.h"
#include "model/layers.h"
#include "model/family.h"
#include "model/text_clean.h"
#include "model/text_encoder.h"
#include "model/tokenizer.h"

namespace ditto {

void T5Config::validate() const {
  if (model_type != "t5" && model_type != "umt5") fail("config: model_type '", model_type, "' is not t5 or umt5");
  check_config_size("vocab_size", vocab_size, 1 << 20);
  check_config_size("d_model", d_model, 65536);
  check_config_size("d_kv", d_kv, 4096);
  check_config_size("d_ff", d_ff, 1 << 20);
  check_config_size("num_layers", num_layers, 1024);
  check_config_size("num_heads", num_heads, 1024);
  check_config_size("relative_attention_num_buckets", relative_attention_num_buckets, 4096);
  check_config_size("relative_attention_max_distance", relative_attention_max_distance, 1 << 20);
  if (relative_attention_num_buckets < 4) fail("config: relative_attention_num_buckets must be at least 4");
  if (relative_attention_max_distance <= relative_attention_num_buckets / 4)
    fail("config: relative_attention_max_distance must exceed num_buckets / 4");
  if (!(layer_norm_epsilon > 0)) fail("config: layer_norm_epsilon must be positive");
}

T5Config t5_builtin_config(const std::string& name) {
  T5Config c;  // the XXL shape
  if (name == "umt5-xxl") {
    c.model_type = "umt5";
    c.vocab_size = 256384;
    return c;
  }
  if (name == "t5-v1_1-xxl") return c;
  if (name == "umt5-tiny") {
    c.model_type = "umt5";
    c.vocab_size = 128, c.d_model = 32, c.d_kv = 8, c.d_ff = 48, c.num_layers = 2, c.num_heads = 4;
    return c;
  }
  fail("unknown text encoder config '", name, "' (umt5-xxl, t5-v1_1-xxl, umt5-tiny)");
}

T5Config parse_t5_config(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) fail("'", where, "': the config is not a JSON object");
  T5Config c;
  auto get = [&](const char* key, auto& out) { config_field(j, key, out, "'" + where + "'"); };
  get("model_type", c.model_type);
  get("vocab_size", c.vocab_size);
  get("d_model", c.d_model);
  get("d_kv", c.d_kv);
  get("d_ff", c.d_ff);
  get("num_layers", c.num_layers);
  get("num_heads", c.num_heads);
  get("relative_attention_num_buckets", c.relative_attention_num_buckets);
  get("relative_attention_max_distance", c.relative_attention_max_distance);
  get("layer_norm_epsilon", c.layer_norm_epsilon);
  // transformers' rule: "gated-ACT" is a gated feed-forward with ACT ("gated-gelu" means gelu_new).
  std::string proj = "relu";
  get("feed_forward_proj", proj);
  c.gated = proj.rfind("gated-", 0) == 0;
  const std::string act = c.gated ? proj.substr(6) : proj;
  if (act == "gelu" && c.gated) c.activation = "gelu_new";
  else if (act == "gelu_new" || act == "relu") c.activation = act;
  else fail("'", where, "', field 'feed_forward_proj': '", proj, "' is not supported (gated-gelu, relu, gated-relu)");
  try {
    c.validate();
  } catch (const Error& e) {
    fail("'", where, "': ", e.what());
  }
  return c;
}

std::vector<ParamSpec> t5_param_specs(const T5Config& c) {
  const int64_t D = c.d_model, I = c.inner_dim(), F = c.d_ff;
  std::vector<ParamSpec> s = {{"shared.weight", {c.vocab_size, D}}};
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string b = "encoder.block." + std::to_string(i) + ".layer.";
    for (const char* p : {"q", "k", "v"}) s.push_back({b + "0.SelfAttention." + p + ".weight", {I, D}});
    s.push_back({b + "0.SelfAttention.o.weight", {D, I}});
    if (i == 0 || c.bias_per_layer())
      s.push_back({b + "0.SelfAttention.relative_attention_bias.weight", {c.relative_attention_num_buckets, c.num_heads}});
    s.push_back({b + "0.layer_norm.weight", {D}});
    if (c.gated) {
      s.push_back({b + "1.DenseReluDense.wi_0.weight", {F, D}});
      s.push_back({b + "1.DenseReluDense.wi_1.weight", {F, D}});
    } else {
      s.push_back({b + "1.DenseReluDense.wi.weight", {F, D}});
    }
    s.push_back({b + "1.DenseReluDense.wo.weight", {D, F}});
    s.push_back({b + "1.layer_norm.weight", {D}});
  }
  s.push_back({"encoder.final_layer_norm.weight", {D}});
  return s;
}

at::Tensor t5_relative_buckets(int64_t query_len, int64_t key_len, int num_buckets, int max_distance) {
  const at::Tensor rel = at::arange(key_len, at::kLong).unsqueeze(0) - at::arange(query_len, at::kLong).unsqueeze(1);
  const int64_t half = num_buckets / 2, max_exact = half / 2;
  at::Tensor buckets = (rel > 0).to(at::kLong) * half;
  const at::Tensor r = rel.abs();
  // transformers computes the logarithmic buckets in float32 and truncates.
  const at::Tensor large =
      (max_exact + (at::log(r.to(at::kFloat) / static_cast<float>(max_exact)) /
                    static_cast<float>(std::log(static_cast<double>(max_distance) / max_exact)) * (half - max_exact))
                       .to(at::kLong))
          .clamp_max(half - 1);
  return buckets + at::where(r < max_exact, r, large);
}

T5Encoder::T5Encoder(T5Config config, std::map<std::string, at::Tensor> weights, const at::TensorOptions& options)
    : config_(std::move(config)), weights_(std::move(weights)), options_(options) {
  check_weights(t5_param_specs(config_), weights_, "T5 encoder");
}

T5Encoder T5Encoder::random(const T5Config& config, uint64_t seed, const at::TensorOptions& options) {
  // One block of 2^20 normal values drawn on the CPU, repeated from a random offset into each tensor
  // on its device: an XXL encoder (5.7 billion values) is made in seconds, never whole in float32.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t block_size = 1 << 20;
  const at::Tensor block = at::randn({2 * block_size}, gen, at::TensorOptions().dtype(at::kFloat)).to(options);
  std::map<std::string, at::Tensor> weights;
  for (const ParamSpec& p : t5_param_specs(config)) {
    int64_t n = 1;
    for (int64_t d : p.shape) n *= d;
    const bool norm = p.name.find("layer_norm") != std::string::npos;
    const bool table = p.name == "shared.weight" || p.name.find("relative_attention_bias") != std::string::npos;
    if (norm) {
      weights[p.name] = at::ones(p.shape, options);
      continue;
    }
    const int64_t offset = at::randint(block_size, {1}, gen, at::TensorOptions().dtype(at::kLong)).item<int64_t>();
    const at::Tensor period = block.narrow(0, offset, block_size);
    at::Tensor t = period.repeat({(n + block_size - 1) / block_size}).narrow(0, 0, n).view(p.shape);
    if (!table) t = t / std::sqrt(static_cast<double>(p.shape.back()));
    weights[p.name] = t.contiguous();
  }
  return T5Encoder(config, std::move(weights), options);
}

T5Encoder T5Encoder::from_pretrained(const std::string& dir, const at::TensorOptions& options) {
  const T5Config c = parse_t5_config(read_json_file(dir + "/config.json", "text encoder config"), dir + "/config.json");
  const Checkpoint ck = Checkpoint::open(dir, {"model"});
  const bool has_shared = ck.tensors().count("shared.weight") > 0;
  // A whole T5ForConditionalGeneration also holds the decoder and the LM head; the embedding is
  // "shared" and, tied, possibly again as the encoder's.
  const auto rename = [has_shared](const std::string& name) -> std::string {
    if (name.rfind("decoder.", 0) == 0 || name == "lm_head.weight") return "";
    if (name == "encoder.embed_tokens.weight") return has_shared ? "" : "shared.weight";
    return name;
  };
  std::ostringstream described;
  described << c.model_type << ": d_model=" << c.d_model << ", num_layers=" << c.num_layers << ", num_heads=" << c.num_heads
            << ", d_kv=" << c.d_kv << ", d_ff=" << c.d_ff << ", vocab_size=" << c.vocab_size;
  return T5Encoder(c, load_strict(ck, t5_param_specs(c), options, described.str(), rename), options);
}

const at::Tensor& T5Encoder::w(const std::string& name) const { return weight_named(weights_, name, "T5 encoder"); }

at::Tensor T5Encoder::position_bias(int layer, int64_t len) const {
  const int source = config_.bias_per_layer() ? layer : 0;
  const at::Tensor table =
      w("encoder.block." + std::to_string(source) + ".layer.0.SelfAttention.relative_attention_bias.weight");
  const at::Tensor buckets = t5_relative_buckets(len, len, config_.relative_attention_num_buckets,
                                                 config_.relative_attention_max_distance)
                                 .to(table.device());
  return at::embedding(table, buckets).permute({2, 0, 1}).unsqueeze(0);  // [1, H, L, L]
}

at::Tensor T5Encoder::encode(const at::Tensor& input_ids, const at::Tensor& attention_mask) const {
  if (input_ids.dim() != 2) fail("T5 encoder: input_ids must be [batch, length], got ", input_ids.sizes());
  if (attention_mask.sizes() != input_ids.sizes())
    fail("T5 encoder: attention_mask ", attention_mask.sizes(), " does not match input_ids ", input_ids.sizes());
  const at::Tensor ids = input_ids.to(options_.device(), at::kLong);
  if (ids.numel() && (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= config_.vocab_size))
    fail("T5 encoder: a token id is outside the vocabulary of ", config_.vocab_size);
  const int64_t B = ids.size(0), L = ids.size(1), H = config_.num_heads, Dk = config_.d_kv;
  const auto dtype = options_.dtype().toScalarType();
  const double eps = config_.layer_norm_epsilon;
  // Masked keys get the dtype's lowest value, added to the position bias (as transformers does).
  const double lowest = dtype == at::kDouble ? std::numeric_limits<double>::lowest()
                        : dtype == at::kFloat ? static_cast<double>(std::numeric_limits<float>::lowest())
                        : dtype == at::kHalf  ? -65504.0
                                              : -3.3895313892515355e38;
  const at::Tensor mask_bias =
      (1 - attention_mask.to(options_.device(), dtype).view({B, 1, 1, L})) * lowest;  // [B, 1, 1, L]
  at::Tensor h = at::embedding(w("shared.weight"), ids);
  at::Tensor bias;
  auto clamp_half = [&](at::Tensor& x) {  // transformers keeps float16 activations finite
    if (x.scalar_type() == at::kHalf) x = x.clamp(-64504.0, 64504.0);
  };
  for (int i = 0; i < config_.num_layers; ++i) {
    const std::string b = "encoder.block." + std::to_string(i) + ".layer.";
    if (i == 0 || config_.bias_per_layer()) bias = position_bias(i, L) + mask_bias;
    at::Tensor n = layers::rms_norm(h, w(b + "0.layer_norm.weight"), eps);
    const auto heads = [&](const char* p) {
      return at::linear(n, w(b + "0.SelfAttention." + p + ".weight")).view({B, L, H, Dk}).transpose(1, 2);
    };
    const at::Tensor q = heads("q"), k = heads("k"), v = heads("v");
    at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) + bias;  // no 1/sqrt(d) in T5
    const at::Tensor attn = at::softmax(scores.to(layers::compute_type(dtype)), -1).to(dtype);
    const at::Tensor o = at::matmul(attn, v).transpose(1, 2).reshape({B, L, H * Dk});
    h = h + at::linear(o, w(b + "0.SelfAttention.o.weight"));
    clamp_half(h);
    n = layers::rms_norm(h, w(b + "1.layer_norm.weight"), eps);
    at::Tensor f;
    if (config_.gated) {
      at::Tensor g = at::linear(n, w(b + "1.DenseReluDense.wi_0.weight"));
      g = config_.activation == "relu" ? at::relu(g) : at::gelu(g, "tanh");
      f = g * at::linear(n, w(b + "1.DenseReluDense.wi_1.weight"));
    } else {
      at::Tensor a = at::linear(n, w(b + "1.DenseReluDense.wi.weight"));
      f = config_.activation == "relu" ? at::relu(a) : at::gelu(a, "tanh");
    }
    h = h + at::linear(f, w(b + "1.DenseReluDense.wo.weight"));
    clamp_half(h);
  }
  return layers::rms_norm(h, w("encoder.final_layer_norm.weight"), eps);
}

PromptEmbedding embed_prompt(const T5Encoder& encoder, const SentencePieceTokenizer& tokenizer, const std::string& prompt,
                             int max_length) {
  const bool wan = encoder.config().model_type == "umt5";
  PromptEmbedding e;
  // Wan's pipelines clean the prompt (html.unescape twice, whitespace); Open-Sora 1.2's inference
  // appends " aesthetic score: 6.5." (its sample config's aes) and runs clean_caption twice.
  e.cleaned = wan ? wan_prompt_clean(prompt) : opensora_prompt(prompt, 6.5);
  const TokenIds t = tokenizer.encode(e.cleaned, max_length);
  e.tokens = t.valid();
  const at::Tensor ids = at::tensor(t.ids, at::kLong).unsqueeze(0);
  e.mask = at::tensor(t.mask, at::kLong);
  e.y = encoder.encode(ids, e.mask.unsqueeze(0))[0].to(at::kCPU, at::kFloat).contiguous();
  if (!at::isfinite(e.y).all().item<bool>()) fail("the text encoder's output has NaN or infinite values");
  if (wan) e.y.narrow(0, e.tokens, max_length - e.tokens).zero_();
  return e;
}

namespace {

class T5TextEncoder : public TextEncoder {
 public:
  T5TextEncoder(const std::string& encoder_dir, const std::string& tokenizer_dir, int tokens, const at::TensorOptions& options)
      : encoder_(T5Encoder::from_pretrained(encoder_dir, options)),
        tokenizer_(SentencePieceTokenizer::load(tokenizer_dir)),
        tokens_(tokens) {}
  std::string name() const override { return encoder_.config().model_type; }
  int tokens() const override { return tokens_; }
  int channels() const override { return encoder_.config().d_model; }
  void check(const std::string&) const override {}  // any text tokenizes (unknown pieces become <unk>)
  // Each distinct prompt is encoded once per process (a render's jobs share prompts, and every guided
  // job the empty negative prompt); the most recent 256 are kept.
  Caption encode(const std::string& prompt) const override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (auto it = cache_.find(prompt); it != cache_.end()) return {it->second.y.clone(), it->second.mask.clone()};
    }
    const PromptEmbedding e = embed_prompt(encoder_, tokenizer_, prompt, tokens_);
    Caption c{e.y.reshape({1, 1, tokens_, e.y.size(1)}), e.mask.unsqueeze(0)};
    std::lock_guard<std::mutex> lock(mu_);
    if (cache_.size() >= 256) cache_.clear();
    cache_.emplace(prompt, Caption{c.y.clone(), c.mask.clone()});  // callers own what they get
    return c;
  }

 private:
  mutable std::mutex mu_;
  mutable std::map<std::string, Caption> cache_;
  T5Encoder encoder_;
  SentencePieceTokenizer tokenizer_;
  int tokens_;
};

bool pipeline_with_t5(const std::string& dir) {
  return path_exists(dir + "/model_index.json") && path_exists(dir + "/text_encoder/config.json") &&
         path_exists(dir + "/tokenizer/spiece.model");
}

}  // namespace

T5Dirs t5_dirs(const std::string& dir) {
  if (path_exists(dir + "/model_index.json")) {
    if (!is_directory(dir + "/text_encoder") || !is_directory(dir + "/tokenizer"))
      fail("'", dir, "' is a pipeline without text_encoder/ and tokenizer/");
    return {dir + "/text_encoder", dir + "/tokenizer"};
  }
  if (!path_exists(dir + "/config.json")) fail("'", dir, "' is not a text encoder directory: it has no config.json");
  if (path_exists(dir + "/spiece.model")) return {dir, dir};
  if (path_exists(dir + "/tokenizer/spiece.model")) return {dir, dir + "/tokenizer"};
  fail("'", dir, "' has no tokenizer: spiece.model (SentencePiece) beside config.json or in tokenizer/");
}

namespace {
std::mutex g_text_mu;  // NOLINT: guards the two below
at::Device g_text_device(at::kCPU);
std::map<std::tuple<std::string, int, std::string>, std::shared_ptr<const TextEncoder>> g_text_loaded;
}  // namespace

void set_text_encoder_device(const at::Device& device) {
  std::lock_guard<std::mutex> lock(g_text_mu);
  g_text_device = device;
}

bool release_t5_text_encoders(const at::Device& device) {
  std::lock_guard<std::mutex> lock(g_text_mu);
  bool any = false;
  for (auto it = g_text_loaded.begin(); it != g_text_loaded.end();) {
    if (std::get<2>(it->first) == device.str()) it = g_text_loaded.erase(it), any = true;
    else ++it;
  }
  return any;
}

std::shared_ptr<const TextEncoder> load_t5_text_encoder(const std::string& dir, int tokens) {
  std::lock_guard<std::mutex> lock(g_text_mu);
  auto& slot = g_text_loaded[{dir, tokens, g_text_device.str()}];
  if (!slot) {
    const T5Dirs d = t5_dirs(dir);
    const T5Config c = parse_t5_config(read_json_file(d.encoder + "/config.json", "text encoder config"), d.encoder + "/config.json");
    const bool bf16 = g_text_device.is_cuda() && c.model_type == "umt5";
    slot = std::make_shared<T5TextEncoder>(d.encoder, d.tokenizer, tokens,
                                           at::TensorOptions().device(g_text_device).dtype(bf16 ? at::kBFloat16 : at::kFloat));
  }
  return slot;
}

void register_t5_text_encoder() {
  static const bool once = [] {
    TextEncoderKind kind;
    kind.name = "t5";
    kind.present = pipeline_with_t5;
    kind.load = [](const std::string& dir) -> std::shared_ptr<const TextEncoder> {
      // The transformer's text length (Wan: text_len, 512 unless its config says otherwise).
      return load_t5_text_encoder(dir, read_outline(dir).shape.caption_tokens);
    };
    register_text_encoder(std::move(kind));
    return true;
  }();
  (void)once;
}

}  // namespace ditto
