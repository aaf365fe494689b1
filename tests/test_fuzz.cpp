// Fuzzing every parser of untrusted input (label `fault`): seeded mutations of valid inputs (byte
// flips, cut and repeated ranges, JSON tokens, bytes that are not UTF-8, nesting hundreds deep,
// numbers past every range) fed to the safetensors reader, config.json, job lines, cache options,
// codebooks, schedules, change curves and MagCache ratios. The promise: every input is read or
// refused with an exception; no signal, no hang (ctest's timeout), and each parser accepts some and
// refuses some (the mutations reach past the first check).
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <random>

#include "cache/adacache.h"
#include "cache/block_schedule.h"
#include "cache/output_policies.h"
#include "cache/policy.h"
#include "model/atomic_file.h"
#include "model/config.h"
#include "model/family.h"
#include "model/safetensors.h"
#include "model/opensora_vae.h"
#include "model/text_clean.h"
#include "model/wan.h"
#include "model/wan_vae.h"
#include "pipeline/job_file.h"
#include "test_util.h"

using namespace ditto;
using ditto::test::temp_dir;
using ditto::test::write_bytes;

namespace {

const std::vector<std::string> kTokens = {
    "{", "}", "[", "]", "\"", ",", ":", "0", "-1", "1e999", "-1e999", "4294967360", "18446744073709551616", "64.7",
    "nan", "null", "true", "\"\"", "\xff", "\xc3\x28", "\xed\xa0\x80", "\\u0000", "\\ud800", "@/etc/passwd", "=", "/",
    "../", "\n", std::string(1, '\0'), std::string(300, '['), std::string(70, '{') + "\"a\":", "1e12", "-0", "0x10"};

// 1 to 4 mutations of `seed_text`.
std::string mutate(const std::string& seed_text, std::mt19937_64& rng) {
  std::string s = seed_text;
  auto pick = [&](size_t n) { return n == 0 ? size_t{0} : static_cast<size_t>(rng() % n); };
  const int ops = 1 + static_cast<int>(rng() % 4);
  for (int k = 0; k < ops; ++k) {
    switch (rng() % 6) {
      case 0:  // flip a byte
        if (!s.empty()) s[pick(s.size())] ^= static_cast<char>(1 + rng() % 255);
        break;
      case 1: {  // cut a range
        const size_t at = pick(s.size() + 1), n = pick(16);
        s.erase(at, n);
        break;
      }
      case 2:  // insert a token
        s.insert(pick(s.size() + 1), kTokens[pick(kTokens.size())]);
        break;
      case 3: {  // replace a range with a token
        const size_t at = pick(s.size() + 1);
        s.replace(at, std::min(s.size() - at, pick(8)), kTokens[pick(kTokens.size())]);
        break;
      }
      case 4: {  // repeat a range
        const size_t at = pick(s.size() + 1), n = std::min(s.size() - at, pick(24));
        s.insert(at, s.substr(at, n));
        break;
      }
      default:  // truncate
        s.resize(pick(s.size() + 1));
    }
  }
  return s;
}

struct Tally {
  int accepted = 0, refused = 0;
};

// Runs `parse` on `cases` mutations of each seed; counts what was read and what was refused. Anything
// but a std::exception fails the test; a crash kills it.
Tally fuzz(const char* what, const std::vector<std::string>& seeds, int cases, uint64_t seed,
           const std::function<void(const std::string&)>& parse) {
  std::mt19937_64 rng(seed);
  Tally t;
  for (const auto& s : seeds) {  // the seeds themselves must be read
    EXPECT_NO_THROW(parse(s)) << what << " refuses its own seed input";
  }
  for (int i = 0; i < cases; ++i) {
    const std::string input = mutate(seeds[i % seeds.size()], rng);
    try {
      parse(input);
      ++t.accepted;
    } catch (const std::exception&) {
      ++t.refused;
    }
  }
  EXPECT_GT(t.accepted, 0) << what;
  EXPECT_GT(t.refused, cases / 10) << what;
  return t;
}

}  // namespace

TEST(Fuzz, SafetensorsFiles) {
  const std::string d = temp_dir(), valid = d + "/valid.safetensors", path = d + "/case.safetensors";
  save_safetensors(valid, {{"y", at::arange(12, at::kFloat).reshape({3, 4})}, {"mask", at::ones({3}, at::kLong)}},
                   {{"format", "pt"}, {"note", "seed"}});
  const std::string bytes = ditto::test::read_bytes(valid);
  fuzz("safetensors", {bytes}, 4000, 1, [&](const std::string& input) {
    write_bytes(path, input);
    SafetensorsFile f(path);
    for (const auto& e : f.entries()) (void)f.tensor(e.name, at::TensorOptions().dtype(at::kFloat)).sum();
  });
}

