#pragma once
// The one exception type of kosmosg: messages start with the operation in brackets and say what
// was found against what was expected, e.g. "[safetensors] model.st: header is 900 bytes but ...".
#include <stdexcept>
#include <string>

namespace kosmosg {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An error about one setting a caller chose (a step count, a strength). The library calls it by
// its own name ("steps"); a caller that spells it otherwise, as the CLI does ("--steps"), says the
// same error in its own words with `renamed`.
class SettingError : public Error {
 public:
  // `what` says "{}" where the setting's name goes: "{} 0 must be at least 1".
  SettingError(std::string where, std::string setting, std::string what);
  const std::string& setting() const { return setting_; }
  SettingError renamed(const std::string& name) const;

 private:
  std::string where_, setting_, what_;
};

// Throws Error("[where] what").
[[noreturn]] void fail(const std::string& where, const std::string& what);

// Throws SettingError(where, setting, what).
[[noreturn]] void fail_setting(const std::string& where, const std::string& setting, const std::string& what);

}  // namespace kosmosg
