// The shapes world's scorer: palette quantisation, border vote, per-colour regions and their
// geometry; then the verdicts and the table.
#include "kosmosg/eval/shapes.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "kosmosg/error.h"
#include "kosmosg/io/config.h"
#include "kosmosg/util/progress.h"
#include "kosmosg_features.h"
#if KOSMOSG_HAVE_OPENCV
#include <opencv2/imgproc.hpp>
#endif

namespace kosmosg::eval {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

constexpr const char* kWhere = "shapes eval";

// Images are read at this side: small generated images are enlarged (shapes of a few pixels
// keep a usable outline), large ones averaged down (which also evens out texture).
constexpr int kWorkSide = 128;
constexpr int kBorder = 4;                  // pixels of the border band that votes for the background
constexpr double kMinAreaShare = 0.004;     // smaller regions are noise
constexpr double kMinFilledShare = 0.6;     // regions filling less of their outline are rings, not shapes
constexpr double kSplitShare = 0.25;        // a region with two palette colours this large is split by colour

#if KOSMOSG_HAVE_OPENCV
struct Reference {
  std::string name;
  cv::Vec3f rgb;
};

// The palette, then colours no shape or background has, so that an image of another colour is
// read as that colour (a wrong answer) rather than as the nearest palette entry.
std::vector<Reference> references(const data::ShapesWorld& world) {
  std::vector<Reference> out;
  for (const auto& c : world.palette) out.push_back({c.name, cv::Vec3f(c.rgb[0], c.rgb[1], c.rgb[2])});
  out.push_back({"white", cv::Vec3f(255, 255, 255)});
  out.push_back({"black", cv::Vec3f(0, 0, 0)});
  out.push_back({"grey", cv::Vec3f(128, 128, 128)});
  return out;
}

// Each pixel's nearest reference (squared RGB distance), as CV_8U indices.
cv::Mat quantise(const cv::Mat& rgb, const std::vector<Reference>& refs) {
  cv::Mat labels(rgb.size(), CV_8U);
  for (int y = 0; y < rgb.rows; ++y)
    for (int x = 0; x < rgb.cols; ++x) {
      const cv::Vec3b p = rgb.at<cv::Vec3b>(y, x);
      float best = 1e30f;
      for (size_t r = 0; r < refs.size(); ++r) {
        const cv::Vec3f d = cv::Vec3f(p[0], p[1], p[2]) - refs[r].rgb;
        const float dist = d.dot(d);
        if (dist < best) best = dist, labels.at<uint8_t>(y, x) = static_cast<uint8_t>(r);
      }
    }
  return labels;
}

cv::Mat opening_kernel() { return cv::getStructuringElement(cv::MORPH_ELLIPSE, cv::Size(3, 3)); }

// The reference nearest to the per-channel median of the `mask` pixels of `rgb`, among the first
// `palette` references (the world's palette) and white and black: a washed-out shape still has
// its hue, which grey would take.
const std::string& median_color(const cv::Mat& rgb, const cv::Mat& mask, const std::vector<Reference>& refs,
                                size_t palette) {
  std::array<std::vector<uint8_t>, 3> channels;
  for (int y = 0; y < rgb.rows; ++y)
    for (int x = 0; x < rgb.cols; ++x)
      if (mask.at<uint8_t>(y, x))
        for (int c = 0; c < 3; ++c) channels[c].push_back(rgb.at<cv::Vec3b>(y, x)[c]);
  cv::Vec3f median;
  for (int c = 0; c < 3; ++c) {
    auto& v = channels[c];
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    median[c] = v[v.size() / 2];
  }
  size_t best = 0;
  float best_distance = 1e30f;
  for (size_t r = 0; r < palette + 2; ++r) {
    const cv::Vec3f d = median - refs[r].rgb;
    if (d.dot(d) < best_distance) best_distance = d.dot(d), best = r;
  }
  return refs[best].name;
}

// How each kind fills its minimal enclosing circle, rectangle and triangle, as measured on the
// outlines (through pixel centres, so a little below the ideal 1, 0.785, 0.605 of a circle; 0.637,
// 1, 0.5 of a square; 0.413, 0.5, 1 of a triangle) of the world's drawn and degraded shapes.
struct KindPrototype {
  const char* kind;
  double circle, rect, triangle;
};
constexpr KindPrototype kPrototypes[] = {
    {"circle", 0.95, 0.79, 0.60}, {"square", 0.67, 0.99, 0.52}, {"triangle", 0.47, 0.55, 0.95}};

// Kind and confidence of a region's outline.
std::pair<std::string, double> classify(const std::vector<cv::Point>& contour, double area) {
  std::vector<cv::Point2f> points(contour.begin(), contour.end());
  cv::Point2f centre;
  float radius = 0;
  cv::minEnclosingCircle(points, centre, radius);
  const cv::RotatedRect rect = cv::minAreaRect(points);
  std::vector<cv::Point2f> triangle;
  const double triangle_area = cv::minEnclosingTriangle(points, triangle);
  const double circle = area / (M_PI * radius * radius);
  const double box = area / std::max(1e-6, double(rect.size.width) * rect.size.height);
  const double tri = area / std::max(1e-6, triangle_area);
  double best = 1e30, second = 1e30;
  const char* kind = "";
  for (const auto& p : kPrototypes) {
    const double d = std::hypot(circle - p.circle, box - p.rect, tri - p.triangle);
    if (d < best) second = best, best = d, kind = p.kind;
    else if (d < second) second = d;
  }
  return {kind, second > 0 ? 1.0 - best / second : 0.0};
}
#endif

// The ground truth labels of a test manifest line.
ShapesCase read_case(const io::Json& line, const fs::path& dir, const std::string& split, int64_t index,
                     const std::string& where) {
  ShapesCase c;
  c.split = split;
  c.index = index;
  try {
    c.prompt = line.at("prompt").get<std::string>();
    if (line.contains("images"))
      for (const auto& image : line.at("images")) c.images.push_back((dir / image.get<std::string>()).string());
    c.target = (dir / line.at("target").get<std::string>()).string();
    const auto& labels = line.at("labels");
    c.words = labels.at("words").get<std::string>();
    c.background = labels.at("background").get<std::string>();
    if (split == "edit") c.source_background = labels.at("source_background").get<std::string>();
    for (const auto& s : labels.at("shapes"))
      c.shapes.emplace_back(s.at("kind").get<std::string>(), s.at("color").get<std::string>());
  } catch (const nlohmann::json::exception& e) {
    fail(kWhere, where + ": " + e.what() + " (expected prompt, target and labels as `kosmosg data shapes` writes them)");
  }
  if (c.shapes.empty() || c.shapes.size() > 2)
    fail(kWhere, where + ": labels list " + std::to_string(c.shapes.size()) + " shapes, expected 1 or 2");
  return c;
}

Json rate_json(const ShapesRate& r) { return {{"right", r.right}, {"total", r.total}, {"rate", r.rate()}}; }

Json row_json(const ShapesRow& row, bool with_edit) {
  Json out{{"text_fidelity", rate_json(row.text)}, {"subject_fidelity", rate_json(row.subject)}};
  if (with_edit) out["editing_success"] = rate_json(row.edit);
  return out;
}

// The row of the table a case counts in, as the report names it.
const char* row_name(const ShapesCase& c) {
  return c.split == "text" ? "text-only" : c.shapes.size() == 1 ? "one-entity" : "two-entity";
}

void count_verdict(ShapesRow& row, const ShapesCaseScore& s) {
  if (s.expected.split == "edit") {
    ++row.edit.total;
    row.edit.right += s.verdict.edit;
  } else {
    ++row.text.total, ++row.subject.total;
    row.text.right += s.verdict.text;
    row.subject.right += s.verdict.subject;
  }
}

// "red circle + blue square on green": the entities and the background a case asks for.
std::string combination(const ShapesCase& c) {
  std::string key;
  for (const auto& [kind, color] : c.shapes) key += (key.empty() ? "" : " + ") + color + " " + kind;
  return key + " on " + c.background;
}

std::string cell(const ShapesRate& r) {
  if (r.total == 0) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%5.1f%% (%lld/%lld)", 100.0 * r.rate(), static_cast<long long>(r.right),
                static_cast<long long>(r.total));
  return buf;
}