TEST(Fuzz, ModelConfigs) {
  const std::string stdit = dump_json(config_json(builtin_config("stdit3-tiny")));
  const std::string wan = dump_json(wan_config_json(wan_builtin_config("wan-tiny")));
  fuzz("STDiT3 config", {stdit}, 4000, 2, [](const std::string& input) {
    (void)parse_config(parse_json<nlohmann::json>(input), "config.json");
  });
  fuzz("Wan config", {wan}, 4000, 3, [](const std::string& input) {
    (void)parse_wan_config(parse_json<nlohmann::json>(input), "config.json");
  });
  // The VAEs' configs as their directories hold them (the test fixtures').
  const std::string fixtures = std::string(DITTO_SOURCE_DIR) + "/tests/fixtures/";
  fuzz("Wan-VAE config", {ditto::test::read_bytes(fixtures + "wan_vae_tiny/config.json")}, 3000, 11,
       [](const std::string& input) {
         const WanVaeConfig c = parse_wan_vae_config(parse_json<nlohmann::json>(input), "config.json");
         (void)wan_vae_decoder_specs(c);
       });
  fuzz("Open-Sora VAE config", {ditto::test::read_bytes(fixtures + "opensora_vae_tiny/config.json")}, 3000, 12,
       [](const std::string& input) {
         const OpenSoraVaeConfig c = parse_opensora_vae_config(parse_json<nlohmann::json>(input), "config.json");
         (void)opensora_vae_decoder_specs(c);
       });
}

// Prompts through Open-Sora's caption cleaning and Wan's: any bytes (under the 4096-byte bound) are cleaned, never a crash.
TEST(Fuzz, PromptCleaning) {
  const std::vector<std::string> seeds = {
      "A cat walks on the grass, realistic style.", "<b>Bold</b> https://x.com/a?b=1 @nick #123 \"quoted\" 192.168.0.1",
      "東京 em—dash ‘q’ image_001.jpg 1920x1080 jc6640 ΟΔΥΣΣΕΥΣ %20+plus &amp;amp;"};
  std::mt19937_64 rng(13);
  for (int i = 0; i < 1500; ++i) {
    const std::string input = mutate(seeds[i % seeds.size()], rng);
    EXPECT_NO_THROW((void)opensora_prompt(input)) << input;  // every mutation is under 4096 bytes
  }
  for (int i = 0; i < 1500; ++i) (void)wan_prompt_clean(mutate(seeds[i % seeds.size()], rng));
}

TEST(Fuzz, JobLines) {
  JobDefaults d;
  const std::vector<std::string> seeds = {
      R"({"prompt": "a red circle", "frames": 16, "size": "32x32", "seed": 3, "output": "a"})",
      R"({"random_caption": 4, "steps": 2, "cfg_scale": 4.5, "cache": "adacache", "cache_opts": {"preset": "slow", "moreg": 1}})",
      R"({"random_caption": 4, "sampler": "unipc", "flow_shift": 3.0, "cache_opts": ["threshold=0.1"], "negative_prompt": "x"})"};
  fuzz("job line", seeds, 8000, 4, [&](const std::string& input) { (void)parse_job_line(input, 1, d); });
}

TEST(Fuzz, CacheOptionsAndCodebooks) {
  const ModelOutline outline = builtin_outline("stdit3-tiny");
  const PolicyContext ctx = policy_context(outline, 30);
  const std::vector<std::string> seeds = {"adacache preset=slow moreg=1", "adacache codebook=0.08:6/0.16:5/1.00:1",
                                          "teacache threshold=0.1 coefficients=1/2/3", "static interval=3", "pab spatial=2 temporal=4",
                                          "fbcache threshold=0.2", "easycache threshold=0.05 warmup=3",
                                          "magcache ratios=wan2.1-t2v-1.3b threshold=0.1 K=2"};
  fuzz("cache options", seeds, 6000, 5, [&](const std::string& input) {
    std::vector<std::string> words;
    std::string w;
    for (char c : input + " ") {
      if (c == ' ') {
        if (!w.empty()) words.push_back(w);
        w.clear();
      } else {
        w += c;
      }
    }
    if (words.empty()) throw std::invalid_argument("empty");
    const std::string name = words[0];
    words.erase(words.begin());
    for (const auto& item : words)  // a file option would read a file: the fuzz stays in memory
      if (!policy_option_file(item.substr(0, item.find('=')), item.substr(item.find('=') + 1)).empty() &&
          item.find('=') != std::string::npos)
        throw std::invalid_argument("a file option");
    (void)make_cache_policy(name, parse_policy_options(words), ctx);
  });
  fuzz("codebook", {"0.08:6/0.16:5/1.00:1", "0.1:2/1.0:1"}, 4000, 6, [](const std::string& input) { (void)Codebook::parse(input); });
}

TEST(Fuzz, SchedulesCurvesAndRatios) {
  ChangeCurves c;
  c.depth = 1;
  c.steps = 3;
  c.runs = 1;
  c.units_per_layer = 2;
  c.units = {"s0", "t0"};
  c.timesteps = {900, 500, 100};
  c.l1rel = {{0.5, 0.1, 0.2}, {0.4, 0.3, 0.01}};
  const std::string curves = dump_json(c.to_json());
  const std::string schedule = dump_json(derive_schedule(c, 0.2).to_json());
  MagnitudeRatios r;
  r.cond = {1.0, 0.99, 0.98};
  r.uncond = {1.0, 0.99, 0.97};
  const std::string ratios = dump_json(r.to_json());
  fuzz("change curves", {curves}, 4000, 7, [](const std::string& input) { (void)ChangeCurves::from_json(parse_json<nlohmann::json>(input)); });
  fuzz("block-cache schedule", {schedule}, 4000, 8,
       [](const std::string& input) { (void)BlockSchedule::from_json(parse_json<nlohmann::json>(input)); });
  fuzz("MagCache ratios", {ratios}, 4000, 9,
       [](const std::string& input) { (void)MagnitudeRatios::from_json(parse_json<nlohmann::json>(input), "ratios.json"); });
}
