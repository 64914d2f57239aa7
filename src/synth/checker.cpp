// check_image(): finds the shapes a caption names in a picture (see
// synth_world.h). Every pixel gets the palette colour nearest to it (or none
// when it is far from all of them); each named shape is the largest
// 4-connected region of its colour; a region much smaller than its convex
// hull is a star (solidity ~0.47 for the renders, still below 0.8 when a
// decoder rounds its points), the others are told apart by how much of their
// bounding box they fill (square ~1.0, circle ~0.79, triangle ~0.5).

#include <algorithm>
#include <cmath>
#include <sstream>

#include "sdgen/error.h"
#include "synth/synth_world.h"

namespace sdgen::synth {

namespace {

constexpr std::array<Colour, 9> kPalette = {Colour::kRed,    Colour::kGreen,  Colour::kBlue,
                                            Colour::kYellow, Colour::kPurple, Colour::kOrange,
                                            Colour::kWhite,  Colour::kBlack,  Colour::kGray};
// A pixel farther than this (RGB distance) from every palette colour is unlabelled.
constexpr int kMaxDistance = 90;
constexpr uint8_t kNone = 255;

struct Region {
  int64_t area = 0;
  int x0 = 0, x1 = 0, y0 = 0, y1 = 0;
  int start = 0;  // a pixel of the region
};

// Visits the 4-connected region of `label` around `start` (marking `seen`).
template <typename Visit>
void flood_fill(const std::vector<uint8_t>& labels, int w, int h, uint8_t label, int start,
                std::vector<uint8_t>& seen, Visit&& visit) {
  std::vector<int> stack{start};
  seen[start] = 1;
  while (!stack.empty()) {
    const int i = stack.back();
    stack.pop_back();
    const int x = i % w, y = i / w;
    visit(x, y);
    const int next[4] = {x > 0 ? i - 1 : -1, x + 1 < w ? i + 1 : -1, y > 0 ? i - w : -1,
                         y + 1 < h ? i + w : -1};
    for (int j : next) {
      if (j >= 0 && !seen[j] && labels[j] == label) {
        seen[j] = 1;
        stack.push_back(j);
      }
    }
  }
}

// Largest 4-connected region of `label` and the area of the second largest.
std::pair<Region, int64_t> largest_regions(const std::vector<uint8_t>& labels, int w, int h,
                                           uint8_t label) {
  std::vector<uint8_t> seen(labels.size(), 0);
  Region best;
  int64_t second = 0;
  for (int start = 0; start < w * h; ++start) {
    if (labels[start] != label || seen[start]) continue;
    Region region{0, w, -1, h, -1, start};
    flood_fill(labels, w, h, label, start, seen, [&](int x, int y) {
      ++region.area;
      region.x0 = std::min(region.x0, x);
      region.x1 = std::max(region.x1, x);
      region.y0 = std::min(region.y0, y);
      region.y1 = std::max(region.y1, y);
    });
    if (region.area > best.area) {
      second = best.area;
      best = region;
    } else {
      second = std::max(second, region.area);
    }
  }
  return {best, second};
}

// Area of the convex hull of a region (pixels as unit squares): its rows'
// end corners through Andrew's monotone chain, then the shoelace formula.
double hull_area(const std::vector<uint8_t>& labels, int w, int h, uint8_t label, int start) {
  std::vector<int> row_min(h, w), row_max(h, -1);
  std::vector<uint8_t> seen(labels.size(), 0);
  flood_fill(labels, w, h, label, start, seen, [&](int x, int y) {
    row_min[y] = std::min(row_min[y], x);
    row_max[y] = std::max(row_max[y], x);
  });
  std::vector<std::pair<int64_t, int64_t>> points;
  for (int y = 0; y < h; ++y) {
    if (row_max[y] < 0) continue;
    for (int64_t x : {static_cast<int64_t>(row_min[y]), static_cast<int64_t>(row_max[y]) + 1}) {
      points.emplace_back(x, y);
      points.emplace_back(x, y + 1);
    }
  }
  std::sort(points.begin(), points.end());
  points.erase(std::unique(points.begin(), points.end()), points.end());
  if (points.size() < 3) return 0;
  auto cross = [](const auto& o, const auto& a, const auto& b) {
    return (a.first - o.first) * (b.second - o.second) -
           (a.second - o.second) * (b.first - o.first);
  };
  std::vector<std::pair<int64_t, int64_t>> hull(2 * points.size());
  size_t k = 0;
  for (size_t i = 0; i < points.size(); ++i) {  // lower hull
    while (k >= 2 && cross(hull[k - 2], hull[k - 1], points[i]) <= 0) --k;
    hull[k++] = points[i];
  }
  for (size_t i = points.size() - 1, lower = k + 1; i-- > 0;) {  // upper hull
    while (k >= lower && cross(hull[k - 2], hull[k - 1], points[i]) <= 0) --k;
    hull[k++] = points[i];
  }
  hull.resize(k - 1);
  int64_t twice = 0;
  for (size_t i = 0; i < hull.size(); ++i) {
    const auto& a = hull[i];
    const auto& b = hull[(i + 1) % hull.size()];
    twice += a.first * b.second - b.first * a.second;
  }
  return std::abs(static_cast<double>(twice)) / 2;
}

Shape shape_from_measures(double fill, double solidity) {
  if (solidity < 0.8) return Shape::kStar;
  if (fill < 0.64) return Shape::kTriangle;
  if (fill < 0.89) return Shape::kCircle;
  return Shape::kSquare;
}

std::string describe(const ObjectSpec& object) {
  return std::string(colour_name(object.colour)) + " " + shape_name(object.shape);
}

// Where the first found shape lies from the second, along the axis of their
// larger offset, for a relation failure's reason ("it is below it", or on top
// of it when their centroids are closer than 5% of the picture).
std::string where_first_is(const ObjectFinding& a, const ObjectFinding& b) {
  const double dx = a.cx - b.cx, dy = a.cy - b.cy;
  if (std::hypot(dx, dy) < 0.05) return "it is on top of it";
  if (std::abs(dy) >= std::abs(dx)) return dy < 0 ? "it is above it" : "it is below it";
  return dx < 0 ? "it is left of it" : "it is right of it";
}

std::string fixed2(double value) {
  std::ostringstream out;
  out.precision(2);
  out << std::fixed << value;
  return out.str();
}

}  // namespace

const char* check_failure_name(CheckFailure failure) {
  switch (failure) {
    case CheckFailure::kNone:
      return "";
    case CheckFailure::kBackground:
      return "background";
    case CheckFailure::kColourMissing:
      return "colour missing";
    case CheckFailure::kTwoOfAColour:
      return "two of a colour";
    case CheckFailure::kShape:
      return "shape";
    case CheckFailure::kSize:
      return "size";
    case CheckFailure::kPlace:
      return "place";
    case CheckFailure::kRelation:
      return "relation";
  }
  return "";
}

CheckResult check_image(const SceneSpec& spec, const torch::Tensor& image) {
  if (image.dim() != 3 || image.size(2) != 3 || image.scalar_type() != torch::kUInt8) {
    throw Error("synth: check_image wants a uint8 [H, W, 3] image");
  }
  const auto pixels = image.contiguous();
  const int h = static_cast<int>(pixels.size(0)), w = static_cast<int>(pixels.size(1));
  const auto* px = pixels.data_ptr<uint8_t>();
  std::vector<uint8_t> labels(static_cast<size_t>(w) * h, kNone);
  std::array<int64_t, kPalette.size()> counts{};
  for (int i = 0; i < w * h; ++i) {
    int best = -1, best_d2 = kMaxDistance * kMaxDistance;
    for (size_t c = 0; c < kPalette.size(); ++c) {
      const auto rgb = colour_rgb(kPalette[c]);
      int d2 = 0;
      for (int k = 0; k < 3; ++k) {
        const int d = static_cast<int>(px[i * 3 + k]) - rgb[k];
        d2 += d * d;
      }
      if (d2 < best_d2) best_d2 = d2, best = static_cast<int>(c);
    }
    if (best >= 0) {
      labels[i] = static_cast<uint8_t>(best);
      ++counts[best];
    }
  }

  CheckResult result;
  auto fail = [&](CheckFailure failure, const std::string& reason) {
    result.pass = false;
    result.failure = failure;
    result.reason = reason;
    return result;
  };
  const auto background = spec.background_colour();
  const auto bg_index = static_cast<size_t>(
      std::find(kPalette.begin(), kPalette.end(), background) - kPalette.begin());
  if (counts[bg_index] < static_cast<int64_t>(0.4 * w * h)) {
    return fail(CheckFailure::kBackground,
                std::string("background is not mostly ") + colour_name(background));
  }
  // A shape must cover at least a third of the area a small render has.
  const double small_area = 0.785 * std::pow(2 * kSmallRadius, 2) * w * h;
  for (const auto& object : spec.objects) {
    const auto label = static_cast<uint8_t>(
        std::find(kPalette.begin(), kPalette.end(), object.colour) - kPalette.begin());
    const auto [region, second] = largest_regions(labels, w, h, label);
    ObjectFinding found;
    if (region.area < small_area / 3) {
      result.objects.push_back(found);
      return fail(CheckFailure::kColourMissing,
                  "no " + std::string(colour_name(object.colour)) + " shape");
    }
    found.found = true;
    found.area = region.area;
    const int bw = region.x1 - region.x0 + 1, bh = region.y1 - region.y0 + 1;
    found.fill = static_cast<double>(region.area) / (static_cast<double>(bw) * bh);
    const double hull = hull_area(labels, w, h, label, region.start);
    found.solidity = hull > 0 ? static_cast<double>(region.area) / hull : 0;
    found.shape = shape_from_measures(found.fill, found.solidity);
    found.cx = (region.x0 + region.x1 + 1) / 2.0 / w;
    found.cy = (region.y0 + region.y1 + 1) / 2.0 / h;
    found.extent = static_cast<double>(bh) / h;
    result.objects.push_back(found);
    if (second > region.area / 2) {
      return fail(CheckFailure::kTwoOfAColour,
                  "two " + std::string(colour_name(object.colour)) + " shapes");
    }
    if (found.shape != object.shape) {
      return fail(CheckFailure::kShape,
                  describe(object) + " looks like a " + shape_name(found.shape) + " (fill " +
                      fixed2(found.fill) + ", solidity " + fixed2(found.solidity) + ")");
    }
    // Renders: small ~0.18 of the height, large ~0.30.
    if (object.size == Size::kSmall && found.extent > 0.24) {
      return fail(CheckFailure::kSize,
                  describe(object) + " is not small (extent " + fixed2(found.extent) + ")");
    }
    if (object.size == Size::kLarge && found.extent < 0.24) {
      return fail(CheckFailure::kSize,
                  describe(object) + " is not large (extent " + fixed2(found.extent) + ")");
    }
  }
  if (spec.objects.size() == 1) {
    const auto& f = result.objects[0];
    bool ok = true;
    switch (spec.place) {
      case Place::kLeft:
        ok = f.cx < 0.4;
        break;
      case Place::kRight:
        ok = f.cx > 0.6;
        break;
      case Place::kTop:
        ok = f.cy < 0.4;
        break;
      case Place::kBottom:
        ok = f.cy > 0.6;
        break;
      case Place::kCenter:
        ok = std::abs(f.cx - 0.5) < 0.12 && std::abs(f.cy - 0.5) < 0.12;
        break;
      case Place::kAny:
        break;
    }
    if (!ok)
      return fail(CheckFailure::kPlace,
                  describe(spec.objects[0]) + " is not where the caption says");
  } else {
    const auto& a = result.objects[0];
    const auto& b = result.objects[1];
    const auto [along, across] = relation_offset(spec.relation, a.cx, a.cy, b.cx, b.cy);
    if (along < 0.05 || std::abs(across) > along) {
      return fail(CheckFailure::kRelation, "the " + describe(spec.objects[0]) + " is not " +
                                               (spec.relation == Relation::kAbove    ? "above"
                                                : spec.relation == Relation::kBelow  ? "below"
                                                : spec.relation == Relation::kLeftOf ? "left of"
                                                                                     : "right of") +
                                               " the " + describe(spec.objects[1]) + ": " +
                                               where_first_is(a, b));
    }
  }
  result.pass = true;
  return result;
}

}  // namespace sdgen::synth
