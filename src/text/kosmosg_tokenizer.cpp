#include "kosmosg/text/kosmosg_tokenizer.h"

#include <filesystem>
#include <fstream>

#include "kosmosg/error.h"
#include "text/spm_library.h"

namespace kosmosg::text {
namespace {

bool is_count(const std::string& field) {
  size_t start = (!field.empty() && (field[0] == '+' || field[0] == '-')) ? 1 : 0;
  if (start == field.size()) return false;
  for (size_t i = start; i < field.size(); ++i)
    if (field[i] < '0' || field[i] > '9') return false;
  return true;
}

std::string rstrip(std::string s) {
  const auto end = s.find_last_not_of(" \t\r\n\v\f");
  s.erase(end == std::string::npos ? 0 : end + 1);
  return s;
}

void require_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail("tokenizer", what + " " + path + " not found");
  if (!std::filesystem::is_regular_file(path, ec))
    fail("tokenizer", what + " " + path + " is not a regular file");
}

}  // namespace

int64_t KosmosGTokenizer::add_symbol(const std::string& symbol, bool overwrite) {
  if (!overwrite) {
    auto it = indices_.find(symbol);
    if (it != indices_.end()) return it->second;
  }
  const auto id = static_cast<int64_t>(symbols_.size());
  symbols_.push_back(symbol);
  indices_[symbol] = id;
  return id;
}

KosmosGTokenizer KosmosGTokenizer::from_files(const std::string& spm_model, const std::string& dict_txt) {
  require_file(spm_model, "sentencepiece model");
  require_file(dict_txt, "dictionary");

  KosmosGTokenizer t;
  for (const char* special : {"<s>", "<pad>", "</s>", "<unk>"}) t.add_symbol(special);

  std::ifstream in(dict_txt, std::ios::binary);
  if (!in) fail("tokenizer", "dictionary " + dict_txt + " cannot be opened");
  std::string raw;
  size_t line_no = 0;
  // The fairseq format: "<symbol> <count>", optionally followed by " #fairseq:overwrite".
  while (std::getline(in, raw)) {
    ++line_no;
    const std::string where = "dictionary " + dict_txt + " line " + std::to_string(line_no);
    std::string line = rstrip(raw);
    auto split = line.rfind(' ');
    if (split == std::string::npos)
      fail("tokenizer", where + ": found \"" + line.substr(0, 60) + "\", expected '<symbol> <count>'");
    std::string field = line.substr(split + 1);
    line.erase(split);
    bool overwrite = false;
    if (field == "#fairseq:overwrite") {
      overwrite = true;
      split = line.rfind(' ');
      if (split == std::string::npos)
        fail("tokenizer", where + ": found no count before #fairseq:overwrite, expected '<symbol> <count>'");
      field = line.substr(split + 1);
      line.erase(split);
    }
    if (!is_count(field))
      fail("tokenizer", where + ": count \"" + field.substr(0, 60) + "\" is not an integer");
    if (!overwrite && t.indices_.count(line))
      fail("tokenizer", where + ": duplicate symbol \"" + line + "\" (add #fairseq:overwrite to allow it)");
    t.add_symbol(line, overwrite);
  }
  if (in.bad()) fail("tokenizer", "dictionary " + dict_txt + " could not be read");
  if (line_no == 0) fail("tokenizer", "dictionary " + dict_txt + " is empty, expected '<symbol> <count>' lines");

  // The Kosmos-G task appends these after the dictionary file, in this order.
  t.mask_ = t.add_symbol("<mask>");
  t.doc_end_ = t.add_symbol("</doc>");
  t.boi_ = t.add_symbol("<image>");
  t.eoi_ = t.add_symbol("</image>");
  t.chunk_end_ = t.add_symbol("</chunk>");
  t.line_end_ = t.add_symbol("</line>");

  t.spm_ = SpmModel::load(spm_model);
  return t;
}

std::vector<KosmosGTokenizer::Piece> KosmosGTokenizer::split(const std::string& text) const {
  std::vector<Piece> out;
  for (auto& p : spm_->encode(text)) {
    const int64_t id = index(p.text);
    out.push_back({std::move(p.text), p.id, id});
  }
  return out;
}

std::vector<int64_t> KosmosGTokenizer::encode(const std::string& text) const {
  std::vector<int64_t> ids;
  for (const auto& p : spm_->encode(text)) ids.push_back(index(p.text));
  return ids;
}

int64_t KosmosGTokenizer::index(const std::string& symbol) const {
  auto it = indices_.find(symbol);
  return it == indices_.end() ? kUnk : it->second;
}

const std::string& KosmosGTokenizer::symbol(int64_t id) const {
  if (id < 0 || id >= vocab_size())
    fail("tokenizer", "id " + std::to_string(id) + " is outside the dictionary [0, " +
                          std::to_string(vocab_size()) + ")");
  return symbols_[static_cast<size_t>(id)];
}

}  // namespace kosmosg::text
