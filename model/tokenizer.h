// SentencePiece tokenizers as T5 and umT5 use them (spiece.model in a transformers tokenizer directory):
// the text's pieces, then EOS, truncated to leave room for EOS and padded to a fixed length, with the
// attention mask, as transformers' T5Tokenizer gives them with max_length padding and truncation.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace ditto {

struct TokenIds {
  std::vector<int64_t> ids;   // max_length ids: the pieces, EOS, then padding
  std::vector<int64_t> mask;  // 1 for the pieces and EOS, 0 for padding
  int valid() const;          // the number of 1s in mask
};

class SentencePieceTokenizer {
 public:
  // DIR/spiece.model (a transformers tokenizer directory), or a .model file itself; an Error naming
  // the file when it cannot be read or is not a SentencePiece model.
  static SentencePieceTokenizer load(const std::string& path);
  SentencePieceTokenizer(SentencePieceTokenizer&&) noexcept;
  ~SentencePieceTokenizer();

  TokenIds encode(const std::string& text, int max_length) const;
  int vocab_size() const;
  int eos_id() const { return eos_; }
  int pad_id() const { return pad_; }

 private:
  SentencePieceTokenizer() = default;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string path_;
  int eos_ = 1, pad_ = 0;
};

}  // namespace ditto
