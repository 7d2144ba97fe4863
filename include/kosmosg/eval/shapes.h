#pragma once
// The shapes world's scorer: reads the background colour and the shapes of an image by plain
// image analysis (no model), and scores generated images against the ground truth of a world's
// held-out prompts — text fidelity, subject fidelity and editing success for text-only,
// one-entity and two-entity prompts.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kosmosg/data/shapes.h"

namespace kosmosg::eval {

// A shape found in an image.
struct FoundShape {
  std::string kind;         // circle, square or triangle
  std::string color;        // a palette name, or white, black or grey (never a right answer)
  double area = 0;          // share of the image
  double confidence = 0;    // 0-1: how much nearer the kind's geometry is than the next kind's
};

// What an image shows, as the scorer reads it.
struct ShapesReading {
  std::string background;        // the commonest colour of the border, named as FoundShape::color
  double background_share = 0;   // share of the border pixels of that colour
  std::vector<FoundShape> shapes;  // largest first; empty when none was found
};

// Reads a uint8 [H, W, 3] RGB image of any size: resized to 128x128, median-filtered, every pixel
// quantised to the nearest of the world's palette, white, black and grey; the background is the
// commonest colour of the border; the other pixels form regions (morphologically opened, split by
// colour where two palette colours meet), and each region of at least 0.4% of the image that fills
// most of its outline is a shape: its colour the nearest palette colour, white or black to its
// median, its kind from how it fills its enclosing circle, rectangle and triangle (circle 1,
// 0.785, 0.605; square 0.637, 1, 0.5; triangle 0.413, 0.5, 1).
ShapesReading read_shapes_image(const at::Tensor& hwc_u8, const data::ShapesWorld& world);

// One held-out prompt of a world's test manifests with its ground truth.
struct ShapesCase {
  std::string split;   // text, one_entity, two_entity or edit (the test_<split>.jsonl it came from)
  int64_t index = 0;   // its line in that manifest, from 0
  std::string prompt;  // as Kosmos-G takes it, "<i> on a green background"
  std::string words;   // each <i> described in words, "a red circle on a green background"
  std::vector<std::string> images;  // one path per <i>
  std::string target;               // the ground-truth image
  std::string background;           // what the prompt asks for
  std::string source_background;    // edit only: the input's background
  std::vector<std::pair<std::string, std::string>> shapes;  // (kind, colour) of each entity
};

// The cases of DIR/test_{text,one_entity,two_entity,edit}.jsonl in that order, the first `limit`
// lines of each when given. Errors name the manifest line that lacks its labels.
std::vector<ShapesCase> read_shapes_cases(const std::string& world_dir, std::optional<int64_t> limit = {});

// How one image fares: background as asked (text), the entities' kinds and colours among the
// largest shapes (subject), and for edits both at once (edit).
struct ShapesVerdict {
  bool text = false, subject = false, edit = false;
};
ShapesVerdict judge_shapes(const ShapesCase& c, const ShapesReading& reading);

// Right answers out of cases.
struct ShapesRate {
  int64_t right = 0, total = 0;
  double rate() const { return total ? static_cast<double>(right) / static_cast<double>(total) : 0.0; }
};

// The three measures for one kind of prompt; edits count by the entities of their input.
struct ShapesRow {
  ShapesRate text, subject, edit;
};

// The table: text-only (the caption alone), one-entity and two-entity prompts.
struct ShapesScores {
  ShapesRow text_only, one_entity, two_entity;
};

// One scored image.
struct ShapesCaseScore {
  ShapesCase expected;
  std::string image;  // where the scored image is (empty when it was not written)
  ShapesReading found;
  ShapesVerdict verdict;
};

// Gives the image to score for a case (generated, read from a folder, or the ground truth) and the
// path it lies at, or "" when it is kept in memory only.
using ShapesImageFn = std::function<std::pair<at::Tensor, std::string>(const ShapesCase&)>;

// Scores `cases` with the images `image_for` gives, one after the other.
std::vector<ShapesCaseScore> score_shapes(const std::vector<ShapesCase>& cases, const data::ShapesWorld& world,
                                          const ShapesImageFn& image_for, bool show_progress = false);
// Gives a model's condition for a case ([1, L, D], what the UNet would read), or the text
// encoder's condition for a caption.
using ShapesConditionFn = std::function<at::Tensor(const ShapesCase&)>;
using CaptionConditionFn = std::function<at::Tensor(const std::string&)>;

// Scores the conditions themselves, without sampling: each case reads as the scene whose caption's
// text condition is nearest (mean squared difference) to the case's condition, among every
// background and every kind and colour of each entity (never the background's colour). Separates
// what the conditions carry from what the decoder draws; FoundShape::confidence is how much nearer
// the nearest caption is than the next, relative to the next.
std::vector<ShapesCaseScore> score_shapes_conditions(const std::vector<ShapesCase>& cases,
                                                     const data::ShapesWorld& world,
                                                     const ShapesConditionFn& condition_for,
                                                     const CaptionConditionFn& caption_condition,
                                                     bool show_progress = false);
// Sums verdicts into the table.
ShapesScores tally_shapes(const std::vector<ShapesCaseScore>& scored);

// The table as text: one line per kind of prompt, the three measures as percentages with counts.
std::string format_shapes_table(const std::string& title, const ShapesScores& scores);
// The table, the same per combination of entities and background, and every case as JSON text
// (for a report file).
std::string shapes_report_json(const std::vector<std::pair<std::string, std::vector<ShapesCaseScore>>>& systems,
                               const std::string& settings_json);

}  // namespace kosmosg::eval