#if KOSMOSG_HAVE_OPENCV
// Adds the shapes of `region` (a mask): each outer outline at least kMinAreaShare of the image
// and mostly filled, coloured by the median of its pixels.
void add_shapes(const cv::Mat& region, const cv::Mat& rgb, const std::vector<Reference>& refs, size_t palette,
                ShapesReading& reading) {
  const double total_area = double(region.rows) * region.cols;
  std::vector<std::vector<cv::Point>> contours;
  cv::findContours(region.clone(), contours, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_NONE);
  for (const auto& contour : contours) {
    const double area = cv::contourArea(contour);
    if (area < kMinAreaShare * total_area) continue;
    cv::Mat outline = cv::Mat::zeros(region.size(), CV_8U);
    cv::drawContours(outline, std::vector<std::vector<cv::Point>>{contour}, 0, 255, cv::FILLED);
    const cv::Mat pixels = outline & region;
    const double inside = cv::countNonZero(outline), filled = cv::countNonZero(pixels);
    if (filled < kMinFilledShare * inside) continue;
    const auto [kind, confidence] = classify(contour, area);
    reading.shapes.push_back({kind, median_color(rgb, pixels, refs, palette), inside / total_area, confidence});
  }
}

#endif

}  // namespace

ShapesReading read_shapes_image(const at::Tensor& hwc_u8, const data::ShapesWorld& world) {
  if (hwc_u8.dim() != 3 || hwc_u8.size(2) != 3 || hwc_u8.scalar_type() != at::kByte || hwc_u8.size(0) < 8 ||
      hwc_u8.size(1) < 8)
    fail(kWhere, "image of shape " + std::to_string(hwc_u8.dim()) +
                     "-d, expected uint8 [H, W, 3] RGB of at least 8x8 pixels");
#if !KOSMOSG_HAVE_OPENCV
  kosmosg::detail::fail_without_opencv(kWhere);
#else
  const at::Tensor image = hwc_u8.cpu().contiguous();
  const cv::Mat rgb(static_cast<int>(image.size(0)), static_cast<int>(image.size(1)), CV_8UC3, image.data_ptr());
  cv::Mat work;
  const bool shrink = rgb.rows > kWorkSide || rgb.cols > kWorkSide;
  cv::resize(rgb, work, cv::Size(kWorkSide, kWorkSide), 0, 0, shrink ? cv::INTER_AREA : cv::INTER_LINEAR);
  cv::medianBlur(work, work, 3);
  const auto refs = references(world);
  const cv::Mat labels = quantise(work, refs);

  std::vector<int64_t> border(refs.size(), 0);
  for (int y = 0; y < kWorkSide; ++y)
    for (int x = 0; x < kWorkSide; ++x)
      if (y < kBorder || x < kBorder || y >= kWorkSide - kBorder || x >= kWorkSide - kBorder)
        ++border[labels.at<uint8_t>(y, x)];
  const size_t background = static_cast<size_t>(std::max_element(border.begin(), border.end()) - border.begin());
  int64_t border_total = 0;
  for (const auto n : border) border_total += n;

  ShapesReading reading;
  reading.background = refs[background].name;
  reading.background_share = static_cast<double>(border[background]) / static_cast<double>(border_total);

  // Everything not of the background colour, in connected regions: a shape keeps its blended
  // edge (and, in a compressed image, its washed-out parts) instead of losing them to other colours.
  cv::Mat foreground = labels != static_cast<uint8_t>(background);
  cv::morphologyEx(foreground, foreground, cv::MORPH_OPEN, opening_kernel());
  cv::Mat regions, stats, centroids;
  const int count = cv::connectedComponentsWithStats(foreground, regions, stats, centroids, 8);
  const size_t palette = world.palette.size();
  for (int i = 1; i < count; ++i) {
    const int area = stats.at<int>(i, cv::CC_STAT_AREA);
    if (area < kMinAreaShare * kWorkSide * kWorkSide) continue;
    const cv::Mat region = regions == i;
    // Two palette colours of substance in one region are two shapes that touch.
    std::vector<int> histogram(refs.size(), 0);
    for (int y = 0; y < kWorkSide; ++y)
      for (int x = 0; x < kWorkSide; ++x)
        if (region.at<uint8_t>(y, x)) ++histogram[labels.at<uint8_t>(y, x)];
    std::vector<size_t> majors;
    for (size_t r = 0; r < palette; ++r)
      if (histogram[r] >= kSplitShare * area) majors.push_back(r);
    if (majors.size() < 2) {
      add_shapes(region, work, refs, palette, reading);
      continue;
    }
    for (const size_t r : majors) {
      cv::Mat part = region & (labels == static_cast<uint8_t>(r));
      cv::morphologyEx(part, part, cv::MORPH_OPEN, opening_kernel());
      add_shapes(part, work, refs, palette, reading);
    }
  }
  std::sort(reading.shapes.begin(), reading.shapes.end(),
            [](const FoundShape& a, const FoundShape& b) { return a.area > b.area; });
  return reading;
#endif
}

