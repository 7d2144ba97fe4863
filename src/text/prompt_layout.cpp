#include "kosmosg/text/prompt_layout.h"

#include <algorithm>

#include "kosmosg/error.h"

namespace kosmosg::text {
namespace {

// Python's str.split(separator): n separators give n + 1 pieces, empty ones included.
std::vector<std::string> split_at(const std::string& text, const std::string& separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t at = text.find(separator); at != std::string::npos; at = text.find(separator, start)) {
    parts.push_back(text.substr(start, at - start));
    start = at + separator.size();
  }
  parts.push_back(text.substr(start));
  return parts;
}

void require_image_length(size_t image_token_length, const char* where) {
  if (image_token_length == 0) fail(where, "image_token_length is 0, expected at least 1 slot per image");
}

// Appends ids with the same mask value to both vectors.
void append(std::vector<int64_t>& ids, std::vector<uint8_t>& mask, const std::vector<int64_t>& more,
            uint8_t value) {
  ids.insert(ids.end(), more.begin(), more.end());
  mask.insert(mask.end(), more.size(), value);
}

// `<image>` × (L + 1) + `</image>`, input mask 1 on the L slots after the first `<image>`.
void append_image_span(const KosmosGTokenizer& tokenizer, size_t length, std::vector<int64_t>& ids,
                       std::vector<uint8_t>& mask) {
  ids.push_back(tokenizer.boi());
  mask.push_back(0);
  ids.insert(ids.end(), length, tokenizer.boi());
  mask.insert(mask.end(), length, 1);
  ids.push_back(tokenizer.eoi());
  mask.push_back(0);
}

at::Tensor rows_to_tensor(std::vector<std::vector<int64_t>> rows, int64_t pad, at::ScalarType dtype) {
  size_t width = 0;
  for (const auto& r : rows) width = std::max(width, r.size());
  auto out = torch::full({static_cast<int64_t>(rows.size()), static_cast<int64_t>(width)}, pad, torch::kLong);
  auto acc = out.accessor<int64_t, 2>();
  for (size_t b = 0; b < rows.size(); ++b)
    for (size_t t = 0; t < rows[b].size(); ++t) acc[b][t] = rows[b][t];
  return out.to(dtype);
}

std::vector<int64_t> widen(const std::vector<uint8_t>& mask, size_t begin, size_t end) {
  return std::vector<int64_t>(mask.begin() + begin, mask.begin() + end);
}

}  // namespace

PromptLayout layout_prompt(const KosmosGTokenizer& tokenizer, const std::string& prompt,
                           size_t image_token_length) {
  require_image_length(image_token_length, "layout_prompt");
  PromptLayout out;
  out.tokens.push_back(tokenizer.bos());
  out.image_mask.push_back(0);
  const auto parts = split_prompt(prompt);
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    append(out.tokens, out.image_mask, tokenizer.encode(parts[i]), 0);
    append_image_span(tokenizer, image_token_length, out.tokens, out.image_mask);
  }
  append(out.tokens, out.image_mask, tokenizer.encode(parts.back()), 0);
  out.num_images = parts.size() - 1;
  return out;
}

std::vector<int64_t> negative_tokens(const KosmosGTokenizer& tokenizer, const std::string& negative_prompt) {
  std::vector<int64_t> ids{tokenizer.bos()};
  const auto text = tokenizer.encode(negative_prompt);
  ids.insert(ids.end(), text.begin(), text.end());
  return ids;
}

PromptBatch batch_prompts(const std::vector<PromptLayout>& layouts) {
  if (layouts.empty()) fail("batch_prompts", "no prompts given, expected at least one");
  std::vector<std::vector<int64_t>> tokens, masks;
  PromptBatch out;
  for (const auto& l : layouts) {
    if (l.tokens.size() != l.image_mask.size())
      fail("batch_prompts", "a layout has " + std::to_string(l.tokens.size()) + " tokens but " +
                                std::to_string(l.image_mask.size()) + " mask entries");
    tokens.push_back(l.tokens);
    masks.push_back(widen(l.image_mask, 0, l.image_mask.size()));
    out.num_images += l.num_images;
  }
  out.tokens = rows_to_tensor(std::move(tokens), KosmosGTokenizer::kPad, torch::kLong);
  out.image_mask = rows_to_tensor(std::move(masks), 0, torch::kByte);
  return out;
}

