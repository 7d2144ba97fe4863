#pragma once
// The shapes world: a synthetic data set in which "did the model reproduce the subject in the new
// context?" has an exact answer. Filled circles, squares and triangles of palette colours on plain
// palette backgrounds, their captions, the shapes alone on white (the entities), and manifests for
// every training stage, with some shape x colour x background combinations held out for testing.
#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace kosmosg::data {

// A named colour; shapes and backgrounds take theirs from one palette.
struct ShapesColor {
  std::string name;
  std::array<uint8_t, 3> rgb;
};

// The colours the world can use, by name: red, green, blue, yellow, purple, orange, cyan.
// White is not among them: it is the entity images' background.
const std::vector<ShapesColor>& shapes_builtin_colors();
// The entity images' background.
const ShapesColor& shapes_entity_background();

enum class ShapeKind { Circle, Square, Triangle };
const char* shape_kind_name(ShapeKind kind);  // "circle", "square", "triangle"
// The kind called `name`; an Error lists the known names otherwise.
ShapeKind parse_shape_kind(const std::string& name);

// One filled shape, in pixels: the box [cx - half, cx + half] x [cy - half, cy + half] bounds it
// (a circle of radius `half`, an axis-aligned square, an upward triangle with base 2*half).
struct Shape {
  ShapeKind kind = ShapeKind::Circle;
  int color = 0;  // palette index
  double cx = 0, cy = 0, half = 0;
};

// One or two shapes on a plain background; two shapes stand side by side, first on the left.
struct Scene {
  int background = 0;  // palette index
  std::vector<Shape> shapes;
};

// A shape of some colour on some background: the unit the held-out split is made of.
struct ShapeCombination {
  ShapeKind kind = ShapeKind::Circle;
  int color = 0, background = 0;  // palette indices
  bool operator==(const ShapeCombination& o) const {
    return kind == o.kind && color == o.color && background == o.background;
  }
};

// The palette, kinds, image size and held-out combinations of a world (its world.json).
struct ShapesWorld {
  std::vector<ShapesColor> palette;
  std::vector<ShapeKind> kinds;
  int64_t image_size = 64;
  std::vector<ShapeCombination> held_out;

  // A world of the named builtin colours (at least 3, no repeats) and kinds, holding out
  // `held_out` combinations (shapes_held_out). Errors name the option that is wrong.
  static ShapesWorld create(const std::vector<std::string>& colors, const std::vector<std::string>& kinds,
                            int64_t image_size, int64_t held_out);
  // Reads DIR/world.json as write_shapes_world wrote it.
  static ShapesWorld load(const std::string& dir);

  // The palette index of colour `name`; an Error lists the palette otherwise.
  int color_index(const std::string& name) const;
  // True when any shape of `scene` forms a held-out combination with its background.
  bool holds_out(const Scene& scene) const;
  // "a red circle".
  std::string words(const Shape& shape) const;
  // "a red circle on a blue background", "a red circle next to a green square on a blue background".
  std::string caption(const Scene& scene) const;
};

// The held-out combinations of a world: in rounds r = 0, 1, ..., the k-th kind (in the given order)
// in colour (k + 2r) on background (k + 2r + 1), palette indices modulo the palette size, skipping
// any that would leave a kind-colour, kind-background or colour-background pair without a
// combination to train on, until `count` are chosen or no candidate is left. With the default
// palette (red, green, blue, yellow) and kinds (circle, square, triangle) and count 6: a red circle
// on green, a green square on blue, a blue triangle on yellow, a blue circle on yellow, a yellow
// square on red, a red triangle on green.
std::vector<ShapeCombination> shapes_held_out(size_t palette_size, const std::vector<ShapeKind>& kinds,
                                              int64_t count);

// Draws `scene` as uint8 [S, S, 3] RGB, S = world.image_size (anti-aliased edges).
at::Tensor draw_shapes_scene(const ShapesWorld& world, const Scene& scene);
// The shape alone, centred on white, at the world's image size.
at::Tensor draw_shapes_entity(const ShapesWorld& world, ShapeKind kind, int color);

// What `kosmosg data shapes` writes.
struct ShapesOptions {
  std::string out_dir;
  int64_t count = 2000;       // training scenes
  int64_t test_count = 60;    // scenes of each test split (one entity, two entities, editing)
  uint64_t seed = 0;
  int64_t image_size = 64;
  std::vector<std::string> colors = {"red", "green", "blue", "yellow"};
  std::vector<std::string> kinds = {"circle", "square", "triangle"};
  double two_entity_fraction = 0.3;  // share of training scenes with two shapes
  int64_t held_out = 6;
  int64_t threads = 8;               // images drawn and written at once (writing waits on fsync)
  bool quiet = false;                // no progress output
};

// Counts of what write_shapes_world wrote (lines per manifest, image files).
struct ShapesSummary {
  int64_t train_scenes = 0, one_entity = 0, two_entity = 0, edit = 0, images = 0;
  int64_t test_text = 0, test_one_entity = 0, test_two_entity = 0, test_edit = 0;
};

// Generates the world into options.out_dir, the same files for the same options:
//   world.json                       palette (names, RGB), kinds, size, seed, counts, held-out list
//   entities/<color>_<kind>.png      each shape alone, centred on white
//   train/<n>.png, train/<n>_edit.png    training scenes and their re-coloured-background versions
//   test/{one,two,edit}_<n>[_source].png held-out scenes
//   captions.jsonl        {"text": caption}                              (lm, align)
//   text_to_image.jsonl   {"prompt": caption, "target": scene}           (align, instruct, vae, t2i)
//   interleaved.jsonl     "<i> a red circle on a blue background" + scene  (lm)
//   entities.jsonl        "<i> is a red circle" + entity, one per kind and colour (lm, its own source
//                         so that a mix can weight 12 lines against thousands)
//   one_entity.jsonl      "<i> on a green background" + entity -> scene  (lm, instruct)
//   two_entity.jsonl      "<i> next to <i> on a yellow background" + entities -> scene
//   edit.jsonl            "<i> make the background red" + scene -> re-coloured scene
//   test_{text,one_entity,two_entity,edit}.jsonl  the same forms for held-out targets, each line
//                         with "labels": {background, shapes: [{kind, color}], words, ...}
// No training line shows a held-out combination; every test target holds one. Images are written
// first, manifests and world.json last and atomically.
ShapesSummary write_shapes_world(const ShapesOptions& options);

}  // namespace kosmosg::data
