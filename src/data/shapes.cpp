// The shapes world: scenes drawn with OpenCV from seeded draws, their captions and the manifests
// of every stage, with a held-out split no training line shows.
#include "kosmosg/data/shapes.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "data/internal.h"
#include "kosmosg/data/loader.h"
#include "kosmosg/error.h"
#include "kosmosg/io/config.h"
#include "kosmosg/io/image.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg_features.h"
#if KOSMOSG_HAVE_OPENCV
#include <opencv2/imgproc.hpp>
#endif

namespace kosmosg::data {
namespace {

namespace fs = std::filesystem;
using Line = nlohmann::ordered_json;  // manifest keys in the order people read them

constexpr const char* kShapesWhere = "shapes";
constexpr const char* kKindNames[] = {"circle", "square", "triangle"};

// Seed domains: every scene has its own generator, so a scene does not depend on the others.
constexpr uint64_t kTrainDomain = 0x5348415045530001, kTestOneDomain = 0x5348415045530002,
                   kTestTwoDomain = 0x5348415045530003, kTestEditDomain = 0x5348415045530004;
// A scene is redrawn at most this often when its draw shows a held-out combination.
constexpr int kMaxAttempts = 1000;

// Sizes as fractions of the image side: one shape alone, or each of two side by side.
constexpr double kOneHalfMin = 0.16, kOneHalfMax = 0.30, kTwoHalfMin = 0.13, kTwoHalfMax = 0.19;
constexpr double kMargin = 0.04;     // from the image border
constexpr double kTwoGap = 0.04;     // from the vertical midline, each side
constexpr double kEntityHalf = 0.30;  // entity images

double between(std::mt19937_64& rng, double lo, double hi) { return lo + (hi - lo) * detail::uniform(rng); }
int below(std::mt19937_64& rng, size_t n) { return static_cast<int>(detail::uniform_below(rng, n)); }

#if KOSMOSG_HAVE_OPENCV
cv::Scalar scalar(const std::array<uint8_t, 3>& rgb) { return {double(rgb[0]), double(rgb[1]), double(rgb[2])}; }

// Fills `shape` into an RGB image with 4 bits of sub-pixel precision; scene coordinates put pixel
// i's centre at i + 0.5, OpenCV's at i.
void draw_shape(cv::Mat& image, const Shape& shape, const std::array<uint8_t, 3>& rgb) {
  constexpr int kShift = 4;
  constexpr double kOne = 1 << kShift;
  auto point = [&](double x, double y) {
    return cv::Point(static_cast<int>(std::lround((x - 0.5) * kOne)), static_cast<int>(std::lround((y - 0.5) * kOne)));
  };
  const double cx = shape.cx, cy = shape.cy, h = shape.half;
  switch (shape.kind) {
    case ShapeKind::Circle:
      cv::circle(image, point(cx, cy), static_cast<int>(std::lround(h * kOne)), scalar(rgb), cv::FILLED, cv::LINE_AA,
                 kShift);
      break;
    case ShapeKind::Square: {
      const std::vector<cv::Point> corners{point(cx - h, cy - h), point(cx + h, cy - h), point(cx + h, cy + h),
                                           point(cx - h, cy + h)};
      cv::fillConvexPoly(image, corners, scalar(rgb), cv::LINE_AA, kShift);
      break;
    }
    case ShapeKind::Triangle: {
      const double height = std::sqrt(3.0) * h;  // equilateral, base 2h
      const std::vector<cv::Point> corners{point(cx, cy - height / 2), point(cx + h, cy + height / 2),
                                           point(cx - h, cy + height / 2)};
      cv::fillConvexPoly(image, corners, scalar(rgb), cv::LINE_AA, kShift);
      break;
    }
  }
}

at::Tensor to_tensor(const cv::Mat& rgb) {
  return at::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, at::kByte).clone();
}
#endif

// ---- Scenes ----------------------------------------------------------------------------------

// Gives `shape` a random kind and a colour other than `background` and other than the look
// (kind and colour) of `other`, when given.
void restyle(Shape& shape, std::mt19937_64& rng, const ShapesWorld& world, int background, const Shape* other) {
  for (;;) {
    shape.kind = world.kinds[below(rng, world.kinds.size())];
    shape.color = below(rng, world.palette.size() - 1);
    if (shape.color >= background) ++shape.color;
    if (!other || other->kind != shape.kind || other->color != shape.color) return;
  }
}

// A scene of one or two shapes with random looks, sizes and positions; held-out or not.
Scene random_scene(std::mt19937_64& rng, const ShapesWorld& world, int shapes) {
  const double side = static_cast<double>(world.image_size), margin = kMargin * side;
  Scene scene;
  scene.background = below(rng, world.palette.size());
  if (shapes == 1) {
    Shape s;
    restyle(s, rng, world, scene.background, nullptr);
    s.half = between(rng, kOneHalfMin, kOneHalfMax) * side;
    s.cx = between(rng, s.half + margin, side - s.half - margin);
    s.cy = between(rng, s.half + margin, side - s.half - margin);
    scene.shapes.push_back(s);
    return scene;
  }
  const double gap = kTwoGap * side;
  Shape left, right;
  restyle(left, rng, world, scene.background, nullptr);
  restyle(right, rng, world, scene.background, &left);
  for (Shape* s : {&left, &right}) {
    s->half = between(rng, kTwoHalfMin, kTwoHalfMax) * side;
    s->cy = between(rng, s->half + margin, side - s->half - margin);
  }
  left.cx = between(rng, left.half + margin, side / 2 - gap - left.half);
  right.cx = between(rng, side / 2 + gap + right.half, side - right.half - margin);
  scene.shapes = {left, right};
  return scene;
}

// A training scene: redrawn until it shows no held-out combination.
Scene training_scene(std::mt19937_64& rng, const ShapesWorld& world, int shapes) {
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    Scene scene = random_scene(rng, world, shapes);
    if (!world.holds_out(scene)) return scene;
  }
  fail(kShapesWhere, "no " + std::to_string(shapes) + "-shape training scene avoids the held-out combinations after " +
                   std::to_string(kMaxAttempts) + " draws");
}

