#include "kosmosg/error.h"

namespace kosmosg {
namespace {

std::string setting_message(const std::string& where, const std::string& setting, std::string what) {
  for (auto at = what.find("{}"); at != std::string::npos; at = what.find("{}", at + setting.size()))
    what.replace(at, 2, setting);
  return "[" + where + "] " + what;
}

}  // namespace

SettingError::SettingError(std::string where, std::string setting, std::string what)
    : Error(setting_message(where, setting, what)),
      where_(std::move(where)),
      setting_(std::move(setting)),
      what_(std::move(what)) {}

SettingError SettingError::renamed(const std::string& name) const { return SettingError(where_, name, what_); }

void fail(const std::string& where, const std::string& what) {
  throw Error("[" + where + "] " + what);
}

void fail_setting(const std::string& where, const std::string& setting, const std::string& what) {
  throw SettingError(where, setting, what);
}

}  // namespace kosmosg
