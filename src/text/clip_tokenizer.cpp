#include "kosmosg/text/clip_tokenizer.h"

#include <cstring>
#include <mutex>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "kosmosg/error.h"
#include "kosmosg/io/config.h"
#include "kosmosg/io/file.h"
#include "text/unicode.h"

namespace kosmosg::text {
namespace {

constexpr const char* kBos = "<|startoftext|>";
constexpr const char* kEos = "<|endoftext|>";
// transformers' CLIPTokenizer reads at most this many merges (49152 - 256 - 2).
constexpr size_t kMaxMerges = 48894;
// The BPE cache keeps words up to this long, at most kMaxCachedWords of them: longer words are
// merged afresh each time, and a full cache starts over, so that a long-running process (the
// align stage's caption filter sees every caption of a data set) keeps bounded memory.
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCachedWords = size_t{1} << 16;
// CLIP's merges.txt is 512 KiB; anything near this is not a merges file.
constexpr uint64_t kMaxMergesFileBytes = 64ull << 20;

// GPT-2/CLIP byte-to-unicode table: printable Latin-1 bytes stand for themselves, the other 68
// bytes for U+0100 onwards, so that every BPE symbol is a printable character.
std::vector<std::string> byte_symbols() {
  std::vector<std::string> out(256);
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    out[b] = unicode::encode_utf8(std::u32string(1, printable ? static_cast<char32_t>(b) : next++));
  }
  return out;
}

// Splits UTF-8 into code points, each as its own UTF-8 string.
std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    size_t n = 1;
    while (i + n < s.size() && (static_cast<unsigned char>(s[i + n]) & 0xC0) == 0x80) ++n;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

bool starts_with_folded(const std::u32string& s, size_t pos, std::u32string_view word) {
  if (pos + word.size() > s.size()) return false;
  for (size_t i = 0; i < word.size(); ++i) {
    char32_t c = s[pos + i];
    // The pattern is case-insensitive; after lower() only these two still fold to ASCII.
    if (c == 0x17F) c = 's';
    if (c == 0x212A) c = 'k';
    if (c != word[i]) return false;
  }
  return true;
}

// re.findall of CLIP's pattern
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// (IGNORECASE) on cleaned text.
std::vector<std::u32string> split_words(const std::u32string& s) {
  using namespace unicode;
  static const std::u32string_view fixed[] = {U"<|startoftext|>", U"<|endoftext|>", U"'s", U"'t",
                                              U"'re", U"'ve", U"'m", U"'ll", U"'d"};
  auto other = [](char32_t c) {
    return !is_white_space(c) && !is_letter(c) && !is_number(c) && !is_unmatched(c);
  };
  std::vector<std::u32string> out;
  for (size_t i = 0; i < s.size();) {
    size_t n = 0;
    for (auto w : fixed) {
      if (starts_with_folded(s, i, w)) {
        n = w.size();
        break;
      }
    }
    if (!n && is_letter(s[i]))
      while (i + n < s.size() && is_letter(s[i + n])) ++n;
    if (!n && is_number(s[i])) n = 1;
    if (!n && other(s[i]))
      while (i + n < s.size() && other(s[i + n])) ++n;
    if (n) {
      out.push_back(s.substr(i, n));
      i += n;
    } else {
      ++i;
    }
  }
  return out;
}

// whitespace_clean(ftfy.fix_text(text)).lower(): runs of \s become one space, then str.strip.
std::u32string clean_text(const std::string& text) {
  using namespace unicode;
  const std::u32string fixed = fix_text(decode_utf8(text));
  std::u32string collapsed;
  bool in_run = false;
  for (char32_t c : fixed) {
    const bool space = is_white_space(c);
    if (!space || !in_run) collapsed.push_back(space ? U' ' : c);
    in_run = space;
  }
  size_t b = 0, e = collapsed.size();
  while (b < e && is_py_space(collapsed[b])) ++b;
  while (e > b && is_py_space(collapsed[e - 1])) --e;
  return lower(collapsed.substr(b, e - b));
}

}  // namespace

