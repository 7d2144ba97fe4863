#pragma once
// The JSON files of the project's configs/ folder, compiled into the library so the tools know
// the official sizes (SD1.5 UNet/VAE/scheduler, Kosmos-G) without the source tree.
#include <string>
#include <vector>

#include "kosmosg/io/config.h"

namespace kosmosg::io {

// A config by its path under configs/, e.g. "sd15/unet.json"; an error lists the known names.
Json builtin_config(const std::string& name);

// Every compiled-in config name.
std::vector<std::string> builtin_config_names();

}  // namespace kosmosg::io
