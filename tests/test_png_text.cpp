// PNG text chunks as other tools write and read them: tEXt for Latin-1 text
// and uncompressed iTXt for the rest (Pillow's PngInfo.add_text, which A1111
// uses), tEXt / zTXt / iTXt read back as UTF-8, corrupt or oversized
// compressed text refused; checked with libpng, an independent reader, and end
// to end through `sdgen` (--show-params, --from-png) on the tiny model.

#include <zlib.h>

#include <csetjmp>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#if SDGEN_TEST_LIBPNG
#include <png.h>
#endif

#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "test_util.h"

namespace sdgen {
namespace {

const std::string kNul(1, '\0');
// A prompt outside Latin-1: Chinese and an emoji (4 bytes in UTF-8).
const std::string kChinese = "一只红色的狐狸 🦊 in the snow";

std::string compressed(const std::string& text) {
  uLongf size = compressBound(static_cast<uLong>(text.size()));
  std::string out(size, '\0');
  EXPECT_EQ(
      compress2(reinterpret_cast<Bytef*>(out.data()), &size,
                reinterpret_cast<const Bytef*>(text.data()), static_cast<uLong>(text.size()), 9),
      Z_OK);
  out.resize(size);
  return out;
}

// A 2x2 RGB PNG with `chunks` (complete chunks) right after IHDR.
std::string png_with(const std::string& chunks) {
  std::string png = encode_png(torch::arange(12, torch::kUInt8).view({2, 2, 3}));
  png.insert(33, chunks);
  return png;
}

struct Chunk {
  std::string type, data;
  bool crc_ok = false;
};

// The chunks after the signature, CRCs checked with zlib (not sdgen's code).
std::vector<Chunk> chunks_of(const std::string& png) {
  std::vector<Chunk> out;
  size_t pos = 8;
  while (pos + 12 <= png.size()) {
    uint32_t len = 0;
    for (int i = 0; i < 4; ++i) len = (len << 8) | static_cast<uint8_t>(png[pos + i]);
    Chunk c{png.substr(pos + 4, 4), png.substr(pos + 8, len)};
    uint32_t crc = 0;
    for (int i = 0; i < 4; ++i) crc = (crc << 8) | static_cast<uint8_t>(png[pos + 8 + len + i]);
    const std::string body = c.type + c.data;
    c.crc_ok = crc == crc32(0, reinterpret_cast<const Bytef*>(body.data()),
                            static_cast<uInt>(body.size()));
    out.push_back(c);
    pos += 12 + len;
  }
  return out;
}

// The one text chunk sdgen wrote for {key, value}.
Chunk written_chunk(const std::string& key, const std::string& value) {
  const auto chunks = chunks_of(encode_png(torch::zeros({1, 1, 3}, torch::kUInt8), {{key, value}}));
  EXPECT_EQ(chunks.size(), 4u);  // IHDR, text, IDAT, IEND
  EXPECT_TRUE(chunks.at(1).crc_ok);
  return chunks.at(1);
}

// ---- writing ----------------------------------------------------------------

TEST(PngText, AsciiIsWrittenAsBeforeByteForByte) {
  const auto image = torch::randint(0, 256, {3, 5, 3}, torch::kUInt8);
  // The tEXt chunk sdgen has always written (CRC from Python's zlib.crc32).
  const std::string old_chunk = std::string("\0\0\0\x1a", 4) + "tEXtparameters" + kNul +
                                "a cat\nSteps: 20" + std::string("\xb0\xfc\xe8\x5d", 4);
  std::string expected = encode_png(image);
  expected.insert(33, old_chunk);
  EXPECT_EQ(encode_png(image, {{"parameters", "a cat\nSteps: 20"}}), expected);
}

TEST(PngText, Latin1IsWrittenAsLatin1Bytes) {
  const Chunk c = written_chunk("parameters", "café, 5°C, naïve × 2\nSteps: 2");
  EXPECT_EQ(c.type, "tEXt");
  EXPECT_EQ(c.data, "parameters" + kNul + "caf\xe9, 5\xb0" + "C, na\xefve \xd7 2\nSteps: 2");
}

TEST(PngText, BeyondLatin1IsWrittenAsUncompressedItxt) {
  for (const std::string& value :
       std::vector<std::string>{kChinese, "猫の写真\nSteps: 2", "café 🦊", "€"}) {
    const Chunk c = written_chunk("parameters", value);
    EXPECT_EQ(c.type, "iTXt") << value;
    // keyword, NUL, flag 0, method 0, empty language, NUL, empty keyword, NUL
    EXPECT_EQ(c.data, "parameters" + std::string(5, '\0') + value) << value;
  }
}

// A value that is not valid UTF-8 (which Pillow's str cannot hold) is written
// with each invalid sequence replaced by U+FFFD, so as iTXt.
TEST(PngText, InvalidUtf8IsReplacedWithFffd) {
  const Chunk c = written_chunk("parameters",
                                "a\xff"
                                "b\xc3");
  EXPECT_EQ(c.type, "iTXt");
  EXPECT_EQ(c.data, "parameters" + std::string(5, '\0') + "a\uFFFDb\uFFFD");
  const auto back = decode_png(png_with(png_chunk(c.type, c.data)), "t.png").text;
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].second, "a\uFFFDb\uFFFD");
}