struct CLIPTokenizer::Impl {
  std::unordered_map<std::string, int64_t> vocab;
  std::unordered_map<std::string, size_t> ranks;  // "left right" -> merge rank
  std::vector<std::string> byte_symbol = byte_symbols();
  int64_t bos = 0, eos = 0;
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<std::string>> cache;

  // Empties the cache but for the special tokens, which it always holds so that they pass BPE
  // whole wherever they appear. Called with cache_mutex held (or before the tokenizer is shared).
  void reset_cache() const {
    cache.clear();
    cache.emplace(kBos, std::vector<std::string>{kBos});
    cache.emplace(kEos, std::vector<std::string>{kEos});
  }

  // BPE of one byte-mapped word, with the result of CLIP's Python loop: take the lowest-ranked
  // adjacent pair, merge its occurrences left to right without overlap, repeat until no pair has a
  // rank. Python rescans the word for every merge (quadratic: a 120,000-letter word took 25 s);
  // here a heap holds the pairs, one round per rank, so a word costs O(n log n).
  std::vector<std::string> bpe(const std::string& word) const {
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      auto it = cache.find(word);
      if (it != cache.end()) return it->second;
    }
    std::vector<std::string> symbol = utf8_chars(word);
    symbol.back() += "</w>";
    const size_t n = symbol.size();
    constexpr size_t kNone = SIZE_MAX;
    std::vector<size_t> prev(n), next(n);
    std::vector<uint32_t> version(n, 0);  // bumped when a symbol grows, so stale pairs are skipped
    std::vector<bool> alive(n, true);
    for (size_t i = 0; i < n; ++i) prev[i] = i == 0 ? kNone : i - 1, next[i] = i + 1 == n ? kNone : i + 1;
    struct Pair {
      size_t rank, left, right;
      uint32_t left_version, right_version;
      // Lowest rank first, then leftmost: the order of Python's passes.
      bool operator<(const Pair& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::priority_queue<Pair> pairs;
    auto consider = [&](size_t left, size_t right) {
      if (left == kNone || right == kNone) return;
      auto it = ranks.find(symbol[left] + " " + symbol[right]);
      if (it != ranks.end()) pairs.push({it->second, left, right, version[left], version[right]});
    };
    for (size_t i = 0; i + 1 < n; ++i) consider(i, i + 1);
    std::vector<Pair> round;
    std::vector<size_t> grown;
    while (!pairs.empty()) {
      // A merge makes pairs of other texts, hence of other ranks: a round sees exactly the
      // occurrences Python's pass over the word sees.
      const size_t rank = pairs.top().rank;
      round.clear();
      grown.clear();
      while (!pairs.empty() && pairs.top().rank == rank) round.push_back(pairs.top()), pairs.pop();
      for (const Pair& p : round) {
        if (!alive[p.left] || !alive[p.right] || next[p.left] != p.right || version[p.left] != p.left_version ||
            version[p.right] != p.right_version)
          continue;
        symbol[p.left] += symbol[p.right];
        ++version[p.left];
        alive[p.right] = false;
        next[p.left] = next[p.right];
        if (next[p.right] != kNone) prev[next[p.right]] = p.left;
        grown.push_back(p.left);
      }
      for (size_t i : grown) {
        consider(prev[i], i);
        consider(i, next[i]);
      }
    }
    std::vector<std::string> parts;
    for (size_t i = 0; i != kNone; i = next[i]) parts.push_back(std::move(symbol[i]));
    if (word.size() <= kMaxCachedWordBytes) {
      std::lock_guard<std::mutex> lock(cache_mutex);
      if (cache.size() >= kMaxCachedWords) reset_cache();
      cache.emplace(word, parts);
    }
    return parts;
  }

  // The tokens of `piece`, stopping once `limit` are made (words after that are never merged).
  void tokenize_piece(const std::string& piece, size_t limit, std::vector<std::string>& out) const {
    for (const auto& w : split_words(clean_text(piece))) {
      if (out.size() >= limit) return;
      std::string mapped;
      for (unsigned char b : unicode::encode_utf8(w)) mapped += byte_symbol[b];
      auto parts = bpe(mapped);
      out.insert(out.end(), parts.begin(), parts.end());
    }
  }

