// The protobuf reader of sentencepiece_model.h: the wire format (varints,
// length-delimited fields, fixed32 floats) as protobuf's encoding spec
// describes it, and the ModelProto, TrainerSpec and NormalizerSpec fields
// the BPE encoder uses.

#include "sentencepiece_model.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "sdgen/error.h"

namespace sdgen::sentencepiece_model {
namespace {

// ---- protobuf wire format -------------------------------------------------------

// Reads one message's fields; every read is bounds-checked and a malformed
// message throws Error.
class WireReader {
 public:
  WireReader(const char* data, size_t size) : p_(data), end_(data + size) {}
  bool done() const { return p_ >= end_; }

  // The next field's number and wire type.
  std::pair<uint32_t, int> tag() {
    const uint64_t t = varint();
    const uint64_t field = t >> 3;
    if (field == 0 || field > 0x1FFFFFFF) fail("invalid field number");
    return {static_cast<uint32_t>(field), static_cast<int>(t & 7)};
  }
  uint64_t varint() {
    uint64_t out = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) fail("truncated varint");
      const auto b = static_cast<unsigned char>(*p_++);
      out |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return out;
    }
    fail("varint longer than 10 bytes");
    return 0;
  }
  std::string bytes() {
    const uint64_t n = varint();
    if (n > static_cast<uint64_t>(end_ - p_)) fail("length-delimited field past the end");
    std::string out(p_, static_cast<size_t>(n));
    p_ += n;
    return out;
  }
  float fixed32_float() {
    if (end_ - p_ < 4) fail("truncated fixed32");
    uint32_t bits = 0;
    for (int i = 0; i < 4; ++i)
      bits |= static_cast<uint32_t>(static_cast<unsigned char>(p_[i])) << (8 * i);
    p_ += 4;
    float f = 0;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  // int32 fields are varints holding the value sign-extended to 64 bits.
  int32_t int32() { return static_cast<int32_t>(static_cast<uint32_t>(varint())); }
  void expect(int wire, int expected, uint32_t field) {
    if (wire != expected)
      fail("field " + std::to_string(field) + " has wire type " + std::to_string(wire) +
           ", expected " + std::to_string(expected));
  }
  void skip(int wire) {
    switch (wire) {
      case 0:
        varint();
        break;
      case 1:
        if (end_ - p_ < 8) fail("truncated fixed64");
        p_ += 8;
        break;
      case 2:
        bytes();
        break;
      case 5:
        if (end_ - p_ < 4) fail("truncated fixed32");
        p_ += 4;
        break;
      default:  // groups (3, 4) are not used by ModelProto
        fail("unsupported wire type " + std::to_string(wire));
    }
  }
  [[noreturn]] static void fail(const std::string& why) {
    throw Error("malformed protobuf: " + why);
  }

 private:
  const char* p_;
  const char* end_;
};

// One field of a message: its number, and reads that first check its wire type.
struct Field {
  WireReader& r;
  uint32_t number;
  int wire;

  std::string bytes() {
    r.expect(wire, 2, number);
    return r.bytes();
  }
  bool flag() {
    r.expect(wire, 0, number);
    return r.varint() != 0;
  }
  int32_t int32() {
    r.expect(wire, 0, number);
    return r.int32();
  }
  float fixed32_float() {
    r.expect(wire, 5, number);
    return r.fixed32_float();
  }
  void skip() { r.skip(wire); }
};

// Calls visit(Field&) for each field of the message in `bytes`; visit reads
// the field's value or skips it.
template <class Visit>
void for_each_field(const std::string& bytes, Visit&& visit) {
  WireReader r(bytes.data(), bytes.size());
  while (!r.done()) {
    const std::pair<uint32_t, int> tag = r.tag();
    Field field{r, tag.first, tag.second};
    visit(field);
  }
}

Piece parse_piece(const std::string& bytes) {
  Piece piece;
  for_each_field(bytes, [&](Field& f) {
    switch (f.number) {
      case 1:
        piece.text = f.bytes();
        break;
      case 2:
        piece.score = f.fixed32_float();
        break;
      case 3:
        piece.type = f.int32();
        break;
      default:
        f.skip();
    }
  });
  return piece;
}

void parse_trainer_spec(const std::string& bytes, ModelProto& m) {
  for_each_field(bytes, [&](Field& f) {
    switch (f.number) {
      case 3:
        m.model_type = f.int32();
        break;
      case 24:
        m.treat_whitespace_as_suffix = f.flag();
        break;
      case 35:
        m.byte_fallback = f.flag();
        break;
      case 45:
        m.unk_piece = f.bytes();
        break;
      case 46:
        m.bos_piece = f.bytes();
        break;
      case 47:
        m.eos_piece = f.bytes();
        break;
      case 48:
        m.pad_piece = f.bytes();
        break;
      default:
        f.skip();
    }
  });
  // sentencepiece's ModelInterface::*_piece(): an empty name means the default.
  if (m.unk_piece.empty()) m.unk_piece = "<unk>";
  if (m.bos_piece.empty()) m.bos_piece = "<s>";
  if (m.eos_piece.empty()) m.eos_piece = "</s>";
  if (m.pad_piece.empty()) m.pad_piece = "<pad>";
}

void parse_normalizer_spec(const std::string& bytes, ModelProto& m) {
  for_each_field(bytes, [&](Field& f) {
    switch (f.number) {
      case 1:
        m.normalizer_name = f.bytes();
        break;
      case 2:
        m.has_charsmap = !f.bytes().empty();
        break;
      case 3:
        m.add_dummy_prefix = f.flag();
        break;
      case 4:
        m.remove_extra_whitespaces = f.flag();
        break;
      case 5:
        m.escape_whitespaces = f.flag();
        break;
      case 6:
        m.has_rule_tsv = !f.bytes().empty();
        break;
      default:
        f.skip();
    }
  });
}

}  // namespace

ModelProto parse_model(const std::string& bytes) {
  ModelProto m;
  for_each_field(bytes, [&](Field& f) {
    switch (f.number) {
      case 1:
        m.pieces.push_back(parse_piece(f.bytes()));
        break;
      case 2:
        parse_trainer_spec(f.bytes(), m);
        break;
      case 3:
        parse_normalizer_spec(f.bytes(), m);
        break;
      default:
        f.skip();  // self_test_data, denormalizer_spec, ...
    }
  });
  return m;
}

}  // namespace sdgen::sentencepiece_model
