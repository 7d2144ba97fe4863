#include "kosmosg/error.h"

namespace kosmosg {

void fail(const std::string& where, const std::string& what) {
  throw Error("[" + where + "] " + what);
}

}  // namespace kosmosg
