#pragma once
// The C interface of the kosmosg_spm module, the only code that calls SentencePiece. The main
// library opens the module with dlopen (see src/text/spm_library.h) and reaches it only through
// these functions, so no C++ object or exception crosses the boundary.
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Called once per piece of an encoded text, in order: the piece's UTF-8 bytes and its
// SentencePiece id (the model's unk id for pieces outside the vocabulary).
typedef void (*kosmosg_spm_piece_fn)(void* context, const char* piece, size_t size, int id);

// Loads a SentencePiece model file; null on failure, with the reason copied into `error`.
typedef void* (*kosmosg_spm_load_fn)(const char* path, char* error, size_t error_size);

// Splits `size` bytes of UTF-8 text into pieces (plain encode: no sampling, no bos/eos), calling
// `emit` for each. Returns 0, or -1 with the reason copied into `error`.
typedef int (*kosmosg_spm_encode_fn)(const void* model, const char* text, size_t size,
                                     kosmosg_spm_piece_fn emit, void* context, char* error,
                                     size_t error_size);

// Number of pieces in the model's vocabulary.
typedef int (*kosmosg_spm_piece_count_fn)(const void* model);

// Releases a model returned by load.
typedef void (*kosmosg_spm_free_fn)(void* model);

#ifdef __cplusplus
}
#endif

// Exported symbol names, looked up with dlsym.
#define KOSMOSG_SPM_LOAD "kosmosg_spm_load"
#define KOSMOSG_SPM_ENCODE "kosmosg_spm_encode"
#define KOSMOSG_SPM_PIECE_COUNT "kosmosg_spm_piece_count"
#define KOSMOSG_SPM_FREE "kosmosg_spm_free"
