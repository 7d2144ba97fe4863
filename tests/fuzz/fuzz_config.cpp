// libFuzzer harness: JSON text through io::parse_json, then through every model config's
// from_json, as config.json files and the converter's sizes are read.
#include "fuzz_support.h"
#include "kosmosg/error.h"
#include "kosmosg/io/config.h"
#include "kosmosg/models/aligner.h"
#include "kosmosg/models/clip.h"
#include "kosmosg/models/connector.h"
#include "kosmosg/models/controlnet.h"
#include "kosmosg/models/dino.h"
#include "kosmosg/models/kosmosg.h"
#include "kosmosg/models/mllm.h"
#include "kosmosg/models/unet.h"
#include "kosmosg/models/vae.h"
#include "kosmosg/models/vit.h"

namespace io = kosmosg::io;
namespace models = kosmosg::models;

namespace {

// Each reader sees the value on its own, so that one refusal does not hide the others.
template <typename Read>
void attempt(Read&& read) {
  try {
    read();
  } catch (const kosmosg::Error&) {
    // A clear refusal is the documented outcome for a bad config.
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  io::Json json;
  try {
    json = io::parse_json(std::string(reinterpret_cast<const char*>(data), size), "fuzz input");
  } catch (const kosmosg::Error&) {
    return 0;
  }
  (void)io::brief(json);
  attempt([&] { models::UNet2DConditionConfig::from_json(json); });
  attempt([&] { models::AutoencoderKLConfig::from_json(json); });
  attempt([&] { models::ControlNetConfig::from_json(json); });
  attempt([&] { models::CLIPTextConfig::from_json(json); });
  attempt([&] { models::CLIPVisionConfig::from_json(json); });
  attempt([&] { models::CLIPConfig::from_json(json); });
  attempt([&] { models::DinoViTConfig::from_json(json); });
  attempt([&] { models::KosmosGConfig::from_json(json); });
  attempt([&] { models::MLLMConfig::from_json(json); });
  attempt([&] { models::ViTConfig::from_json(json); });
  attempt([&] { models::XConnectorConfig::from_json(json); });
  attempt([&] { models::AlignerConfig::from_json(json); });
  return 0;
}