// Backgrounds `scene` can be changed to: not its own, not a shape's colour, showing nothing held out.
std::vector<int> edit_backgrounds(const ShapesWorld& world, const Scene& scene) {
  std::vector<int> out;
  for (int b = 0; b < static_cast<int>(world.palette.size()); ++b) {
    Scene edited = scene;
    edited.background = b;
    const bool shape_colored =
        std::any_of(scene.shapes.begin(), scene.shapes.end(), [b](const Shape& s) { return s.color == b; });
    if (b != scene.background && !shape_colored && !world.holds_out(edited)) out.push_back(b);
  }
  return out;
}

// A test scene showing held-out combination `h` (in a random slot when there are two shapes).
Scene held_out_scene(std::mt19937_64& rng, const ShapesWorld& world, const ShapeCombination& h, int shapes) {
  Scene scene = random_scene(rng, world, shapes);
  scene.background = h.background;
  const size_t slot = shapes == 2 ? static_cast<size_t>(below(rng, 2)) : 0;
  scene.shapes[slot].kind = h.kind;
  scene.shapes[slot].color = h.color;
  if (shapes == 2) restyle(scene.shapes[1 - slot], rng, world, scene.background, &scene.shapes[slot]);
  return scene;
}

// ---- Files -----------------------------------------------------------------------------------

std::string scene_number(int64_t n) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%06lld", static_cast<long long>(n));
  return buf;
}

std::string entity_file(const ShapesWorld& world, const Shape& shape) {
  return std::string("entities/") + world.palette[shape.color].name + "_" + shape_kind_name(shape.kind) + ".png";
}

std::vector<std::string> entity_files(const ShapesWorld& world, const Scene& scene) {
  std::vector<std::string> out;
  for (const auto& s : scene.shapes) out.push_back(entity_file(world, s));
  return out;
}

// "<i> on a green background", "<i> next to <i> on a green background".
std::string composition_prompt(const ShapesWorld& world, const Scene& scene) {
  const std::string on = "on a " + world.palette[scene.background].name + " background";
  return scene.shapes.size() == 1 ? "<i> " + on : "<i> next to <i> " + on;
}