TEST(PngText, KeywordMustBeLatin1And1To79) {
  const auto image = torch::zeros({1, 1, 3}, torch::kUInt8);
  for (const std::string& key : {std::string(), std::string(80, 'k'), std::string("键")})
    EXPECT_THROW(encode_png(image, {{key, "x"}}), Error) << key;
  EXPECT_EQ(written_chunk("Bemerkung über", "x").data,
            "Bemerkung \xfc"
            "ber" +
                kNul + "x");
  EXPECT_EQ(written_chunk(std::string(79, 'k'), "x").type, "tEXt");
}

TEST(PngText, WriteReadRoundTrip) {
  const auto image = torch::randint(0, 256, {4, 3, 3}, torch::kUInt8);
  const PngText text = {{"parameters", kChinese},
                        {"Comment", "Zürich"},
                        {"Software", "sdgen"},
                        {"parameters", "second"}};
  EXPECT_EQ(decode_png(encode_png(image, text), "t.png").text, text);
}

// ---- reading ----------------------------------------------------------------

// The chunk types and encodings other tools write, built by hand.
std::string hand_made_chunks() {
  return png_chunk("tEXt", "Title" + kNul + "\xe9t\xe9") +                       // Latin-1
         png_chunk("tEXt", "parameters" + kNul + "旧 sdgen: raw UTF-8") +        // older sdgen
         png_chunk("zTXt", "Comment" + kNul + '\0' + compressed("Z\xfcrich")) +  // Latin-1
         png_chunk("iTXt", "parameters" + kNul + std::string(2, '\0') + "ja" + kNul + "パラメータ" +
                               kNul + "猫の写真") +
         png_chunk("iTXt",
                   "Description" + kNul + '\x01' + '\0' + kNul + kNul + compressed(kChinese)) +
         png_chunk("tEXt", "no separator") +                                // skipped
         png_chunk("tEXt", kNul + "no keyword") +                           // skipped
         png_chunk("iTXt", "Broken" + kNul + std::string(2, '\0') + "en");  // skipped
}

const PngText kHandMadeText = {{"Title", "été"},
                               {"parameters", "旧 sdgen: raw UTF-8"},
                               {"Comment", "Zürich"},
                               {"parameters", "猫の写真"},
                               {"Description", kChinese}};

TEST(PngText, ReadsTextZtxtAndItxtAsUtf8) {
  const std::string png = png_with(hand_made_chunks());
  EXPECT_EQ(decode_png(png, "t.png").text, kHandMadeText);
  EXPECT_EQ(png_text_chunks(png, "t.png"), kHandMadeText);
  // Also after the image data, where PNG allows them too.
  std::string after = png_with("");
  after.insert(after.size() - 12, hand_made_chunks());
  EXPECT_EQ(decode_png(after, "t.png").text, kHandMadeText);
}

// Compressed text that does not inflate is an error naming the file, the chunk
// and its keyword: skipping it would make --from-png say that the PNG has no
// parameters at all.
TEST(PngText, CorruptCompressedTextIsAnError) {
  const std::string text = compressed("a prompt\nSteps: 2");
  const struct {
    std::string chunk, message;
  } cases[] = {
      {png_chunk("zTXt", "parameters" + kNul + '\0' + "not zlib data"),
       "t.png: cannot read PNG text 'zTXt' chunk 'parameters' at byte 33 (corrupt compressed "
       "text: incorrect header check)"},
      {png_chunk("zTXt", "parameters" + kNul + '\0' + text.substr(0, text.size() - 6)),
       "t.png: cannot read PNG text 'zTXt' chunk 'parameters' at byte 33 (corrupt compressed "
       "text: truncated)"},
      {png_chunk("zTXt", "parameters" + kNul), "(corrupt compressed text: truncated)"},
      {png_chunk("zTXt", "parameters" + kNul + '\x05' + text),
       "'zTXt' chunk 'parameters' at byte 33 (unknown compression method 5)"},
      {png_chunk("iTXt", "parameters" + kNul + "\x01\x01" + kNul + kNul + text),
       "'iTXt' chunk 'parameters' at byte 33 (unknown compression method 1)"},
      {png_chunk("iTXt", "parameters" + kNul + "\x02" + kNul + kNul + kNul + text),
       "'iTXt' chunk 'parameters' at byte 33 (unknown compression flag 2)"},
      {png_chunk("iTXt", "k\x01" + kNul + "\x01" + kNul + kNul + kNul + "\x78\x9c\xff"),
       "t.png: cannot read PNG text 'iTXt' chunk 'k?' at byte 33 (corrupt compressed text: "},
  };
  for (const auto& c : cases) {
    try {
      decode_png(png_with(c.chunk), "t.png");
      ADD_FAILURE() << "no error for " << c.message;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
    }
  }
}

