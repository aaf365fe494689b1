// SentencePiece tokenization (see tokenizer.h).
#include "model/tokenizer.h"

#include <sentencepiece_processor.h>

#include "model/atomic_file.h"
#include "model/error.h"

namespace ditto {

int TokenIds::valid() const {
  int n = 0;
  for (int64_t m : mask) n += m != 0;
  return n;
}

SentencePieceTokenizer::SentencePieceTokenizer(SentencePieceTokenizer&&) noexcept = default;
SentencePieceTokenizer::~SentencePieceTokenizer() = default;

SentencePieceTokenizer SentencePieceTokenizer::load(const std::string& path) {
  const std::string file = is_directory(path) ? path + "/spiece.model" : path;
  // Read by ditto (a regular file, bounded in size), parsed from memory by SentencePiece.
  const std::string bytes = read_text_file(file, size_t{256} << 20);
  SentencePieceTokenizer t;
  t.path_ = file;
  t.sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = t.sp_->LoadFromSerializedProto(bytes);
  if (!status.ok()) fail("'", file, "' is not a SentencePiece model (", status.ToString(), ")");
  t.eos_ = t.sp_->eos_id();
  t.pad_ = t.sp_->pad_id();
  if (t.eos_ < 0) fail("'", file, "': the SentencePiece model has no end-of-sequence piece (T5's </s>)");
  if (t.pad_ < 0) t.pad_ = 0;  // T5's padding id when the model names none
  return t;
}

int SentencePieceTokenizer::vocab_size() const { return sp_->GetPieceSize(); }

TokenIds SentencePieceTokenizer::encode(const std::string& text, int max_length) const {
  if (max_length < 1) fail("tokenizer: the text length must be at least 1 (room for EOS), got ", max_length);
  std::vector<int> pieces;
  const auto status = sp_->Encode(text, &pieces);
  if (!status.ok()) fail("tokenizer '", path_, "': cannot encode the prompt (", status.ToString(), ")");
  // Truncation keeps the first max_length - 1 pieces, then EOS (transformers' order).
  if (static_cast<int>(pieces.size()) > max_length - 1) pieces.resize(max_length - 1);
  TokenIds t;
  t.ids.assign(pieces.begin(), pieces.end());
  t.ids.push_back(eos_);
  t.mask.assign(t.ids.size(), 1);
  t.ids.resize(max_length, pad_);
  t.mask.resize(max_length, 0);
  return t;
}

}  // namespace ditto