std::vector<ShapesCase> read_shapes_cases(const std::string& world_dir, std::optional<int64_t> limit) {
  std::vector<ShapesCase> cases;
  for (const char* split : {"text", "one_entity", "two_entity", "edit"}) {
    const fs::path path = fs::path(world_dir) / (std::string("test_") + split + ".jsonl");
    std::ifstream in(path);
    if (!in) fail(kWhere, path.string() + " cannot be read (expected a world folder `kosmosg data shapes` wrote)");
    int64_t index = 0, number = 0;
    for (std::string text; std::getline(in, text) && (!limit || index < *limit);) {
      ++number;
      if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = path.string() + " line " + std::to_string(number);
      cases.push_back(read_case(io::parse_json(text, where), path.parent_path(), split, index++, where));
    }
  }
  return cases;
}

ShapesVerdict judge_shapes(const ShapesCase& c, const ShapesReading& reading) {
  ShapesVerdict v;
  v.text = reading.background == c.background;
  if (reading.shapes.size() >= c.shapes.size()) {
    std::vector<std::pair<std::string, std::string>> found;
    for (size_t i = 0; i < c.shapes.size(); ++i) found.emplace_back(reading.shapes[i].kind, reading.shapes[i].color);
    auto expected = c.shapes;
    std::sort(found.begin(), found.end());
    std::sort(expected.begin(), expected.end());
    v.subject = found == expected;
  }
  v.edit = c.split == "edit" && v.text && v.subject;
  return v;
}

