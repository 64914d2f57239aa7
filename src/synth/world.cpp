// Scenes, captions and rendering of the synthetic world (see synth_world.h).

#include <algorithm>
#include <cmath>
#include <sstream>
#include <utility>

#include "sdgen/error.h"
#include "synth/synth_world.h"

namespace sdgen::synth {

namespace {

constexpr double kPi = 3.14159265358979323846;

// Picks uniformly from a small array.
template <typename T, size_t N>
T pick(const std::array<T, N>& items, std::mt19937_64& rng) {
  return items[std::uniform_int_distribution<size_t>(0, N - 1)(rng)];
}

double uniform(std::mt19937_64& rng, double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}

bool chance(std::mt19937_64& rng, double p) { return uniform(rng, 0.0, 1.0) < p; }

const char* relation_phrase(Relation relation) {
  switch (relation) {
    case Relation::kAbove:
      return "above";
    case Relation::kBelow:
      return "below";
    case Relation::kLeftOf:
      return "to the left of";
    case Relation::kRightOf:
      return "to the right of";
  }
  return "";
}

const char* place_phrase(Place place) {
  switch (place) {
    case Place::kLeft:
      return "on the left";
    case Place::kRight:
      return "on the right";
    case Place::kTop:
      return "at the top";
    case Place::kBottom:
      return "at the bottom";
    case Place::kCenter:
      return "in the center";
    case Place::kAny:
      break;
  }
  return "";
}

std::string object_phrase(const ObjectSpec& object) {
  std::string words;
  if (object.size == Size::kSmall) words += "small ";
  if (object.size == Size::kLarge) words += "large ";
  words += colour_name(object.colour);
  words += " ";
  words += shape_name(object.shape);
  const bool vowel =
      words[0] == 'a' || words[0] == 'e' || words[0] == 'i' || words[0] == 'o' || words[0] == 'u';
  return (vowel ? "an " : "a ") + words;
}

// Index of a two-shape combination, for the held-out rule.
int pair_index(const SceneSpec& spec) {
  const auto& a = spec.objects[0];
  const auto& b = spec.objects[1];
  return (((static_cast<int>(a.colour) * 4 + static_cast<int>(a.shape)) * 4 +
           static_cast<int>(spec.relation)) *
              6 +
          static_cast<int>(b.colour)) *
             4 +
         static_cast<int>(b.shape);
}

double radius_of(Size size, int canvas) {
  return (size == Size::kLarge ? kLargeRadius : kSmallRadius) * canvas;
}

// Whether (x, y) lies inside `object` (pixel units). Every shape's bounding
// box is about 2r x 2r around (cx, cy).
bool inside(const PlacedObject& object, double x, double y) {
  const double r = object.radius;
  const double dx = x - object.cx, dy = y - object.cy;
  switch (object.spec.shape) {
    case Shape::kCircle:
      return dx * dx + dy * dy <= r * r;
    case Shape::kSquare:
      return std::abs(dx) <= 0.88 * r && std::abs(dy) <= 0.88 * r;
    case Shape::kTriangle: {
      // Apex up, base 2r wide, height 1.8r, box centred on (cx, cy).
      const double h = 1.8 * r, top = -0.5 * h;
      if (dy < top || dy > 0.5 * h) return false;
      return std::abs(dx) <= r * (dy - top) / h;
    }
    case Shape::kStar: {
      // Five points up, inner radius 0.382 of the outer (a regular star),
      // shifted so that its bounding box is centred on (cx, cy).
      const double outer = 1.1 * r, inner = 0.382 * outer;
      const double oy = dy - 0.5 * outer * (1.0 - std::cos(kPi / 5));
      bool in = false;
      double px = 0, py = 0;
      for (int i = 0; i <= 10; ++i) {
        const double rad = (i % 2 == 0) ? outer : inner;
        const double angle = -kPi / 2 + i * kPi / 5;
        const double vx = rad * std::cos(angle), vy = rad * std::sin(angle);
        if (i > 0 && ((vy > oy) != (py > oy)) && dx < (px - vx) * (oy - vy) / (py - vy) + vx) {
          in = !in;
        }
        px = vx;
        py = vy;
      }
      return in;
    }
  }
  return false;
}

}  // namespace

RelationOffset relation_offset(Relation relation, double ax, double ay, double bx, double by) {
  switch (relation) {
    case Relation::kAbove:
      return {by - ay, ax - bx};
    case Relation::kBelow:
      return {ay - by, ax - bx};
    case Relation::kLeftOf:
      return {bx - ax, ay - by};
    case Relation::kRightOf:
      return {ax - bx, ay - by};
  }
  return {};
}

const char* shape_name(Shape shape) {
  switch (shape) {
    case Shape::kCircle:
      return "circle";
    case Shape::kSquare:
      return "square";
    case Shape::kTriangle:
      return "triangle";
    case Shape::kStar:
      return "star";
  }
  return "";
}

const char* colour_name(Colour colour) {
  switch (colour) {
    case Colour::kRed:
      return "red";
    case Colour::kGreen:
      return "green";
    case Colour::kBlue:
      return "blue";
    case Colour::kYellow:
      return "yellow";
    case Colour::kPurple:
      return "purple";
    case Colour::kOrange:
      return "orange";
    case Colour::kWhite:
      return "white";
    case Colour::kBlack:
      return "black";
    case Colour::kGray:
      return "gray";
  }
  return "";
}

std::array<uint8_t, 3> colour_rgb(Colour colour) {
  switch (colour) {
    case Colour::kRed:
      return {220, 20, 20};
    case Colour::kGreen:
      return {20, 160, 40};
    case Colour::kBlue:
      return {30, 60, 220};
    case Colour::kYellow:
      return {245, 220, 30};
    case Colour::kPurple:
      return {140, 40, 180};
    case Colour::kOrange:
      return {250, 140, 0};
    case Colour::kWhite:
      return {245, 245, 245};
    case Colour::kBlack:
      return {20, 20, 20};
    case Colour::kGray:
      return {128, 128, 128};
  }
  return {0, 0, 0};
}

std::string SceneSpec::caption() const {
  if (objects.empty() || objects.size() > 2) throw Error("synth: a scene has one or two shapes");
  std::string text = object_phrase(objects[0]);
  if (objects.size() == 1) {
    if (place != Place::kAny) text += std::string(" ") + place_phrase(place);
  } else {
    text += std::string(" ") + relation_phrase(relation) + " " + object_phrase(objects[1]);
  }
  if (background) text += std::string(" on a ") + colour_name(*background) + " background";
  return text;
}

std::optional<SceneSpec> parse_caption(const std::string& text) {
  std::vector<std::string> words;
  {
    std::string lowered;
    for (unsigned char ch : text) lowered += static_cast<char>(std::tolower(ch));
    std::istringstream in(lowered);
    for (std::string word; in >> word;) words.push_back(word);
  }
  size_t at = 0;
  auto take = [&](const std::vector<std::string>& phrase) {
    if (at + phrase.size() > words.size()) return false;
    for (size_t i = 0; i < phrase.size(); ++i) {
      if (words[at + i] != phrase[i]) return false;
    }
    at += phrase.size();
    return true;
  };
  auto take_object = [&](ObjectSpec& object) {
    if (!take({"a"}) && !take({"an"})) return false;
    if (take({"small"}))
      object.size = Size::kSmall;
    else if (take({"large"}))
      object.size = Size::kLarge;
    bool coloured = false;
    for (Colour colour : kShapeColours) {
      if (take({colour_name(colour)})) {
        object.colour = colour;
        coloured = true;
        break;
      }
    }
    if (!coloured) return false;
    for (Shape shape : kShapes) {
      if (take({shape_name(shape)})) {
        object.shape = shape;
        return true;
      }
    }
    return false;
  };

  SceneSpec spec;
  ObjectSpec first;
  if (!take_object(first)) return std::nullopt;
  spec.objects.push_back(first);
  const std::vector<std::pair<std::vector<std::string>, Relation>> relations = {
      {{"above"}, Relation::kAbove},
      {{"below"}, Relation::kBelow},
      {{"to", "the", "left", "of"}, Relation::kLeftOf},
      {{"to", "the", "right", "of"}, Relation::kRightOf},
      {{"left", "of"}, Relation::kLeftOf},
      {{"right", "of"}, Relation::kRightOf}};
  bool paired = false;
  for (const auto& [phrase, relation] : relations) {
    if (take(phrase)) {
      ObjectSpec second;
      if (!take_object(second) || second.colour == first.colour) return std::nullopt;
      spec.objects.push_back(second);
      spec.relation = relation;
      paired = true;
      break;
    }
  }
  if (!paired) {
    const std::vector<std::pair<std::vector<std::string>, Place>> places = {
        {{"on", "the", "left"}, Place::kLeft},     {{"on", "the", "right"}, Place::kRight},
        {{"at", "the", "top"}, Place::kTop},       {{"at", "the", "bottom"}, Place::kBottom},
        {{"in", "the", "center"}, Place::kCenter}, {{"in", "the", "middle"}, Place::kCenter}};
    for (const auto& [phrase, place] : places) {
      if (take(phrase)) {
        spec.place = place;
        break;
      }
    }
  }
  if (take({"on", "a"}) || take({"on"})) {
    bool found = false;
    for (Colour colour : kBackgrounds) {
      if (take({colour_name(colour)})) {
        spec.background = colour;
        found = true;
        break;
      }
    }
    if (!found || !take({"background"})) return std::nullopt;
  }
  if (at != words.size()) return std::nullopt;
  return spec;
}

Scene place_scene(const SceneSpec& spec, int canvas, std::mt19937_64& rng, PairLayout layout) {
  if (spec.objects.empty() || spec.objects.size() > 2) {
    throw Error("synth: a scene has one or two shapes");
  }
  Scene scene;
  scene.spec = spec;
  scene.canvas = canvas;
  for (const auto& object : spec.objects) {
    PlacedObject placed;
    placed.spec = object;
    if (placed.spec.size == Size::kAny) {
      placed.spec.size = chance(rng, 0.5) ? Size::kSmall : Size::kLarge;
    }
    placed.radius = radius_of(placed.spec.size, canvas);
    scene.objects.push_back(placed);
  }
  const double margin = 0.03 * canvas;
  auto draw_centre = [&](PlacedObject& object) {
    const double lo = object.radius + margin, hi = canvas - object.radius - margin;
    object.cx = uniform(rng, lo, hi);
    object.cy = uniform(rng, lo, hi);
  };
  if (scene.objects.size() == 1) {
    auto& object = scene.objects[0];
    const double lo = object.radius + margin, hi = canvas - object.radius - margin;
    for (int attempt = 0; attempt < 1000; ++attempt) {
      draw_centre(object);
      const double x = object.cx / canvas, y = object.cy / canvas;
      bool ok = true;
      switch (spec.place) {
        case Place::kLeft:
          ok = x < 0.32;
          break;
        case Place::kRight:
          ok = x > 0.68;
          break;
        case Place::kTop:
          ok = y < 0.32;
          break;
        case Place::kBottom:
          ok = y > 0.68;
          break;
        case Place::kCenter:
          ok = std::abs(x - 0.5) < 0.06 && std::abs(y - 0.5) < 0.06;
          break;
        case Place::kAny:
          break;
      }
      if (ok) return scene;
    }
    object.cx = std::clamp(0.5 * canvas, lo, hi);
    object.cy = object.cx;
    return scene;
  }
  auto& a = scene.objects[0];
  auto& b = scene.objects[1];
  for (int attempt = 0; attempt < 100000; ++attempt) {
    draw_centre(a);
    draw_centre(b);
    const auto [along, across] = relation_offset(spec.relation, a.cx, a.cy, b.cx, b.cy);
    // Clearly separated along the axis, mostly aligned across it.
    if (along < a.radius + b.radius + 0.05 * canvas || std::abs(across) > 0.5 * along) continue;
    if (layout == PairLayout::kHalves) {
      const bool vertical = spec.relation == Relation::kAbove || spec.relation == Relation::kBelow;
      const double mid_x = 0.5 * (a.cx + b.cx) / canvas - 0.5;
      const double mid_y = 0.5 * (a.cy + b.cy) / canvas - 0.5;
      const double mid_along = vertical ? mid_y : mid_x;
      const double mid_across = vertical ? mid_x : mid_y;
      if (std::abs(mid_along) > 0.04 || std::abs(mid_across) > 0.15) continue;
    }
    return scene;
  }
  throw Error("synth: could not place the shapes of \"" + spec.caption() + "\"");
}

SceneSpec random_spec(std::mt19937_64& rng) {
  for (;;) {
    SceneSpec spec;
    const int count = chance(rng, 0.4) ? 1 : 2;
    for (int i = 0; i < count; ++i) {
      ObjectSpec object;
      object.shape = pick(kShapes, rng);
      do {
        object.colour = pick(kShapeColours, rng);
      } while (i == 1 && object.colour == spec.objects[0].colour);
      const double s = uniform(rng, 0.0, 1.0);
      object.size = s < 0.2 ? Size::kSmall : (s < 0.4 ? Size::kLarge : Size::kAny);
      spec.objects.push_back(object);
    }
    if (count == 1) {
      if (chance(rng, 0.6)) {
        const std::array<Place, 5> places = {Place::kLeft, Place::kRight, Place::kTop,
                                             Place::kBottom, Place::kCenter};
        spec.place = pick(places, rng);
      }
    } else {
      const std::array<Relation, 4> relations = {Relation::kAbove, Relation::kBelow,
                                                 Relation::kLeftOf, Relation::kRightOf};
      spec.relation = pick(relations, rng);
      if (is_held_out(spec)) continue;
    }
    if (chance(rng, 0.5)) spec.background = pick(kBackgrounds, rng);
    return spec;
  }
}

SceneSpec reversed_pair(const SceneSpec& spec) {
  if (spec.objects.size() != 2)
    throw Error("synth: only a two-shape scene can be said the other way");
  SceneSpec out = spec;
  std::swap(out.objects[0], out.objects[1]);
  switch (spec.relation) {
    case Relation::kAbove:
      out.relation = Relation::kBelow;
      break;
    case Relation::kBelow:
      out.relation = Relation::kAbove;
      break;
    case Relation::kLeftOf:
      out.relation = Relation::kRightOf;
      break;
    case Relation::kRightOf:
      out.relation = Relation::kLeftOf;
      break;
  }
  return out;
}

bool is_held_out(const SceneSpec& spec) {
  if (spec.objects.size() != 2) return false;
  const uint32_t hash = static_cast<uint32_t>(pair_index(spec)) * 2654435761u;
  return (hash >> 16) % 10 == 0;
}

std::vector<SceneSpec> held_out_specs(int count, bool reversed_too) {
  std::vector<SceneSpec> all;
  for (Colour ca : kShapeColours) {
    for (Shape sa : kShapes) {
      for (Relation relation :
           {Relation::kAbove, Relation::kBelow, Relation::kLeftOf, Relation::kRightOf}) {
        for (Colour cb : kShapeColours) {
          if (cb == ca) continue;
          for (Shape sb : kShapes) {
            SceneSpec spec;
            spec.objects = {{sa, ca, Size::kAny}, {sb, cb, Size::kAny}};
            spec.relation = relation;
            if (is_held_out(spec) && (!reversed_too || is_held_out(reversed_pair(spec))))
              all.push_back(spec);
          }
        }
      }
    }
  }
  std::vector<SceneSpec> chosen;
  if (count <= 0 || all.empty()) return chosen;
  if (static_cast<size_t>(count) >= all.size()) return all;
  if (reversed_too) {  // a short list: evenly spread
    for (int i = 0; i < count; ++i)
      chosen.push_back(all[static_cast<size_t>(i) * all.size() / count]);
    return chosen;
  }
  // Evenly spread over the list, stepping by a stride coprime with its order
  // so that colours, shapes and relations all vary.
  const size_t stride = all.size() / static_cast<size_t>(count);
  for (int i = 0; i < count && static_cast<size_t>(i) * stride < all.size(); ++i) {
    chosen.push_back(
        all[(static_cast<size_t>(i) * stride + static_cast<size_t>(i) * 7) % all.size()]);
  }
  return chosen;
}

torch::Tensor render(const Scene& scene) {
  const int n = scene.canvas;
  auto image = torch::empty({n, n, 3}, torch::kUInt8);
  auto* px = image.data_ptr<uint8_t>();
  const auto bg = colour_rgb(scene.spec.background_colour());
  // Colour accumulated in floats, then rounded once.
  std::vector<float> acc(static_cast<size_t>(n) * n * 3);
  for (size_t i = 0; i < acc.size(); ++i) acc[i] = bg[i % 3];
  constexpr int kSub = 4;  // 4x4 samples per pixel at edges
  for (const auto& object : scene.objects) {
    const auto rgb = colour_rgb(object.spec.colour);
    const double reach = 1.25 * object.radius + 2;
    const int x0 = std::max(0, static_cast<int>(object.cx - reach));
    const int x1 = std::min(n - 1, static_cast<int>(object.cx + reach));
    const int y0 = std::max(0, static_cast<int>(object.cy - reach));
    const int y1 = std::min(n - 1, static_cast<int>(object.cy + reach));
    for (int y = y0; y <= y1; ++y) {
      for (int x = x0; x <= x1; ++x) {
        int hits = 0;
        for (int sy = 0; sy < kSub; ++sy) {
          for (int sx = 0; sx < kSub; ++sx) {
            hits += inside(object, x + (sx + 0.5) / kSub, y + (sy + 0.5) / kSub) ? 1 : 0;
          }
        }
        if (hits == 0) continue;
        const float cover = static_cast<float>(hits) / (kSub * kSub);
        float* p = &acc[(static_cast<size_t>(y) * n + x) * 3];
        for (int c = 0; c < 3; ++c) p[c] = p[c] * (1 - cover) + rgb[c] * cover;
      }
    }
  }
  for (size_t i = 0; i < acc.size(); ++i) {
    px[i] = static_cast<uint8_t>(std::lround(std::clamp(acc[i], 0.0f, 255.0f)));
  }
  return image;
}

}  // namespace sdgen::synth
