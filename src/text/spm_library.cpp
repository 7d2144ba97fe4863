#include "text/spm_library.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>

#include "kosmosg/error.h"
#include "text/spm_shim/spm_shim.h"

namespace kosmosg::text {
namespace {

namespace fs = std::filesystem;

// AddressSanitizer's runtime aborts on RTLD_DEEPBIND (a module so bound would bypass its
// allocator), so a sanitized build opens the module without it. SentencePiece then binds to the
// process's protobuf: such a process must not load LibTorch (the fuzz harnesses that tokenise
// do not link it, see tests/fuzz/CMakeLists.txt).
#if defined(__SANITIZE_ADDRESS__)
constexpr int kDeepBind = 0;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr int kDeepBind = 0;
#else
constexpr int kDeepBind = RTLD_DEEPBIND;
#endif
#else
constexpr int kDeepBind = RTLD_DEEPBIND;
#endif

struct SpmApi {
  kosmosg_spm_load_fn load = nullptr;
  kosmosg_spm_encode_fn encode = nullptr;
  kosmosg_spm_piece_count_fn piece_count = nullptr;
  kosmosg_spm_free_fn free = nullptr;
};

fs::path executable_dir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

template <typename Fn>
Fn symbol(void* library, const char* name, const std::string& path) {
  void* address = dlsym(library, name);
  if (address == nullptr)
    fail("sentencepiece", path + " does not export " + name + ": not a kosmosg_spm module");
  return reinterpret_cast<Fn>(address);
}

// The module stays open for the life of the process: models hold pointers into it.
const SpmApi& api() {
  static std::once_flag once;
  static SpmApi table;
  static std::string error;
  std::call_once(once, [] {
    try {
      const std::string path = locate_spm_library();
      // RTLD_DEEPBIND (kDeepBind): libsentencepiece must bind to its own protobuf-lite, not LibTorch's.
      void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | kDeepBind);
      if (library == nullptr) fail("sentencepiece", "cannot open " + path + ": " + dlerror());
      table.load = symbol<kosmosg_spm_load_fn>(library, KOSMOSG_SPM_LOAD, path);
      table.encode = symbol<kosmosg_spm_encode_fn>(library, KOSMOSG_SPM_ENCODE, path);
      table.piece_count = symbol<kosmosg_spm_piece_count_fn>(library, KOSMOSG_SPM_PIECE_COUNT, path);
      table.free = symbol<kosmosg_spm_free_fn>(library, KOSMOSG_SPM_FREE, path);
    } catch (const Error& e) {
      error = e.what();
    }
  });
  if (!error.empty()) throw Error(error);
  return table;
}

void collect_piece(void* context, const char* piece, size_t size, int id) {
  static_cast<std::vector<SpmModel::Piece>*>(context)->push_back({std::string(piece, size), id});
}

}  // namespace

std::string locate_spm_library() {
  if (const char* env = std::getenv("KOSMOSG_SPM_LIBRARY"); env != nullptr && *env != '\0') {
    if (!fs::is_regular_file(env))
      fail("sentencepiece", std::string("KOSMOSG_SPM_LIBRARY is ") + env + ", which is not a file");
    return env;
  }
  std::vector<fs::path> candidates;
  const fs::path exe_dir = executable_dir();
  if (!exe_dir.empty()) {
    candidates.push_back(exe_dir / KOSMOSG_SPM_FILE_NAME);
    candidates.push_back(exe_dir.parent_path() / "lib" / KOSMOSG_SPM_FILE_NAME);
  }
  candidates.emplace_back(KOSMOSG_SPM_BUILD_PATH);
  std::string tried;
  for (const auto& c : candidates) {
    if (fs::is_regular_file(c)) return c.string();
    tried += (tried.empty() ? "" : ", ") + c.string();
  }
  fail("sentencepiece", std::string("the ") + KOSMOSG_SPM_FILE_NAME +
                            " module (SentencePiece) was not found; looked at " + tried +
                            " (set KOSMOSG_SPM_LIBRARY to its path)");
}

std::shared_ptr<SpmModel> SpmModel::load(const std::string& path) {
  const SpmApi& spm = api();
  char error[1024] = "";
  void* handle = spm.load(path.c_str(), error, sizeof error);
  if (handle == nullptr)
    fail("sentencepiece", path + ": not a readable SentencePiece model (" + error + ")");
  return std::shared_ptr<SpmModel>(new SpmModel(handle, path));
}

SpmModel::~SpmModel() { api().free(handle_); }

std::vector<SpmModel::Piece> SpmModel::encode(const std::string& text) const {
  std::vector<Piece> pieces;
  char error[1024] = "";
  if (api().encode(handle_, text.data(), text.size(), collect_piece, &pieces, error, sizeof error) != 0)
    fail("sentencepiece", path_ + ": cannot encode \"" + text + "\": " + error);
  return pieces;
}

int SpmModel::piece_count() const { return api().piece_count(handle_); }

}  // namespace kosmosg::text