std::vector<ShapesCaseScore> score_shapes(const std::vector<ShapesCase>& cases, const data::ShapesWorld& world,
                                          const ShapesImageFn& image_for, bool show_progress) {
  std::vector<ShapesCaseScore> out;
  Progress progress("shapes", static_cast<int64_t>(cases.size()), !show_progress);
  for (const auto& c : cases) {
    auto [image, path] = image_for(c);
    ShapesCaseScore s{c, path, read_shapes_image(image, world), {}};
    s.verdict = judge_shapes(c, s.found);
    out.push_back(std::move(s));
    progress.tick();
  }
  return out;
}

namespace {

// Every scene of `entities` shapes the world can caption: each background, and each kind and
// colour other than the background's for every shape.
std::vector<data::Scene> caption_candidates(const data::ShapesWorld& world, size_t entities) {
  std::vector<data::Shape> shapes;
  for (const auto kind : world.kinds)
    for (int color = 0; color < static_cast<int>(world.palette.size()); ++color) {
      data::Shape s;
      s.kind = kind;
      s.color = color;
      shapes.push_back(s);
    }
  std::vector<data::Scene> scenes;
  for (int background = 0; background < static_cast<int>(world.palette.size()); ++background) {
    std::vector<data::Scene> partial{data::Scene{background, {}}};
    for (size_t e = 0; e < entities; ++e) {
      std::vector<data::Scene> longer;
      for (const auto& scene : partial)
        for (const auto& s : shapes)
          if (s.color != background) {
            longer.push_back(scene);
            longer.back().shapes.push_back(s);
          }
      partial = std::move(longer);
    }
    scenes.insert(scenes.end(), partial.begin(), partial.end());
  }
  return scenes;
}

}  // namespace

std::vector<ShapesCaseScore> score_shapes_conditions(const std::vector<ShapesCase>& cases,
                                                     const data::ShapesWorld& world,
                                                     const ShapesConditionFn& condition_for,
                                                     const CaptionConditionFn& caption_condition,
                                                     bool show_progress) {
  // The candidate scenes of each entity count, and their captions' conditions stacked [N, L, D].
  struct Candidates {
    std::vector<data::Scene> scenes;
    at::Tensor conditions;
  };
  std::map<size_t, Candidates> candidates;
  std::vector<ShapesCaseScore> out;
  Progress progress("conditions", static_cast<int64_t>(cases.size()), !show_progress);
  for (const auto& c : cases) {
    const at::Tensor condition = condition_for(c).to(at::kFloat);
    auto& set = candidates[c.shapes.size()];
    if (set.scenes.empty()) {
      set.scenes = caption_candidates(world, c.shapes.size());
      std::vector<at::Tensor> encoded;
      for (const auto& scene : set.scenes) encoded.push_back(caption_condition(world.caption(scene)).to(at::kFloat));
      set.conditions = at::cat(encoded);
    }
    const at::Tensor first = set.conditions.narrow(0, 0, 1);
    if (!first.sizes().equals(condition.sizes()))
      fail(kWhere, "the condition of \"" + c.prompt + "\" is " + c10::str(condition.sizes()) +
                       " but the text encoder's for \"" + world.caption(set.scenes[0]) + "\" is " +
                       c10::str(first.sizes()));
    const at::Tensor distances = (set.conditions - condition).pow(2).flatten(1).mean(1);
    const auto [values, indices] = distances.topk(std::min<int64_t>(2, distances.size(0)), 0, /*largest=*/false);
    const double nearest = values[0].item<double>();
    const double next = values.size(0) > 1 ? values[1].item<double>() : 0.0;
    const data::Scene& found = set.scenes[static_cast<size_t>(indices[0].item<int64_t>())];
    ShapesCaseScore s{c, "", {}, {}};
    s.found.background = world.palette[found.background].name;
    for (const auto& shape : found.shapes)
      s.found.shapes.push_back({data::shape_kind_name(shape.kind), world.palette[shape.color].name, 0.0,
                                next > 0 ? (next - nearest) / next : 1.0});
    s.verdict = judge_shapes(c, s.found);
    out.push_back(std::move(s));
    progress.tick();
  }
  return out;
}

