#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>

#include "data/internal.h"
#include "kosmosg/data/source.h"
#include "kosmosg/error.h"

namespace kosmosg::data {
namespace {

namespace fs = std::filesystem;

constexpr const char* kKinds[] = {"jsonl", "laion", "instructpix2pix", "openimages"};

bool is_kind(const std::string& s) { return std::find(std::begin(kKinds), std::end(kKinds), s) != std::end(kKinds); }

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// The kind a folder's name suggests, or "" when it suggests none.
std::string guess_kind(const std::string& dir) {
  fs::path path = fs::path(dir).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();  // "dir/" names the folder too
  const std::string name = lower(path.filename().string());
  if (name.find("laion") != std::string::npos) return "laion";
  if (name.find("pix2pix") != std::string::npos || name.find("ip2p") != std::string::npos) return "instructpix2pix";
  if (name.find("openimage") != std::string::npos) return "openimages";
  return "";
}

}  // namespace

SourceSpec parse_source_spec(const std::string& spec) {
  SourceSpec out;
  std::string rest = spec;
  const size_t first = rest.find(':');
  if (first != std::string::npos && is_kind(rest.substr(0, first))) {
    out.kind = rest.substr(0, first);
    rest = rest.substr(first + 1);
  }
  const size_t last = rest.rfind(':');
  if (last != std::string::npos) {
    const std::string tail = rest.substr(last + 1);
    char* end = nullptr;
    const double weight = std::strtod(tail.c_str(), &end);
    if (!tail.empty() && end == tail.c_str() + tail.size()) {
      if (!std::isfinite(weight) || weight < 0)
        fail("data source", "'" + spec + "': weight " + tail + " must be a finite number >= 0");
      out.weight = weight;
      rest = rest.substr(0, last);
    }
  }
  if (rest.empty()) fail("data source", "'" + spec + "' names no path, expected [KIND:]PATH[:WEIGHT]");
  out.path = rest;
  return out;
}

std::unique_ptr<Source> open_source(const SourceSpec& spec) {
  std::error_code ec;
  if (!fs::exists(spec.path, ec)) fail("data source", spec.path + ": no such file or folder");
  std::string kind = spec.kind;
  if (!kind.empty() && !is_kind(kind))
    fail("data source", spec.path + ": unknown kind '" + kind + "', expected jsonl, laion, instructpix2pix or openimages");
  if (fs::is_directory(spec.path, ec)) {
    if (kind.empty()) kind = guess_kind(spec.path);
    if (kind.empty())
      fail("data source", spec.path + ": cannot tell the kind of this data folder from its name; write KIND:" +
                              spec.path + " with KIND one of laion, instructpix2pix, openimages");
    if (kind == "jsonl") fail("data source", spec.path + ": is a folder, expected a .jsonl manifest file");
  } else if (kind.empty() || kind == "jsonl") {
    if (fs::path(spec.path).extension() != ".jsonl")
      fail("data source", spec.path + ": expected a .jsonl manifest or a data folder with json/train.json");
    kind = "jsonl";
  } else {
    fail("data source", spec.path + ": is a file, expected a " + kind + " folder with json/train.json");
  }
  if (kind == "jsonl") return detail::open_jsonl(spec.path);
  if (kind == "laion") return detail::open_laion(spec.path);
  if (kind == "instructpix2pix") return detail::open_instructpix2pix(spec.path);
  return detail::open_openimages(spec.path);
}

}  // namespace kosmosg::data