  // Special tokens written in the text are split off first; the rest is cleaned piece by piece.
  // `limit` bounds the work, not the result: the last word may carry it past the limit.
  std::vector<std::string> tokenize(const std::string& text, size_t limit = SIZE_MAX) const {
    std::vector<std::string> out;
    size_t pos = 0;
    while (pos <= text.size() && out.size() < limit) {
      size_t next = std::string::npos, len = 0;
      for (const char* special : {kBos, kEos}) {
        const size_t at = text.find(special, pos);
        if (at < next) next = at, len = std::strlen(special);
      }
      const std::string piece = text.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
      if (!piece.empty()) tokenize_piece(piece, limit, out);
      if (next == std::string::npos) break;
      out.push_back(text.substr(next, len));
      pos = next + len;
    }
    return out;
  }
};

CLIPTokenizer CLIPTokenizer::from_files(const std::string& vocab_json, const std::string& merges_txt) {
  auto impl = std::make_shared<Impl>();
  const nlohmann::json vocab = io::read_json(vocab_json);
  if (!vocab.is_object() || vocab.empty())
    fail("clip tokenizer", vocab_json + ": expected a non-empty JSON object mapping tokens to ids");
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0)
      fail("clip tokenizer", vocab_json + ": token '" + token + "' has the id " + io::brief(id) +
                                 ", expected a non-negative integer");
    impl->vocab.emplace(token, id.get<int64_t>());
  }
  for (const char* special : {kBos, kEos})
    if (!impl->vocab.count(special))
      fail("clip tokenizer", vocab_json + ": the special token " + std::string(special) + " is missing");
  impl->bos = impl->vocab.at(kBos);
  impl->eos = impl->vocab.at(kEos);

  std::istringstream min(io::read_file(merges_txt, "clip tokenizer", kMaxMergesFileBytes));
  std::string line;
  size_t line_no = 0;
  while (std::getline(min, line) && impl->ranks.size() < kMaxMerges) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_no == 1 && line.rfind("#version", 0) == 0) continue;
    if (line.empty()) continue;
    const size_t space = line.find(' ');
    if (space == 0 || space == std::string::npos || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos)
      fail("clip tokenizer", merges_txt + " line " + std::to_string(line_no) + ": expected 'left right', found '" +
                                 line + "'");
    impl->ranks.emplace(line, impl->ranks.size());
  }
  if (impl->ranks.empty()) fail("clip tokenizer", merges_txt + ": no merges found");
  impl->reset_cache();
  CLIPTokenizer t;
  t.impl_ = std::move(impl);
  return t;
}

CLIPTokenizer CLIPTokenizer::from_folder(const std::string& dir) {
  return from_files(dir + "/vocab.json", dir + "/merges.txt");
}

std::vector<std::string> CLIPTokenizer::bpe_tokens(const std::string& text) const {
  return impl_->tokenize(text);
}

int64_t CLIPTokenizer::token_id(const std::string& token) const {
  auto it = impl_->vocab.find(token);
  return it == impl_->vocab.end() ? impl_->eos : it->second;
}

std::vector<int64_t> CLIPTokenizer::encode(const std::string& text, size_t max_length) const {
  if (max_length < 2)
    fail("clip tokenizer", "max_length " + std::to_string(max_length) + " leaves no room for bos and eos");
  std::vector<int64_t> ids{impl_->bos};
  for (const auto& tok : impl_->tokenize(text, max_length - 2)) {
    if (ids.size() + 1 >= max_length) break;
    ids.push_back(token_id(tok));
  }
  ids.resize(max_length, impl_->eos);
  return ids;
}

int64_t CLIPTokenizer::bos_id() const { return impl_->bos; }
int64_t CLIPTokenizer::eos_id() const { return impl_->eos; }
size_t CLIPTokenizer::vocab_size() const { return impl_->vocab.size(); }

size_t CLIPTokenizer::cached_words() const {
  std::lock_guard<std::mutex> lock(impl_->cache_mutex);
  return impl_->cache.size();
}

}  // namespace kosmosg::text