ShapesScores tally_shapes(const std::vector<ShapesCaseScore>& scored) {
  ShapesScores t;
  for (const auto& s : scored) {
    const std::string row = row_name(s.expected);
    count_verdict(row == "text-only" ? t.text_only : row == "one-entity" ? t.one_entity : t.two_entity, s);
  }
  return t;
}

std::string format_shapes_table(const std::string& title, const ShapesScores& scores) {
  char line[256];
  std::string out;
  std::snprintf(line, sizeof line, "%-12s %-22s %-22s %-22s\n", title.c_str(), "text fidelity", "subject fidelity",
                "editing success");
  out += line;
  for (const auto& [name, row] : {std::pair<const char*, const ShapesRow&>{"text-only", scores.text_only},
                                  {"one-entity", scores.one_entity},
                                  {"two-entity", scores.two_entity}}) {
    std::snprintf(line, sizeof line, "  %-10s %-22s %-22s %-22s\n", name, cell(row.text).c_str(),
                  cell(row.subject).c_str(), cell(row.edit).c_str());
    out += line;
  }
  return out;
}

std::string shapes_report_json(const std::vector<std::pair<std::string, std::vector<ShapesCaseScore>>>& systems,
                               const std::string& settings_json) {
  Json report{{"settings", Json::parse(settings_json)},
              {"scores", Json::object()},
              {"by_combination", Json::object()},
              {"cases", Json::array()}};
  for (const auto& [system, scored] : systems) {
    const ShapesScores t = tally_shapes(scored);
    report["scores"][system] = {{"text-only", row_json(t.text_only, false)},
                                {"one-entity", row_json(t.one_entity, true)},
                                {"two-entity", row_json(t.two_entity, true)}};
    // Per held-out combination, where the table's rates come from (a shape kind the decoder
    // cannot draw in one context shows up here, not in the table).
    std::map<std::string, std::map<std::string, ShapesRow>> rows;
    for (const auto& s : scored) count_verdict(rows[row_name(s.expected)][combination(s.expected)], s);
    Json by_combination = Json::object();
    for (const auto& [row, combinations] : rows)
      for (const auto& [key, counts] : combinations) by_combination[row][key] = row_json(counts, row != "text-only");
    report["by_combination"][system] = by_combination;
    for (const auto& s : scored) {
      Json expected_shapes = Json::array(), found_shapes = Json::array();
      for (const auto& [kind, color] : s.expected.shapes) expected_shapes.push_back({{"kind", kind}, {"color", color}});
      for (const auto& f : s.found.shapes)
        found_shapes.push_back(
            {{"kind", f.kind}, {"color", f.color}, {"area", f.area}, {"confidence", f.confidence}});
      Json expected{{"background", s.expected.background}, {"shapes", expected_shapes}};
      if (!s.expected.source_background.empty()) expected["source_background"] = s.expected.source_background;
      report["cases"].push_back({{"system", system},
                                 {"split", s.expected.split},
                                 {"index", s.expected.index},
                                 {"prompt", s.expected.prompt},
                                 {"words", s.expected.words},
                                 {"image", s.image},
                                 {"expected", expected},
                                 {"found",
                                  {{"background", s.found.background},
                                   {"background_share", s.found.background_share},
                                   {"shapes", found_shapes}}},
                                 {"text", s.verdict.text},
                                 {"subject", s.verdict.subject},
                                 {"edit", s.verdict.edit}});
    }
  }
  return report.dump(2) + "\n";
}

}  // namespace kosmosg::eval
