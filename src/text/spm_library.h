#pragma once
// Finding and opening the kosmosg_spm module (SentencePiece behind a C interface, see
// spm_shim/spm_shim.h). Internal to the library; the tokenizer is the public face.
#include <memory>
#include <string>
#include <vector>

namespace kosmosg::text {

// Path of the kosmosg_spm module: $KOSMOSG_SPM_LIBRARY when set (it must exist), else the first
// existing of: the running executable's folder, its ../lib, the build tree's copy. Throws an
// Error listing the places tried when none exists.
std::string locate_spm_library();

// A loaded SentencePiece model.
class SpmModel {
 public:
  // One piece of an encoded text: UTF-8 bytes and SentencePiece id.
  struct Piece {
    std::string text;
    int id = 0;
  };

  // Loads `path`, opening the module on first use; errors name the file.
  static std::shared_ptr<SpmModel> load(const std::string& path);
  ~SpmModel();
  SpmModel(const SpmModel&) = delete;
  SpmModel& operator=(const SpmModel&) = delete;

  // The pieces of `text` (plain encode, no bos/eos).
  std::vector<Piece> encode(const std::string& text) const;
  // Number of pieces in the model's vocabulary.
  int piece_count() const;

 private:
  SpmModel(void* handle, std::string path) : handle_(handle), path_(std::move(path)) {}
  void* handle_;
  std::string path_;
};

}  // namespace kosmosg::text
