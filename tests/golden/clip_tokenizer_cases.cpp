// tokens.json: strings encoded as SD1.5 / Kosmos-G do (77 ids, ftfy cleaning), checked exactly
// with the tokenizer files of the same folder.
#include <filesystem>

#include "harness.h"
#include "kosmosg/text/clip_tokenizer.h"

namespace {

using namespace kosmosg::golden;

void run_tokens(const std::string& path, const nlohmann::json& golden, Report& report) {
  const auto dir = std::filesystem::path(path).parent_path() / "tokenizer";
  const auto tok = kosmosg::text::CLIPTokenizer::from_folder(dir.string());
  const size_t max_length = golden.value("max_length", 77);
  if (tok.bos_id() != golden.at("bos_token_id").get<int64_t>() ||
      tok.eos_id() != golden.at("eos_token_id").get<int64_t>()) {
    report.fail("special_ids", "bos/eos " + std::to_string(tok.bos_id()) + "/" + std::to_string(tok.eos_id()) +
                                   " differ from the golden's");
  }
  size_t failures = 0, total = 0;
  std::string first;
  for (const auto& c : golden.at("cases")) {
    ++total;
    const std::string text = c.at("text").get<std::string>();
    const auto ids = tok.encode(text, max_length);
    if (ids != c.at("input_ids").get<std::vector<int64_t>>()) {
      if (failures < 3) first += (first.empty() ? "" : ", ") + nlohmann::json(text).dump();
      ++failures;
    }
  }
  report.count("input_ids", failures, total);
  if (failures) report.fail("input_ids", "first mismatches: " + first);
}

KOSMOSG_GOLDEN_JSON("tokens.json", run_tokens);

}  // namespace
