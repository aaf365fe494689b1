// `ditto encode`: a prompt through a T5 / umT5 text encoder into the caption-embedding file that
// `--caption-embedding` (and a job's caption_embedding) reads: encode once, render many.
#include <iostream>

#include "launcher/commands.h"
#include "model/atomic_file.h"
#include "model/error.h"
#include "model/safetensors.h"
#include "model/t5.h"
#include "model/tokenizer.h"
#include "pipeline/model_options.h"

namespace ditto {


int run_encode(const std::vector<std::string>& args, const MpiEnv& mpi) {
  ModelOptions mo;
  std::string encoder_dir, prompt, out;
  int max_length = 0;
  po::options_description desc("options");
  // clang-format off
  desc.add_options()
    ("text-encoder", po::value(&encoder_dir)->required(), "the text encoder: a transformers T5 / umT5 directory (config.json, safetensors, spiece.model) or a diffusers pipeline (text_encoder/ + tokenizer/)")
    ("prompt", po::value(&prompt)->required(), "the prompt (umT5: cleaned as Wan cleans it; T5: tokenized as given)")
    ("out", po::value(&out)->required(), "the caption-embedding file to write: y [L, C] float32 and mask [L]")
    ("max-sequence-length", po::value(&max_length)->default_value(0), "text length in tokens (0: the family's: 512 for umT5 as Wan, 300 for T5 as Open-Sora 1.2)")
    ("dtype", po::value(&mo.dtype), "float32 | bfloat16 | float16 | float64 (default: float32 on CPU, bfloat16 on CUDA)")
    ("device", po::value(&mo.device), "cpu | cuda | cuda:N")
    ("threads", po::value(&mo.threads)->default_value(0), "CPU threads (0: LibTorch's default)");
  // clang-format on
  po::variables_map vm;
  if (!parse_command_line("encode", "encode a prompt into a caption-embedding file", desc, args, vm)) return 0;
  if (mpi.size() > 1) fail("ditto encode runs on one rank; launch it without mpirun -np N");
  if (max_length < 0 || max_length > 65536) fail("--max-sequence-length must be in 1 .. 65536 (0: the family's), got ", max_length);
  const at::TensorOptions options = resolve_tensor_options(mo, mpi);
  const T5Dirs dirs = t5_dirs(encoder_dir);
  const std::string& enc_dir = dirs.encoder;
  const std::string& tok_dir = dirs.tokenizer;
  const T5Encoder encoder = T5Encoder::from_pretrained(enc_dir, options);
  const SentencePieceTokenizer tokenizer = SentencePieceTokenizer::load(tok_dir);
  const bool wan = encoder.config().model_type == "umt5";
  const int L = max_length > 0 ? max_length : wan ? 512 : 300;
  const PromptEmbedding e = embed_prompt(encoder, tokenizer, prompt, L);
  save_safetensors(out, {{"y", e.y}, {"mask", e.mask}},
                   {{"text_encoder", enc_dir}, {"model_type", encoder.config().model_type}, {"prompt", prompt},
                    {"cleaned_prompt", e.cleaned}, {"tokens", std::to_string(e.tokens)}, {"max_length", std::to_string(L)}});
  std::cerr << "ditto encode: " << e.tokens << " tokens of " << L << " -> " << out << " (y [" << L << ", " << e.y.size(1)
            << "])\n";
  return 0;
}

}  // namespace ditto