// Captions of the same scene with the shapes' colours bound wrong: swapped, or both shapes in one
// of the two colours (what a decoder that reads the colours as a bag draws); none for one shape,
// and none that names a held-out combination, which training must not show even as text.
std::vector<std::string> binding_negatives(const ShapesWorld& world, const Scene& scene) {
  std::vector<std::string> out;
  if (scene.shapes.size() != 2) return out;
  const int first = scene.shapes[0].color, second = scene.shapes[1].color;
  for (const auto& [left, right] : {std::pair{second, first}, std::pair{first, first}, std::pair{second, second}}) {
    Scene wrong = scene;
    wrong.shapes[0].color = left;
    wrong.shapes[1].color = right;
    const std::string caption = world.caption(wrong);
    if (caption != world.caption(scene) && !world.holds_out(wrong) &&
        std::find(out.begin(), out.end(), caption) == out.end())
      out.push_back(caption);
  }
  return out;
}

std::string edit_instruction(const ShapesWorld& world, int background) {
  return "make the background " + world.palette[background].name;
}

// The ground truth the scorer checks a generated image against.
Line labels(const ShapesWorld& world, const Scene& scene, const std::string& words) {
  Line shapes = Line::array();
  for (const auto& s : scene.shapes)
    shapes.push_back({{"kind", shape_kind_name(s.kind)}, {"color", world.palette[s.color].name}});
  return {{"background", world.palette[scene.background].name}, {"shapes", shapes}, {"words", words}};
}

// Manifest lines, joined into the file's text at the end.
struct Manifest {
  explicit Manifest(std::string file) : name(std::move(file)) {}
  std::string name, text;
  int64_t lines = 0;
  void add(const Line& line) {
    text += line.dump() + "\n";
    ++lines;
  }
};

// Logs every tenth of `total` (and the last), so a long run shows it is moving.
void log_progress(const char* what, int64_t done, int64_t total, bool quiet) {
  const int64_t step = std::max<int64_t>(1, total / 10);
  if (!quiet && (done % step == 0 || done == total)) spdlog::info("{}: {}/{}", what, done, total);
}

// The images of a world, listed while the manifests are built and then drawn and written by
// several threads at once: each PNG is fsynced (io::write_png), so one thread would mostly wait.
class ImageWriter {
 public:
  ImageWriter(const ShapesOptions& options, const ShapesWorld& world) : o_(options), world_(world) {}

  void entity(const std::string& relative, ShapeKind kind, int color) {
    jobs_.push_back({relative, {}, kind, color, true});
  }
  void scene(const std::string& relative, const Scene& scene) { jobs_.push_back({relative, scene, {}, 0, false}); }
  int64_t size() const { return static_cast<int64_t>(jobs_.size()); }

  void write_all() {
    std::atomic<size_t> next{0};
    std::atomic<int64_t> done{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto work = [&] {
      for (size_t i = next++; i < jobs_.size(); i = next++) {
        try {
          write(jobs_[i]);
        } catch (...) {
          const std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
          next = jobs_.size();
        }
        log_progress("images", ++done, size(), o_.quiet);
      }
    };
    std::vector<std::thread> threads;
    for (int64_t t = 1; t < o_.threads; ++t) threads.emplace_back(work);
    work();
    for (auto& t : threads) t.join();
    if (error) std::rethrow_exception(error);
  }

 private:
  struct Job {
    std::string file;
    Scene scene;
    ShapeKind kind;
    int color;
    bool entity;
  };

  void write(const Job& job) const {
    const std::string path = (fs::path(o_.out_dir) / job.file).string();
    if (job.entity) {
      const Shape shape{job.kind, job.color, 0, 0, 0};
      io::write_png(path, draw_shapes_entity(world_, job.kind, job.color), {{"caption", world_.words(shape)}});
    } else {
      io::write_png(path, draw_shapes_scene(world_, job.scene), {{"caption", world_.caption(job.scene)}});
    }
  }

  const ShapesOptions& o_;
  const ShapesWorld& world_;
  std::vector<Job> jobs_;
};

void check_options(const ShapesOptions& o) {
  if (o.out_dir.empty()) fail(kShapesWhere, "no output folder given");
  if (o.count < 1) fail(kShapesWhere, "count is " + std::to_string(o.count) + ", expected at least 1 training scene");
  if (o.test_count < 1)
    fail(kShapesWhere, "test count is " + std::to_string(o.test_count) + ", expected at least 1 scene per test split");
  if (!(o.two_entity_fraction >= 0 && o.two_entity_fraction <= 1))
    fail(kShapesWhere, "two-entity fraction is " + std::to_string(o.two_entity_fraction) + ", expected a number in [0, 1]");
  if (o.threads < 1 || o.threads > 256) fail(kShapesWhere, "threads is " + std::to_string(o.threads) + ", expected 1 to 256");
}

}  // namespace

