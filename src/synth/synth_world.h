#pragma once

// The synthetic world sdgen's own default model is trained on: one or two flat
// shapes (circle, square, triangle, star) in named colours, sizes and
// positions on a plain background, each scene with a caption from a small
// grammar ("a small red circle above a blue square on a white background").
//
// The same grammar is parsed back into a SceneSpec, and check_image() finds
// the named shapes in a picture (colour segmentation + shape measures), which
// is how the trained model is judged (tests/test_synth_world.cpp,
// tools/sdgen_train.cpp `eval`).

#include <array>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace sdgen::synth {

enum class Shape { kCircle, kSquare, kTriangle, kStar };
enum class Colour { kRed, kGreen, kBlue, kYellow, kPurple, kOrange, kWhite, kBlack, kGray };
enum class Size { kAny, kSmall, kLarge };
// Where a lone shape sits; kAny when the caption does not say.
enum class Place { kAny, kLeft, kRight, kTop, kBottom, kCenter };
// How the first shape of a pair sits relative to the second.
enum class Relation { kAbove, kBelow, kLeftOf, kRightOf };

constexpr std::array<Shape, 4> kShapes = {Shape::kCircle, Shape::kSquare, Shape::kTriangle,
                                          Shape::kStar};
// Colours a shape can have, and colours a background can have.
constexpr std::array<Colour, 6> kShapeColours = {Colour::kRed,    Colour::kGreen,  Colour::kBlue,
                                                 Colour::kYellow, Colour::kPurple, Colour::kOrange};
constexpr std::array<Colour, 3> kBackgrounds = {Colour::kWhite, Colour::kBlack, Colour::kGray};

// How far shape a (centre ax, ay) is from shape b along `relation`'s axis
// (positive when the relation holds) and across it. Used to place scenes and
// to check pictures, in any unit.
struct RelationOffset {
  double along = 0;
  double across = 0;
};
RelationOffset relation_offset(Relation relation, double ax, double ay, double bx, double by);

const char* shape_name(Shape shape);
const char* colour_name(Colour colour);
std::array<uint8_t, 3> colour_rgb(Colour colour);

struct ObjectSpec {
  Shape shape = Shape::kCircle;
  Colour colour = Colour::kRed;
  Size size = Size::kAny;
};

// What a caption asks for. One object (with an optional place) or two objects
// with the relation of the first to the second.
struct SceneSpec {
  std::vector<ObjectSpec> objects;  // 1 or 2
  Place place = Place::kAny;        // one object only
  Relation relation = Relation::kAbove;
  std::optional<Colour> background;  // unset: white

  std::string caption() const;
  Colour background_colour() const { return background.value_or(Colour::kWhite); }
};

// Parses a caption of the grammar (case and extra spaces ignored); nullopt when
// the text is not one (then the checker has nothing to check).
std::optional<SceneSpec> parse_caption(const std::string& text);

// A shape placed on the canvas, in pixels of a `canvas` x `canvas` image.
struct PlacedObject {
  ObjectSpec spec;  // size resolved to kSmall or kLarge
  double cx = 0, cy = 0, radius = 0;
};

struct Scene {
  SceneSpec spec;  // as captioned (sizes may be kAny)
  std::vector<PlacedObject> objects;
  int canvas = 512;
};

// Radii (fraction of the canvas) of the two sizes.
constexpr double kSmallRadius = 0.09;
constexpr double kLargeRadius = 0.15;

// Where the two shapes of a pair may sit.
enum class PairLayout {
  // Anywhere, as long as the relation holds with a clear margin.
  kFree,
  // As kFree, and the pair straddles the canvas centre along the relation's
  // axis (midpoint within 4% of it) and is roughly centred across it (within
  // 15%): "a above b" puts a in the top half and b in the bottom half, so a
  // small UNet can bind each named colour to a half of the picture rather
  // than to "the other shape". The default model's second UNet stage is
  // trained on such scenes (tools/sdgen_train.cpp --refine-steps; its effect
  // is in models/README.md).
  kHalves,
};

// A random scene satisfying `spec` (sizes left kAny are drawn; positions drawn
// so that place/relation hold with a clear margin and shapes do not touch).
Scene place_scene(const SceneSpec& spec, int canvas, std::mt19937_64& rng,
                  PairLayout layout = PairLayout::kFree);
// A random caption of the grammar: 40% one shape, 60% two; sizes, places and
// backgrounds sometimes named. Never two shapes of the same colour, never a
// shape in the background's colour.
SceneSpec random_spec(std::mt19937_64& rng);

// The same two-shape scene said the other way round: "a above b" as "b below
// a" (objects swapped, relation inverted, sizes and background kept). Throws
// unless `spec` has two objects.
SceneSpec reversed_pair(const SceneSpec& spec);

// Pair captions whose (colour, shape, relation, colour, shape) combination is
// kept out of training; the held-out evaluation prompts come from them.
bool is_held_out(const SceneSpec& spec);
// `count` distinct held-out two-shape prompts (deterministic; fewer when there
// are fewer). With `reversed_too`, only those whose reversed caption
// (reversed_pair: the same picture said the other way round) is held out as
// well, so that no training caption describes their picture either way.
std::vector<SceneSpec> held_out_specs(int count, bool reversed_too = false);

// Renders `scene` as uint8 [canvas, canvas, 3] (RGB, 4x4 supersampled edges).
torch::Tensor render(const Scene& scene);

struct ObjectFinding {
  bool found = false;
  Shape shape = Shape::kCircle;  // what the measures say
  double cx = 0, cy = 0;         // centroid, fraction of the width/height
  double extent = 0;             // bounding-box height, fraction of the height
  double fill = 0;               // area / bounding-box area
  double solidity = 0;           // area / convex-hull area (a star's is ~0.47)
  int64_t area = 0;
};

// The first test a picture failed, in the order the checker tries them.
enum class CheckFailure {
  kNone,
  kBackground,     // the background is not mostly the named colour
  kColourMissing,  // no region of a named shape's colour
  kTwoOfAColour,   // a second region of that colour half as large or more
  kShape,          // the region's measures say another shape
  kSize,           // small/large not as named
  kPlace,          // a lone shape not where the caption says
  kRelation,       // the pair not in the named relation
};
// kRelation is the last kind.
inline constexpr int kCheckFailureKinds = static_cast<int>(CheckFailure::kRelation) + 1;
// "background", "colour missing", "two of a colour", "shape", "size", "place",
// "relation" ("" for kNone).
const char* check_failure_name(CheckFailure failure);

struct CheckResult {
  bool pass = false;
  CheckFailure failure = CheckFailure::kNone;
  std::string reason;  // why it failed ("" when it passed)
  std::vector<ObjectFinding> objects;
};

// Checks a uint8 [H, W, 3] image against `spec`: each named shape is found as
// the largest region of its colour, with the named shape, size and place, and
// the pair in the named relation; the background is the named colour.
CheckResult check_image(const SceneSpec& spec, const torch::Tensor& image);

}  // namespace sdgen::synth