// A zip bomb: 17 KB of zTXt that would inflate to 17 MiB. The bound is on all
// compressed chunks together, so two of 9 MiB are refused as well.
TEST(PngText, InflatedTextIsBounded) {
  const std::string bomb = compressed(std::string(17 << 20, 'a'));
  EXPECT_LT(bomb.size(), 20000u);
  const std::string nine = compressed(std::string(9 << 20, 'b'));
  const std::string eight = compressed(std::string(8 << 20, 'c'));
  const auto ztxt = [](const std::string& key, const std::string& data) {
    return png_chunk("zTXt", key + kNul + '\0' + data);
  };
  const std::string message = " (the compressed text chunks inflate to more than 16 MiB)";
  const auto dir = test::temp_dir("pngtext");
  std::ofstream(dir + "/bomb.png", std::ios::binary) << png_with(ztxt("parameters", bomb));
  try {
    read_png(dir + "/bomb.png");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(
        std::string(e.what()),
        dir + "/bomb.png: cannot read PNG text 'zTXt' chunk 'parameters' at byte 33" + message);
  }
  try {
    png_text_chunks(png_with(ztxt("a", nine) + ztxt("b", nine)), "two.png");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'zTXt' chunk 'b'"), std::string::npos) << e.what();
  }
  // 16 MiB in all is allowed.
  const PngText text = png_text_chunks(png_with(ztxt("a", eight) + ztxt("b", eight)), "ok.png");
  ASSERT_EQ(text.size(), 2u);
  EXPECT_EQ(text[1].second, std::string(8 << 20, 'c'));
}

// ---- an independent reader: libpng ------------------------------------------

#if SDGEN_TEST_LIBPNG

struct LibpngText {
  int compression = 0;  // PNG_TEXT_COMPRESSION_NONE (tEXt), _zTXt, PNG_ITXT_COMPRESSION_*
  std::string key, text, lang, lang_key;  // text: Latin-1 bytes for tEXt/zTXt, UTF-8 for iTXt
};

struct LibpngImage {
  int width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;
  std::vector<LibpngText> text;
};

struct MemoryInput {
  const std::string* bytes;
  size_t pos;
};

void read_memory(png_structp png, png_bytep out, png_size_t n) {
  auto* in = static_cast<MemoryInput*>(png_get_io_ptr(png));
  if (n > in->bytes->size() - in->pos) png_error(png, "read past the end of the data");
  std::memcpy(out, in->bytes->data() + in->pos, n);
  in->pos += n;
}

// Reads every chunk with libpng (png_read_png checks the CRCs, inflates
// zTXt/iTXt, png_get_text lists the text). False when libpng fails; no
// C++ object lives in this frame across libpng's longjmp.
bool read_with_libpng(const std::string& bytes, LibpngImage& out) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!info) return false;
  MemoryInput input{&bytes, 0};
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  png_set_read_fn(png, &input, read_memory);
  png_read_png(png, info, PNG_TRANSFORM_IDENTITY, nullptr);
  out.width = static_cast<int>(png_get_image_width(png, info));
  out.height = static_cast<int>(png_get_image_height(png, info));
  out.channels = png_get_channels(png, info);
  png_bytepp rows = png_get_rows(png, info);
  for (int y = 0; y < out.height; ++y)
    out.pixels.insert(out.pixels.end(), rows[y], rows[y] + out.width * out.channels);
  png_textp text = nullptr;
  const int n = png_get_text(png, info, &text, nullptr);
  for (int i = 0; i < n; ++i) {
    const bool itxt = text[i].compression >= PNG_ITXT_COMPRESSION_NONE;
    out.text.push_back({text[i].compression, text[i].key,
                        std::string(text[i].text, itxt ? text[i].itxt_length : text[i].text_length),
                        itxt && text[i].lang ? text[i].lang : "",
                        itxt && text[i].lang_key ? text[i].lang_key : ""});
  }
  png_destroy_read_struct(&png, &info, nullptr);
  return true;
}