// ---- Names and the world ---------------------------------------------------------------------

const std::vector<ShapesColor>& shapes_builtin_colors() {
  static const std::vector<ShapesColor> colors{
      {"red", {220, 40, 40}},     {"green", {40, 170, 60}},  {"blue", {40, 80, 220}},  {"yellow", {240, 210, 40}},
      {"purple", {150, 60, 190}}, {"orange", {245, 140, 30}}, {"cyan", {40, 200, 220}}};
  return colors;
}

const ShapesColor& shapes_entity_background() {
  static const ShapesColor white{"white", {255, 255, 255}};
  return white;
}

const char* shape_kind_name(ShapeKind kind) { return kKindNames[static_cast<int>(kind)]; }

ShapeKind parse_shape_kind(const std::string& name) {
  for (int k = 0; k < 3; ++k)
    if (name == kKindNames[k]) return static_cast<ShapeKind>(k);
  fail(kShapesWhere, "unknown shape '" + name + "', expected circle, square or triangle");
}

std::vector<ShapeCombination> shapes_held_out(size_t palette_size, const std::vector<ShapeKind>& kinds,
                                              int64_t count) {
  const int colors = static_cast<int>(palette_size), nkinds = static_cast<int>(kinds.size());
  // Training combinations left per pair; a candidate may not take any pair's last one.
  std::map<std::pair<int, int>, int> kind_color, kind_background, color_background;
  for (int k = 0; k < nkinds; ++k)
    for (int c = 0; c < colors; ++c)
      for (int b = 0; b < colors; ++b)
        if (c != b) ++kind_color[{k, c}], ++kind_background[{k, b}], ++color_background[{c, b}];
  std::vector<ShapeCombination> chosen;
  for (int round = 0; round < colors * (colors - 1) && static_cast<int64_t>(chosen.size()) < count; ++round) {
    for (int k = 0; k < nkinds && static_cast<int64_t>(chosen.size()) < count; ++k) {
      const int c = (k + 2 * round) % colors, b = (c + 1 + round / colors) % colors;
      const ShapeCombination candidate{kinds[k], c, b};
      if (std::find(chosen.begin(), chosen.end(), candidate) != chosen.end()) continue;
      int& kc = kind_color[{k, c}];
      int& kb = kind_background[{k, b}];
      int& cb = color_background[{c, b}];
      if (kc == 1 || kb == 1 || cb == 1) continue;
      --kc, --kb, --cb;
      chosen.push_back(candidate);
    }
  }
  return chosen;
}

