#pragma once
// The Kosmos-G tokenizer: SentencePiece BPE splits text into pieces, a fairseq dictionary maps
// pieces to ids (reference §4.1). Ids are dictionary ids, not SentencePiece ids.
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace kosmosg::text {

class SpmModel;

class KosmosGTokenizer {
 public:
  // fairseq's built-in symbols, always the first four dictionary entries.
  static constexpr int64_t kBos = 0;
  static constexpr int64_t kPad = 1;
  static constexpr int64_t kEos = 2;
  static constexpr int64_t kUnk = 3;

  // A SentencePiece piece of some text with its SentencePiece id and dictionary id.
  struct Piece {
    std::string text;
    int64_t spm_id = 0;
    int64_t id = kUnk;
  };

  // Loads `sentencepiece.bpe.model` and fairseq `dict.txt` (lines "<piece> <count>"); the
  // errors name the file and what is wrong with it.
  static KosmosGTokenizer from_files(const std::string& spm_model, const std::string& dict_txt);

  // Dictionary ids of `text`'s pieces; a piece missing from the dictionary gives <unk>.
  // No bos/eos. Markup such as "<image>" is ordinary text here.
  std::vector<int64_t> encode(const std::string& text) const;
  // The pieces of `text` with both ids (what encode maps).
  std::vector<Piece> split(const std::string& text) const;

  // Dictionary id of `symbol`, <unk> when absent.
  int64_t index(const std::string& symbol) const;
  // Symbol of dictionary id `id`; an Error when out of range.
  const std::string& symbol(int64_t id) const;
  // Number of dictionary entries, specials included (64007 for the real model).
  int64_t vocab_size() const { return static_cast<int64_t>(symbols_.size()); }

  int64_t bos() const { return kBos; }
  int64_t pad() const { return kPad; }
  int64_t eos() const { return kEos; }
  int64_t unk() const { return kUnk; }
  // Symbols the Kosmos-G task appends after dict.txt, in this order.
  int64_t mask() const { return mask_; }
  int64_t doc_end() const { return doc_end_; }      // </doc>
  int64_t boi() const { return boi_; }              // <image>: begin of image
  int64_t eoi() const { return eoi_; }              // </image>: end of image
  int64_t chunk_end() const { return chunk_end_; }  // </chunk>
  int64_t line_end() const { return line_end_; }    // </line>

 private:
  KosmosGTokenizer() = default;
  // fairseq Dictionary.add_symbol: an existing symbol keeps its id unless `overwrite`.
  int64_t add_symbol(const std::string& symbol, bool overwrite = false);

  std::shared_ptr<const SpmModel> spm_;
  std::vector<std::string> symbols_;
  std::unordered_map<std::string, int64_t> indices_;
  int64_t mask_ = 0, doc_end_ = 0, boi_ = 0, eoi_ = 0, chunk_end_ = 0, line_end_ = 0;
};

}  // namespace kosmosg::text