LibpngImage libpng_read(const std::string& bytes) {
  LibpngImage image;
  EXPECT_TRUE(read_with_libpng(bytes, image)) << "libpng could not read the PNG";
  return image;
}

constexpr bool kHaveLibpng = true;

#else

// Stand-ins so that the tests compile; they skip before using them.
struct LibpngText {
  int compression = 0;
  std::string key, text, lang, lang_key;
};
struct LibpngImage {
  std::vector<LibpngText> text;
};
LibpngImage libpng_read(const std::string&) { return {}; }
enum {
  PNG_TEXT_COMPRESSION_NONE = -1,
  PNG_TEXT_COMPRESSION_zTXt,
  PNG_ITXT_COMPRESSION_NONE,
  PNG_ITXT_COMPRESSION_zTXt
};
constexpr bool kHaveLibpng = false;

#endif

constexpr const char* kNoLibpng =
    "libpng was not found when sdgen was configured (install libpng-dev): the check with an "
    "independent PNG reader is skipped";

#define SDGEN_REQUIRE_LIBPNG()                   \
  do {                                           \
    if (!kHaveLibpng) GTEST_SKIP() << kNoLibpng; \
  } while (0)

TEST(PngText, LibpngReadsWhatSdgenWrites) {
  SDGEN_REQUIRE_LIBPNG();
  const auto image = torch::randint(0, 256, {6, 5, 3}, torch::kUInt8);
  const std::string png = encode_png(
      image, {{"parameters", kChinese + "\nSteps: 2"}, {"Comment", "café"}, {"Software", "x"}});
  const LibpngImage got = libpng_read(png);
  ASSERT_EQ(got.text.size(), 3u);
  EXPECT_EQ(got.text[0].compression, PNG_ITXT_COMPRESSION_NONE);
  EXPECT_EQ(got.text[0].key, "parameters");
  EXPECT_EQ(got.text[0].text, kChinese + "\nSteps: 2");
  EXPECT_EQ(got.text[0].lang, "");
  EXPECT_EQ(got.text[0].lang_key, "");
  EXPECT_EQ(got.text[1].compression, PNG_TEXT_COMPRESSION_NONE);
  EXPECT_EQ(got.text[1].text, "caf\xe9");  // Latin-1, as the spec says
  EXPECT_EQ(got.text[2].text, "x");
#if SDGEN_TEST_LIBPNG
  EXPECT_EQ(got.pixels, std::vector<uint8_t>(image.data_ptr<uint8_t>(),
                                             image.data_ptr<uint8_t>() + image.numel()));
#endif
}

// libpng reads the hand-made chunks of ReadsTextZtxtAndItxtAsUtf8 (so they are
// valid PNG, CRCs included) as sdgen does, up to Latin-1 vs UTF-8.
TEST(PngText, LibpngAgreesOnHandMadeChunks) {
  SDGEN_REQUIRE_LIBPNG();
  std::string chunks = hand_made_chunks();
  chunks.resize(chunks.rfind(png_chunk("tEXt", "no separator")));  // libpng warns about those
  const LibpngImage got = libpng_read(png_with(chunks));
  ASSERT_EQ(got.text.size(), kHandMadeText.size());
  const int kinds[] = {PNG_TEXT_COMPRESSION_NONE, PNG_TEXT_COMPRESSION_NONE,
                       PNG_TEXT_COMPRESSION_zTXt, PNG_ITXT_COMPRESSION_NONE,
                       PNG_ITXT_COMPRESSION_zTXt};
  for (size_t i = 0; i < got.text.size(); ++i) {
    EXPECT_EQ(got.text[i].compression, kinds[i]) << i;
    EXPECT_EQ(got.text[i].key, kHandMadeText[i].first) << i;
  }
  EXPECT_EQ(got.text[0].text, "\xe9t\xe9");
  EXPECT_EQ(got.text[1].text, kHandMadeText[1].second);  // raw UTF-8 bytes in tEXt
  EXPECT_EQ(got.text[2].text, "Z\xfcrich");
  EXPECT_EQ(got.text[3].text, "猫の写真");
  EXPECT_EQ(got.text[3].lang, "ja");
  EXPECT_EQ(got.text[3].lang_key, "パラメータ");
  EXPECT_EQ(got.text[4].text, kChinese);
}