ShapesWorld ShapesWorld::create(const std::vector<std::string>& colors, const std::vector<std::string>& kinds,
                                int64_t image_size, int64_t held_out) {
  ShapesWorld world;
  std::string known;
  for (const auto& c : shapes_builtin_colors()) known += (known.empty() ? "" : ", ") + c.name;
  for (const auto& name : colors) {
    const auto& builtin = shapes_builtin_colors();
    const auto it = std::find_if(builtin.begin(), builtin.end(), [&](const ShapesColor& c) { return c.name == name; });
    if (it == builtin.end()) fail(kShapesWhere, "unknown colour '" + name + "', expected one of " + known);
    for (const auto& c : world.palette)
      if (c.name == name) fail(kShapesWhere, "colour '" + name + "' is listed twice");
    world.palette.push_back(*it);
  }
  if (world.palette.size() < 3)
    fail(kShapesWhere, std::to_string(world.palette.size()) +
                     " colours given, expected at least 3 (a shape, its background and another to edit to)");
  for (const auto& name : kinds) {
    const ShapeKind kind = parse_shape_kind(name);
    if (std::find(world.kinds.begin(), world.kinds.end(), kind) != world.kinds.end())
      fail(kShapesWhere, "shape '" + name + "' is listed twice");
    world.kinds.push_back(kind);
  }
  if (world.kinds.empty()) fail(kShapesWhere, "no shape kinds given, expected some of circle, square, triangle");
  if (image_size < 16 || image_size > 1024)
    fail(kShapesWhere, "image size " + std::to_string(image_size) + " is outside 16..1024 pixels");
  world.image_size = image_size;
  if (held_out < 1) fail(kShapesWhere, "held-out count is " + std::to_string(held_out) + ", expected at least 1");
  world.held_out = shapes_held_out(world.palette.size(), world.kinds, held_out);
  if (static_cast<int64_t>(world.held_out.size()) < held_out)
    fail(kShapesWhere, std::to_string(held_out) + " held-out combinations asked for, but only " +
                     std::to_string(world.held_out.size()) +
                     " can be held out while every kind-colour, kind-background and colour-background pair keeps a "
                     "combination to train on" +
                     (world.kinds.size() == 1 ? " (with one shape kind none can: give at least 2)" : ""));
  return world;
}

ShapesWorld ShapesWorld::load(const std::string& dir) {
  const std::string path = (fs::path(dir) / "world.json").string();
  const io::Json json = io::read_json(path);
  ShapesWorld world;
  try {
    world.image_size = json.at("image_size").get<int64_t>();
    for (const auto& c : json.at("palette"))
      world.palette.push_back({c.at("name").get<std::string>(), c.at("rgb").get<std::array<uint8_t, 3>>()});
    for (const auto& k : json.at("kinds")) world.kinds.push_back(parse_shape_kind(k.get<std::string>()));
    for (const auto& h : json.at("held_out"))
      world.held_out.push_back({parse_shape_kind(h.at("kind").get<std::string>()),
                                world.color_index(h.at("color").get<std::string>()),
                                world.color_index(h.at("background").get<std::string>())});
  } catch (const nlohmann::json::exception& e) {
    fail(kShapesWhere, path + ": " + e.what() + " (expected the world.json `kosmosg data shapes` writes)");
  } catch (const Error& e) {
    fail(kShapesWhere, path + ": " + e.what());
  }
  return world;
}

int ShapesWorld::color_index(const std::string& name) const {
  std::string known;
  for (size_t i = 0; i < palette.size(); ++i) {
    if (palette[i].name == name) return static_cast<int>(i);
    known += (i ? ", " : "") + palette[i].name;
  }
  fail(kShapesWhere, "colour '" + name + "' is not in the palette (" + known + ")");
}

bool ShapesWorld::holds_out(const Scene& scene) const {
  for (const auto& s : scene.shapes)
    if (std::find(held_out.begin(), held_out.end(), ShapeCombination{s.kind, s.color, scene.background}) !=
        held_out.end())
      return true;
  return false;
}

std::string ShapesWorld::words(const Shape& shape) const {
  return "a " + palette[shape.color].name + " " + shape_kind_name(shape.kind);
}

std::string ShapesWorld::caption(const Scene& scene) const {
  std::string out;
  for (const auto& s : scene.shapes) out += (out.empty() ? "" : " next to ") + words(s);
  return out + " on a " + palette[scene.background].name + " background";
}

at::Tensor draw_shapes_scene(const ShapesWorld& world, const Scene& scene) {
#if !KOSMOSG_HAVE_OPENCV
  kosmosg::detail::fail_without_opencv("shapes");
#else
  const int side = static_cast<int>(world.image_size);
  cv::Mat image(side, side, CV_8UC3, scalar(world.palette[scene.background].rgb));
  for (const auto& s : scene.shapes) draw_shape(image, s, world.palette[s.color].rgb);
  return to_tensor(image);
#endif
}

at::Tensor draw_shapes_entity(const ShapesWorld& world, ShapeKind kind, int color) {
#if !KOSMOSG_HAVE_OPENCV
  kosmosg::detail::fail_without_opencv("shapes");
#else
  const int side = static_cast<int>(world.image_size);
  cv::Mat image(side, side, CV_8UC3, scalar(shapes_entity_background().rgb));
  const double half_side = world.image_size / 2.0;
  draw_shape(image, Shape{kind, color, half_side, half_side, kEntityHalf * world.image_size}, world.palette[color].rgb);
  return to_tensor(image);
#endif
}

