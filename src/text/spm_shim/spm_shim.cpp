// The kosmosg_spm module: SentencePiece behind the C interface of spm_shim.h. Built as a
// separate MODULE target so that libsentencepiece (and the protobuf-lite it embeds) is loaded
// with RTLD_DEEPBIND, away from LibTorch's libprotobuf.
#include "text/spm_shim/spm_shim.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

namespace {

void copy_error(const std::string& message, char* error, size_t error_size) {
  if (error == nullptr || error_size == 0) return;
  const size_t n = std::min(message.size(), error_size - 1);
  std::memcpy(error, message.data(), n);
  error[n] = '\0';
}

}  // namespace

#define KOSMOSG_SPM_EXPORT extern "C" __attribute__((visibility("default")))

KOSMOSG_SPM_EXPORT void* kosmosg_spm_load(const char* path, char* error, size_t error_size) {
  try {
    auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
    const auto status = processor->Load(path);
    if (!status.ok()) {
      copy_error(status.ToString(), error, error_size);
      return nullptr;
    }
    return processor.release();
  } catch (const std::exception& e) {
    copy_error(e.what(), error, error_size);
    return nullptr;
  }
}

KOSMOSG_SPM_EXPORT int kosmosg_spm_encode(const void* model, const char* text, size_t size,
                                          kosmosg_spm_piece_fn emit, void* context, char* error,
                                          size_t error_size) {
  try {
    const auto* processor = static_cast<const sentencepiece::SentencePieceProcessor*>(model);
    std::vector<std::string> pieces;
    const auto status = processor->Encode(absl::string_view(text, size), &pieces);
    if (!status.ok()) {
      copy_error(status.ToString(), error, error_size);
      return -1;
    }
    for (const auto& piece : pieces) emit(context, piece.data(), piece.size(), processor->PieceToId(piece));
    return 0;
  } catch (const std::exception& e) {
    copy_error(e.what(), error, error_size);
    return -1;
  }
}

KOSMOSG_SPM_EXPORT int kosmosg_spm_piece_count(const void* model) {
  return static_cast<const sentencepiece::SentencePieceProcessor*>(model)->GetPieceSize();
}

KOSMOSG_SPM_EXPORT void kosmosg_spm_free(void* model) {
  delete static_cast<sentencepiece::SentencePieceProcessor*>(model);
}