// ---- end to end: sdgen on the tiny model -----------------------------------------

std::string q(const std::string& s) { return "'" + s + "'"; }

std::string sdgen_bin() { return test::binary_dir() + "/sdgen"; }

// sdgen with the tiny model, a private hash cache, 64x64.
std::string sdgen_cmd(const std::string& dir) {
  return "XDG_CACHE_HOME=" + q(dir + "/cache") + " " + sdgen_bin() + " --model " +
         q(test::tiny_model_dir()) + " --threads 1 -W 64 -H 64 ";
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The "parameters" text chunk of a PNG file as libpng reads it.
LibpngText libpng_parameters(const std::string& path) {
  for (const LibpngText& t : libpng_read(read_file(path)).text)
    if (t.key == "parameters") return t;
  ADD_FAILURE() << path << ": libpng finds no parameters chunk";
  return {};
}

TEST(PngText, ChineseAndEmojiPromptRoundTripsThroughSdgen) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("pngtext");
  const std::string out = dir + "/fox.png";
  std::string log;
  ASSERT_EQ(
      test::run(sdgen_cmd(dir) + "-p " + q(kChinese) + " --steps 2 --seed 3 -q -o " + q(out), &log),
      0)
      << log;
  ASSERT_EQ(test::run(sdgen_bin() + " --show-params " + q(out), &log), 0) << log;
  EXPECT_EQ(log.rfind(kChinese + "\nSteps: 2, ", 0), 0u) << log;
  ASSERT_EQ(test::run(sdgen_bin() + " --show-params " + q(out) + " --json", &log), 0) << log;
  EXPECT_EQ(nlohmann::json::parse(log)["prompt"], kChinese) << log;
  const auto png = read_png(out);
  ASSERT_EQ(png.text.size(), 1u);
  EXPECT_EQ(png.text[0].second.rfind(kChinese + "\n", 0), 0u);
  EXPECT_EQ(chunks_of(read_file(out)).at(1).type, "iTXt");
  if (!kHaveLibpng) {
    std::cout << "[note] " << kNoLibpng << std::endl;
    return;
  }
  const LibpngText params = libpng_parameters(out);
  EXPECT_EQ(params.compression, PNG_ITXT_COMPRESSION_NONE);
  EXPECT_EQ(params.text, png.text[0].second);
}

// A PNG as A1111 saves it (Pillow's add_text with a Japanese prompt: an
// uncompressed iTXt chunk before the image data) gives its prompt to
// --show-params, and --from-png makes the image the same flags make.
TEST(PngText, A1111ItxtPngReproducesWithFromPng) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("pngtext");
  const std::string prompt = "桜の木の下で眠る猫、水彩画";
  const std::string parameters =
      prompt + "\nSteps: 2, Sampler: DDIM, CFG scale: 7, Seed: 5, Size: 64x64";
  std::ofstream(dir + "/a1111.png", std::ios::binary)
      << png_with(png_chunk("iTXt", "parameters" + std::string(5, '\0') + parameters));
  std::string log;
  ASSERT_EQ(test::run(sdgen_bin() + " --show-params " + q(dir + "/a1111.png"), &log), 0) << log;
  EXPECT_EQ(log, parameters + "\n");
  ASSERT_EQ(test::run(sdgen_cmd(dir) + "--from-png " + q(dir + "/a1111.png") + " -q -o " +
                          q(dir + "/from-png.png"),
                      &log),
            0)
      << log;
  ASSERT_EQ(test::run(sdgen_cmd(dir) + "-p " + q(prompt) +
                          " --steps 2 --sampler ddim --cfg-scale 7 --seed 5 -q -o " +
                          q(dir + "/flags.png"),
                      &log),
            0)
      << log;
  const auto from_png = read_png(dir + "/from-png.png"), flags = read_png(dir + "/flags.png");
  EXPECT_TRUE(torch::equal(from_png.pixels, flags.pixels));
  EXPECT_EQ(from_png.text, flags.text);
  EXPECT_EQ(read_file(dir + "/from-png.png"), read_file(dir + "/flags.png"));
  ASSERT_EQ(from_png.text.size(), 1u);
  EXPECT_EQ(from_png.text[0].second.rfind(prompt + "\nSteps: 2, Sampler: DDIM, CFG scale: 7, "
                                                   "Seed: 5, Size: 64x64",
                                          0),
            0u)
      << from_png.text[0].second;
}

}  // namespace
}  // namespace sdgen
