#pragma once
// The CLIP byte-level BPE tokenizer as Stable Diffusion 1.5 and Kosmos-G call it (Hugging Face
// CLIPTokenizer with ftfy): text cleaning, the CLIP split pattern, BPE over vocab.json/merges.txt.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kosmosg::text {

class CLIPTokenizer {
 public:
  // Loads a vocab.json (token -> id) and merges.txt ("#version" header, then "left right" per
  // line in rank order); throws kosmosg::Error naming the file when one is missing or malformed.
  static CLIPTokenizer from_files(const std::string& vocab_json, const std::string& merges_txt);
  // Loads a diffusers/transformers tokenizer folder (vocab.json and merges.txt inside).
  static CLIPTokenizer from_folder(const std::string& dir);

  // `max_length` ids: bos, at most max_length - 2 text tokens (the tail is cut), eos, then eos
  // padding — tokenizer(text, padding="max_length", max_length=77, truncation=True).
  std::vector<int64_t> encode(const std::string& text, size_t max_length = 77) const;
  // The untruncated BPE token strings of UTF-8 `text` (without bos/eos), e.g. "cat</w>".
  std::vector<std::string> bpe_tokens(const std::string& text) const;
  // Id of a token string; tokens outside the vocabulary map to eos (CLIP's unk token).
  int64_t token_id(const std::string& token) const;

  int64_t bos_id() const;
  int64_t eos_id() const;
  size_t vocab_size() const;
  // Words whose BPE is cached now, the two special tokens included; bounded (a full cache starts
  // over), so that tokenising any number of distinct words keeps memory bounded.
  size_t cached_words() const;

 private:
  CLIPTokenizer() = default;
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace kosmosg::text
