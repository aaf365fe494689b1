// The demo's registrations (see demo.h).
#include "demo/demo.h"

#include <sys/stat.h>

#include <mutex>

#include "demo/adherence.h"
#include "demo/demo_data.h"
#include "demo/word_encoder.h"
#include "model/error.h"
#include "pipeline/video_job.h"

namespace ditto {

void register_demo() {
  static std::once_flag once;
  std::call_once(once, [] {
  TextEncoderKind words;
  words.name = "ditto-words";
  words.present = [](const std::string& dir) {
    struct stat st {};
    return ::stat((dir + "/text_encoder.safetensors").c_str(), &st) == 0 && S_ISREG(st.st_mode);
  };
  words.load = [](const std::string& dir) -> std::shared_ptr<const TextEncoder> {
    return std::make_shared<const WordEncoder>(WordEncoder::load(dir, at::TensorOptions().dtype(at::kFloat)));
  };
  words.prompt_set = [](const std::string& set, int k) {
    const DemoPromptSet s = set == "profile"       ? DemoPromptSet::Profile
                            : set == "calibration" ? DemoPromptSet::Calibration
                            : set == "evaluation"  ? DemoPromptSet::Evaluation
                                                   : (fail("unknown demo prompt set '", set, "'"), DemoPromptSet::Profile);
    return demo_prompt(demo_prompt_set(s, k));
  };
  register_text_encoder(std::move(words));
  // A demo prompt's video: what the adherence checker reads in it (metrics.json "adherence").
  register_output_annotator([](const VideoJob& job, const at::Tensor& video, nlohmann::ordered_json& m) {
    if (job.prompt.empty() || m["run"].value("text_encoder", "") != "ditto-words") return;
    const DemoClipSettings demo;
    try {
      const DemoAttributes a = parse_demo_prompt(job.prompt);
      if (video.size(2) != demo.frames || video.size(3) != demo.size || video.size(4) != demo.size)
        m["adherence"] = "not checked: the checker reads clips of " + std::to_string(demo.frames) + " frames of " +
                         std::to_string(demo.size) + "x" + std::to_string(demo.size);
      else
        m["adherence"] = check_adherence(video[0].to(at::kCPU, at::kFloat), a).json();
    } catch (const Error& e) {
      m["adherence"] = std::string("not checked: not a demo prompt (") + e.what() + ")";
    }
  });
  });
}

}  // namespace ditto
