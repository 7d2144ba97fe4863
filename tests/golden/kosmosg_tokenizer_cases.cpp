// tokenization.json: the real SentencePiece model and dictionary (in tokenizer/ beside the
// file), text → pieces → ids, the inference prompt layout and DreamBench batching. Every key
// of the file is compared; an unknown key fails the case so that nothing goes unchecked.
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <set>

#include "harness.h"
#include "kosmosg/text/kosmosg_tokenizer.h"
#include "kosmosg/text/prompt_layout.h"

namespace {

using kosmosg::golden::Report;
using kosmosg::text::KosmosGTokenizer;
using nlohmann::json;

// The ViT-L/14 input (reference §3.1) that pixel_values_shape reports after the image count.
const std::vector<int64_t> kImageChw{3, 224, 224};

// Per compared quantity: how many items differ out of how many.
struct Tally {
  std::map<std::string, std::pair<size_t, size_t>> counts;
  void add(const std::string& what, bool ok, const std::string& detail) {
    auto& c = counts[what];
    c.second += 1;
    if (ok) return;
    if (c.first < 3) std::fprintf(stderr, "tokenization.json: %s differs: %s\n", what.c_str(), detail.c_str());
    c.first += 1;
  }
};

json tensor_rows(const at::Tensor& t) {
  json rows = json::array();
  auto t64 = t.to(torch::kLong).contiguous();
  for (int64_t b = 0; b < t64.size(0); ++b) {
    auto row = t64[b];
    rows.push_back(std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel()));
  }
  return rows;
}

void check_keys(Tally& tally, const json& object, const std::set<std::string>& known, const std::string& where) {
  for (const auto& [key, value] : object.items())
    tally.add("known keys", known.count(key) > 0, where + " has unchecked key '" + key + "'");
}

json pixel_shape(size_t images) {
  if (images == 0) return nullptr;
  std::vector<int64_t> shape{static_cast<int64_t>(images)};
  shape.insert(shape.end(), kImageChw.begin(), kImageChw.end());
  return shape;
}

void run(const std::string& path, const json& golden, Report& report) {
  const auto dir = std::filesystem::path(path).parent_path() / "tokenizer";
  const auto tokenizer = KosmosGTokenizer::from_files((dir / "sentencepiece.bpe.model").string(),
                                                      (dir / "dict.txt").string());
  Tally tally;
  check_keys(tally, golden,
             {"dictionary_size", "image_token_length", "special_ids", "null_token_id", "texts", "prompts", "batches"},
             "top level");

  tally.add("dictionary_size", golden.at("dictionary_size").get<int64_t>() == tokenizer.vocab_size(),
            std::to_string(tokenizer.vocab_size()) + " vs " + golden.at("dictionary_size").dump());
  const auto image_token_length = golden.at("image_token_length").get<size_t>();
  tally.add("image_token_length", image_token_length == kosmosg::text::kImageTokenLength,
            "kImageTokenLength is " + std::to_string(kosmosg::text::kImageTokenLength));
  tally.add("null_token_id", golden.at("null_token_id").get<int64_t>() == tokenizer.bos(),
            "bos is " + std::to_string(tokenizer.bos()));

  const std::map<std::string, std::function<int64_t()>> accessors{
      {"<s>", [&] { return tokenizer.bos(); }},        {"<pad>", [&] { return tokenizer.pad(); }},
      {"</s>", [&] { return tokenizer.eos(); }},       {"<unk>", [&] { return tokenizer.unk(); }},
      {"<mask>", [&] { return tokenizer.mask(); }},    {"</doc>", [&] { return tokenizer.doc_end(); }},
      {"<image>", [&] { return tokenizer.boi(); }},    {"</image>", [&] { return tokenizer.eoi(); }},
      {"</chunk>", [&] { return tokenizer.chunk_end(); }}, {"</line>", [&] { return tokenizer.line_end(); }}};
  for (const auto& [symbol, id] : golden.at("special_ids").items()) {
    auto it = accessors.find(symbol);
    const int64_t want = id.get<int64_t>();
    const bool ok = it != accessors.end() && it->second() == want && tokenizer.index(symbol) == want &&
                    tokenizer.symbol(want) == symbol;
    tally.add("special_ids", ok, symbol + " expected " + std::to_string(want));
  }

  for (const auto& t : golden.at("texts")) {
    check_keys(tally, t, {"text", "pieces", "ids", "spm_ids"}, "a text");
    const auto text = t.at("text").get<std::string>();
    json pieces = json::array(), spm_ids = json::array();
    for (const auto& p : tokenizer.split(text)) {
      pieces.push_back(p.text);
      spm_ids.push_back(p.spm_id);
    }
    const json ids = tokenizer.encode(text);
    tally.add("texts.pieces", pieces == t.at("pieces"), json(text).dump() + ": " + pieces.dump());
    tally.add("texts.ids", ids == t.at("ids"), json(text).dump() + ": " + ids.dump());
    tally.add("texts.spm_ids", spm_ids == t.at("spm_ids"), json(text).dump() + ": " + spm_ids.dump());
  }

  for (const auto& p : golden.at("prompts")) {
    check_keys(tally, p,
               {"prompt", "negative_prompt", "num_images", "src_tokens", "img_gpt_input_mask", "negative_tokens",
                "pixel_values_shape"},
               "a prompt");
    const auto prompt = p.at("prompt").get<std::string>();
    const auto layout = kosmosg::text::layout_prompt(tokenizer, prompt, image_token_length);
    const auto batch = kosmosg::text::batch_prompts({layout});
    const json negative = json::array({kosmosg::text::negative_tokens(tokenizer, p.at("negative_prompt"))});
    tally.add("prompts.src_tokens", tensor_rows(batch.tokens) == p.at("src_tokens"), prompt);
    tally.add("prompts.img_gpt_input_mask", tensor_rows(batch.image_mask) == p.at("img_gpt_input_mask"), prompt);
    tally.add("prompts.num_images", p.at("num_images").get<size_t>() == layout.num_images, prompt);
    tally.add("prompts.negative_tokens", negative == p.at("negative_tokens"), prompt + ": " + negative.dump());
    tally.add("prompts.pixel_values_shape", pixel_shape(layout.num_images) == p.at("pixel_values_shape"), prompt);
  }

  for (const auto& b : golden.at("batches")) {
    check_keys(tally, b, {"prompts", "src_tokens", "img_gpt_input_mask", "negative_tokens", "pixel_values_shape"},
               "a batch");
    std::vector<kosmosg::text::PromptLayout> layouts;
    for (const auto& prompt : b.at("prompts"))
      layouts.push_back(kosmosg::text::layout_prompt(tokenizer, prompt.get<std::string>(), image_token_length));
    const auto batch = kosmosg::text::batch_prompts(layouts);
    // The DreamBench prompts carry no negative prompt; the first item's (empty) one is used.
    const json negative = json::array({kosmosg::text::negative_tokens(tokenizer, "")});
    const std::string what = b.at("prompts").dump();
    tally.add("batches.src_tokens", tensor_rows(batch.tokens) == b.at("src_tokens"), what);
    tally.add("batches.img_gpt_input_mask", tensor_rows(batch.image_mask) == b.at("img_gpt_input_mask"), what);
    tally.add("batches.negative_tokens", negative == b.at("negative_tokens"), what);
    tally.add("batches.pixel_values_shape", pixel_shape(batch.num_images) == b.at("pixel_values_shape"), what);
  }

  for (const auto& [what, c] : tally.counts) report.count(what, c.first, c.second);
}

KOSMOSG_GOLDEN_JSON("tokenization.json", run);

}  // namespace