TrainingSequence laion_sequence(const KosmosGTokenizer& tokenizer, const std::string& caption) {
  TrainingSequence s;
  s.doc.push_back(tokenizer.bos());
  s.loss_mask.push_back(0);
  append(s.doc, s.loss_mask, tokenizer.encode(caption), 1);
  s.doc.push_back(tokenizer.eos());
  s.loss_mask.push_back(1);
  s.input_mask.assign(s.doc.size(), 0);
  return s;
}

TrainingSequence instruct_pix2pix_sequence(const KosmosGTokenizer& tokenizer, const std::string& input_caption,
                                           const std::string& edit, size_t image_token_length) {
  require_image_length(image_token_length, "instruct_pix2pix_sequence");
  TrainingSequence s;
  s.doc.push_back(tokenizer.bos());
  s.input_mask.push_back(0);
  append(s.doc, s.input_mask, tokenizer.encode(input_caption), 0);
  const size_t image_start = s.doc.size();
  append_image_span(tokenizer, image_token_length, s.doc, s.input_mask);
  append(s.doc, s.input_mask, tokenizer.encode(edit), 0);
  s.doc.push_back(tokenizer.eos());
  s.input_mask.push_back(0);
  // Scored: everything but `<image>` × (L + 1); `</image>` predicts the edit's first token.
  s.loss_mask.assign(s.doc.size(), 1);
  std::fill(s.loss_mask.begin() + image_start, s.loss_mask.begin() + image_start + image_token_length + 1, 0);
  return s;
}

std::vector<std::string> split_prompt(const std::string& prompt) { return split_at(prompt, kImagePlaceholder); }

TrainingSequence interleaved_sequence(const KosmosGTokenizer& tokenizer, const std::vector<std::string>& texts,
                                      size_t image_token_length) {
  require_image_length(image_token_length, "interleaved_sequence");
  if (texts.empty()) fail("interleaved_sequence", "no texts given, expected one per image plus the trailing text");
  TrainingSequence s;
  s.doc.push_back(tokenizer.bos());
  s.input_mask.push_back(0);
  s.loss_mask.push_back(1);
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto ids = tokenizer.encode(texts[i]);
    append(s.doc, s.input_mask, ids, 0);
    s.loss_mask.insert(s.loss_mask.end(), ids.size(), 1);
    if (i + 1 == texts.size()) break;
    append_image_span(tokenizer, image_token_length, s.doc, s.input_mask);
    // The `<image>` ids are never scored; `</image>` predicts the next text token.
    s.loss_mask.insert(s.loss_mask.end(), image_token_length + 1, 0);
    s.loss_mask.push_back(1);
  }
  s.doc.push_back(tokenizer.eos());
  s.input_mask.push_back(0);
  s.loss_mask.push_back(1);
  return s;
}

TrainingBatch collate_training(const std::vector<TrainingSequence>& sequences) {
  if (sequences.empty()) fail("collate_training", "no sequences given, expected at least one");
  std::vector<std::vector<int64_t>> src, target, input_mask, loss_mask;
  for (size_t i = 0; i < sequences.size(); ++i) {
    const auto& s = sequences[i];
    const size_t n = s.doc.size();
    if (n < 2)
      fail("collate_training", "sequence " + std::to_string(i) + " has " + std::to_string(n) +
                                   " tokens, expected at least 2");
    if (s.input_mask.size() != n || s.loss_mask.size() != n)
      fail("collate_training", "sequence " + std::to_string(i) + " has " + std::to_string(n) + " tokens but masks of " +
                                   std::to_string(s.input_mask.size()) + " and " +
                                   std::to_string(s.loss_mask.size()));
    src.emplace_back(s.doc.begin(), s.doc.end() - 1);
    target.emplace_back(s.doc.begin() + 1, s.doc.end());
    input_mask.push_back(widen(s.input_mask, 0, n - 1));
    loss_mask.push_back(widen(s.loss_mask, 0, n - 1));
  }
  TrainingBatch out;
  out.src = rows_to_tensor(std::move(src), KosmosGTokenizer::kPad, torch::kLong);
  out.target = rows_to_tensor(std::move(target), KosmosGTokenizer::kPad, torch::kLong);
  out.input_mask = rows_to_tensor(std::move(input_mask), 0, torch::kByte);
  out.loss_mask = rows_to_tensor(std::move(loss_mask), 1, torch::kByte);
  return out;
}

}  // namespace kosmosg::text