// ---- Writing a world -------------------------------------------------------------------------

ShapesSummary write_shapes_world(const ShapesOptions& o) {
  check_options(o);
  const ShapesWorld world = ShapesWorld::create(o.colors, o.kinds, o.image_size, o.held_out);
  ImageWriter out(o, world);
  const fs::path root(o.out_dir);
  for (const char* sub : {"entities", "train", "test"}) fs::create_directories(root / sub);
  ShapesSummary summary;

  for (int c = 0; c < static_cast<int>(world.palette.size()); ++c)
    for (const ShapeKind kind : world.kinds) {
      out.entity(entity_file(world, Shape{kind, c, 0, 0, 0}), kind, c);
    }

  Manifest captions{"captions.jsonl"}, text_to_image{"text_to_image.jsonl"}, interleaved{"interleaved.jsonl"},
      entities{"entities.jsonl"}, one{"one_entity.jsonl"}, two{"two_entity.jsonl"}, edit{"edit.jsonl"};
  for (int64_t n = 0; n < o.count; ++n) {
    std::mt19937_64 rng(mix_seeds({kTrainDomain, o.seed, static_cast<uint64_t>(n)}));
    const int shapes = detail::uniform(rng) < o.two_entity_fraction ? 2 : 1;
    const Scene scene = training_scene(rng, world, shapes);
    const std::string file = "train/" + scene_number(n) + ".png", caption = world.caption(scene);
    out.scene(file, scene);
    captions.add({{"text", caption}});
    Line t2i{{"prompt", caption}, {"target", file}};
    if (const auto negatives = binding_negatives(world, scene); !negatives.empty()) t2i["negatives"] = negatives;
    text_to_image.add(t2i);
    interleaved.add({{"prompt", "<i> " + caption}, {"images", {file}}});
    (shapes == 1 ? one : two)
        .add({{"prompt", composition_prompt(world, scene)}, {"images", entity_files(world, scene)}, {"target", file}});
    const auto backgrounds = edit_backgrounds(world, scene);
    if (!backgrounds.empty()) {
      Scene edited = scene;
      edited.background = backgrounds[below(rng, backgrounds.size())];
      const std::string edited_file = "train/" + scene_number(n) + "_edit.png";
      out.scene(edited_file, edited);
      edit.add({{"prompt", "<i> " + edit_instruction(world, edited.background)}, {"images", {file}}, {"target", edited_file}});
    }
  }
  for (int c = 0; c < static_cast<int>(world.palette.size()); ++c)
    for (const ShapeKind kind : world.kinds) {
      const Shape shape{kind, c, 0, 0, 0};
      entities.add({{"prompt", "<i> is " + world.words(shape)}, {"images", {entity_file(world, shape)}}});
    }

  Manifest test_text{"test_text.jsonl"}, test_one{"test_one_entity.jsonl"}, test_two{"test_two_entity.jsonl"},
      test_edit{"test_edit.jsonl"};
  const size_t held = world.held_out.size();
  for (int64_t n = 0; n < o.test_count; ++n) {
    const auto& h = world.held_out[static_cast<size_t>(n) % held];
    for (const int shapes : {1, 2}) {
      std::mt19937_64 rng(mix_seeds({shapes == 1 ? kTestOneDomain : kTestTwoDomain, o.seed, static_cast<uint64_t>(n)}));
      const Scene scene = held_out_scene(rng, world, h, shapes);
      const std::string file = std::string("test/") + (shapes == 1 ? "one_" : "two_") + scene_number(n) + ".png";
      const std::string caption = world.caption(scene);
      out.scene(file, scene);
      test_text.add({{"prompt", caption}, {"target", file}, {"labels", labels(world, scene, caption)}});
      (shapes == 1 ? test_one : test_two)
          .add({{"prompt", composition_prompt(world, scene)},
                {"images", entity_files(world, scene)},
                {"target", file},
                {"labels", labels(world, scene, caption)}});
    }

    // Editing: a source the training split could show, edited into a held-out scene.
    std::mt19937_64 rng(mix_seeds({kTestEditDomain, o.seed, static_cast<uint64_t>(n)}));
    const int shapes = 1 + static_cast<int>(n % 2);
    Scene target, source;
    std::vector<int> sources;
    for (int attempt = 0; sources.empty(); ++attempt) {
      if (attempt == kMaxAttempts)
        fail(kShapesWhere, "no editing source scene for held-out combination " + world.caption({h.background, {Shape{h.kind, h.color}}}));
      target = held_out_scene(rng, world, h, shapes);
      sources = edit_backgrounds(world, target);
    }
    source = target;
    source.background = sources[below(rng, sources.size())];
    const std::string stem = "test/edit_" + scene_number(n);
    out.scene(stem + "_source.png", source);
    out.scene(stem + ".png", target);
    const std::string instruction = edit_instruction(world, target.background);
    Line l = labels(world, target, world.caption(source) + " " + instruction);
    l["source_background"] = world.palette[source.background].name;
    test_edit.add({{"prompt", "<i> " + instruction},
                   {"images", {stem + "_source.png"}},
                   {"target", stem + ".png"},
                   {"labels", l}});
  }

  // world.json and the manifests last: a run stopped early leaves no manifest naming missing images.
  out.write_all();
  summary.train_scenes = o.count;
  summary.one_entity = one.lines;
  summary.two_entity = two.lines;
  summary.edit = edit.lines;
  summary.test_text = test_text.lines;
  summary.test_one_entity = test_one.lines;
  summary.test_two_entity = test_two.lines;
  summary.test_edit = test_edit.lines;
  summary.images = out.size();
  for (const Manifest* m : {&captions, &text_to_image, &interleaved, &entities, &one, &two, &edit, &test_text,
                            &test_one, &test_two, &test_edit})
    io::write_text_atomically((root / m->name).string(), m->text);

  Line palette = Line::array(), held_out = Line::array(), kinds = Line::array();
  for (const auto& c : world.palette) palette.push_back({{"name", c.name}, {"rgb", c.rgb}});
  for (const auto k : world.kinds) kinds.push_back(shape_kind_name(k));
  for (const auto& h : world.held_out)
    held_out.push_back({{"kind", shape_kind_name(h.kind)},
                        {"color", world.palette[h.color].name},
                        {"background", world.palette[h.background].name}});
  const Line description{
      {"seed", o.seed},
      {"image_size", world.image_size},
      {"palette", palette},
      {"entity_background", {{"name", shapes_entity_background().name}, {"rgb", shapes_entity_background().rgb}}},
      {"kinds", kinds},
      {"two_entity_fraction", o.two_entity_fraction},
      {"held_out", held_out},
      {"counts",
       {{"train_scenes", summary.train_scenes},
        {"one_entity", summary.one_entity},
        {"two_entity", summary.two_entity},
        {"edit", summary.edit},
        {"test_scenes_per_split", o.test_count},
        {"test_text", summary.test_text},
        {"test_one_entity", summary.test_one_entity},
        {"test_two_entity", summary.test_two_entity},
        {"test_edit", summary.test_edit},
        {"images", summary.images}}},
      {"manifests",
       {{"captions.jsonl", "text documents (lm, align)"},
        {"text_to_image.jsonl", "caption -> image (t2i, instruct); two shapes: negatives, the colours bound wrong"},
        {"interleaved.jsonl", "image-caption documents (lm)"},
        {"entities.jsonl", "each entity image named, a line per kind and colour (lm)"},
        {"one_entity.jsonl", "entity + context -> image (instruct)"},
        {"two_entity.jsonl", "two entities + context -> image (instruct)"},
        {"edit.jsonl", "image + new background -> image (instruct)"},
        {"test_text.jsonl", "held-out captions -> image, with labels"},
        {"test_one_entity.jsonl", "held-out one-entity prompts, with labels"},
        {"test_two_entity.jsonl", "held-out two-entity prompts, with labels"},
        {"test_edit.jsonl", "edits into held-out scenes, with labels"}}}};
  io::write_text_atomically((root / "world.json").string(), description.dump(2) + "\n");
  return summary;
}

}  // namespace kosmosg::data
