#include <chrono>
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "kosmosg/data/shapes.h"

namespace kosmosg::cli {
namespace {

int run_shapes(const data::ShapesOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  const auto s = data::write_shapes_world(o);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("wrote %s in %.1f s: %lld images\n", o.out_dir.c_str(), seconds, static_cast<long long>(s.images));
  std::printf("training: %lld scenes; one_entity.jsonl %lld, two_entity.jsonl %lld, edit.jsonl %lld lines\n",
              static_cast<long long>(s.train_scenes), static_cast<long long>(s.one_entity),
              static_cast<long long>(s.two_entity), static_cast<long long>(s.edit));
  std::printf("held out: test_text.jsonl %lld, test_one_entity.jsonl %lld, test_two_entity.jsonl %lld, "
              "test_edit.jsonl %lld lines (combinations in world.json)\n",
              static_cast<long long>(s.test_text), static_cast<long long>(s.test_one_entity),
              static_cast<long long>(s.test_two_entity), static_cast<long long>(s.test_edit));
  return 0;
}

}  // namespace

Command add_data(CLI::App& app) {
  auto o = std::make_shared<data::ShapesOptions>();
  auto* sub = app.add_subcommand("data", "Make data sets");
  sub->require_subcommand(1);
  auto* shapes = sub->add_subcommand(
      "shapes",
      "The shapes world: coloured circles, squares and triangles on plain backgrounds, their captions, entity "
      "images (the shape alone on white) and JSONL manifests for every training stage, with some shape x colour x "
      "background combinations held out as the test split (test_*.jsonl, with ground-truth labels for "
      "`kosmosg eval shapes`)");
  shapes->add_option("--out", o->out_dir, "Output folder")->required();
  shapes->add_option("--count", o->count, "Training scenes")->capture_default_str();
  shapes->add_option("--test-count", o->test_count, "Scenes of each test split (one entity, two entities, editing)")
      ->capture_default_str();
  shapes->add_option("--seed", o->seed, "Seed: the same seed and options give the same files")->capture_default_str();
  shapes->add_option("--size", o->image_size, "Image side in pixels")->capture_default_str();
  shapes->add_option("--colors", o->colors, "Palette of shapes and backgrounds, at least 3 of red, green, blue, "
                                            "yellow, purple, orange, cyan")
      ->delimiter(',')
      ->capture_default_str();
  shapes->add_option("--shapes", o->kinds, "Shape kinds: circle, square, triangle")
      ->delimiter(',')
      ->capture_default_str();
  shapes->add_option("--two-entity-fraction", o->two_entity_fraction, "Share of training scenes with two shapes")
      ->capture_default_str();
  shapes->add_option("--held-out", o->held_out, "Shape x colour x background combinations held out for testing")
      ->capture_default_str();
  shapes->add_option("--threads", o->threads, "Images drawn and written at once")->capture_default_str();
  shapes->add_flag("--quiet", o->quiet, "No progress lines");
  return {sub, [o] { return run_shapes(*o); }};
}

}  // namespace kosmosg::cli
