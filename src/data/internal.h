#pragma once
// Pieces the data sources and the loader share: seed mixing, portable uniform draws, line
// indexes of text files, and the text/image decoding of records.
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kosmosg/data/source.h"

namespace kosmosg::data::detail {

// Uniform double in [0, 1) from the top 53 bits (the same on every standard library).
double uniform(std::mt19937_64& rng);
// Uniform integer in [0, n), unbiased (rejection), n >= 1.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n);

// The non-blank lines of text files with their byte ranges, so that one record can be read back
// without scanning its file again.
class LineIndex {
 public:
  // Indexes every non-blank line of `path`; an Error naming the file when it cannot be read.
  void add_file(const std::string& path);
  int64_t size() const { return static_cast<int64_t>(lines_.size()); }
  // The bytes of line `i` without its newline; thread-safe.
  std::string read(int64_t i) const;
  // "FILE line N" for errors.
  std::string where(int64_t i) const;

 private:
  struct Line {
    uint32_t file;
    uint32_t number;  // 1-based
    uint64_t offset, length;
  };
  std::vector<std::string> files_;
  std::vector<Line> lines_;
};

// Python's base64.b64decode without validation: characters outside the alphabet are ignored,
// a group cut short without '=' padding is an error naming `what`.
std::string base64_decode(const std::string& text, const std::string& what);
// Python's str.strip() for ASCII whitespace (what str.isspace accepts below U+0080).
std::string py_strip(const std::string& s);
// Python's s.split(sep) with a one-character separator.
std::vector<std::string> split(const std::string& s, char sep);

// The MLLM input (io::clip_pixel_values at options.image_size) and the diffusion target
// (io::vae_pixel_values at options.target_size) of encoded image bytes.
at::Tensor mllm_image(const std::string& bytes, const std::string& what, const SampleOptions& options);
at::Tensor target_image(const std::string& bytes, const std::string& what, const SampleOptions& options);

// The tokenizer of `options`, or an Error when none is set or the stage takes no token sequences.
const text::KosmosGTokenizer& tokenizer_of(const SampleOptions& options);

// Throws FilteredOut("[where] what").
[[noreturn]] void filter_out(const std::string& where, const std::string& what);

// Applies the caption length limits of reference §7.1 to a caption with `spm_tokens`
// SentencePiece tokens: > 128 always; in stage Align > 85, or > 75 CLIP BPE tokens when a CLIP
// tokenizer is given. Throws naming `where`.
void check_caption_length(const std::string& caption, size_t spm_tokens, const SampleOptions& options,
                          const std::string& where);

// A source backed by a LineIndex: name, size and error context shared by every record kind.
class LineSource : public Source {
 public:
  const std::string& name() const override { return name_; }
  int64_t size() const override { return lines_.size(); }

 protected:
  std::string name_;
  LineIndex lines_;
};

std::unique_ptr<Source> open_jsonl(const std::string& path);
std::unique_ptr<Source> open_laion(const std::string& dir);
std::unique_ptr<Source> open_instructpix2pix(const std::string& dir);
std::unique_ptr<Source> open_openimages(const std::string& dir);

}  // namespace kosmosg::data::detail
