#pragma once
// The one exception type of kosmosg: messages start with the operation in brackets and say what
// was found against what was expected, e.g. "[safetensors] model.st: header is 900 bytes but ...".
#include <stdexcept>
#include <string>

namespace kosmosg {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws Error("[where] what").
[[noreturn]] void fail(const std::string& where, const std::string& what);

}  // namespace kosmosg
