#include <filesystem>
#include <fstream>

#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

// First in this file on purpose: stb_image keeps its last failure reason per
// thread, and this failure only crashed while none had been set yet. An IDAT
// chunk claiming 2 GiB made stb fail without a reason; sdgen built its
// message from the null pointer (SIGSEGV in strlen) on `--from-png` or
// `--init-image` with such a file. Chunks claiming more bytes than the file
// has (which also made stb allocate the claimed size first: a fuzzer
// timeout) are now rejected before stb runs, naming the chunk.
TEST(ImageIO, ChunkLongerThanFile) {
  std::string png("\x89PNG\r\n\x1a\n", 8);
  png += std::string("\0\0\0\x0dIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0\x90\x77\x53\xde", 25);
  for (const char* length : {"\x80\0\0\0", "\x7f\xff\xff\xff", "\0\0\0\x05"}) {
    const std::string bad = png + std::string(length, 4) + std::string("IDAT\0\0\0\0\0\0\0\0", 12);
    try {
      decode_png(bad, "huge-idat.png");
      FAIL() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(
                    "huge-idat.png: cannot decode PNG (truncated: chunk 'IDAT' at byte 33", 0),
                0u)
          << e.what();
    }
  }
}

TEST(ImageIO, RoundTripWithText) {
  const auto dir = test::temp_dir("png");
  auto image = torch::randint(0, 256, {5, 7, 3}, torch::kUInt8);
  const std::string path = dir + "/sub/dir/a.png";
  write_png(path, image, {{"parameters", "a cat\nSteps: 20, Seed: 1"}, {"Software", "sdgen"}});
  auto png = read_png(path);
  EXPECT_TRUE(torch::equal(png.pixels, image));
  ASSERT_EQ(png.text.size(), 2u);
  EXPECT_EQ(png.text[0].first, "parameters");
  EXPECT_EQ(png.text[0].second, "a cat\nSteps: 20, Seed: 1");
  for (const auto& e : fs::directory_iterator(dir + "/sub/dir"))
    EXPECT_EQ(e.path().filename(), "a.png");  // no temporary file left behind
}

TEST(ImageIO, Conversions) {
  auto decoded = torch::tensor({-1.5f, -1.f, 0.f, 0.2f, 1.f, 2.f}).view({1, 3, 1, 2});
  auto u8 = to_uint8_images(decoded);
  EXPECT_EQ(u8.sizes(), (std::vector<int64_t>{1, 1, 2, 3}));
  // channel-last: pixel 0 = (-1.5, 0, 1) -> (0, 128, 255); pixel 1 = (-1, 0.2, 2) -> (0, 153, 255)
  EXPECT_EQ(u8[0][0][0][0].item<int>(), 0);
  EXPECT_EQ(u8[0][0][0][1].item<int>(), 128);
  EXPECT_EQ(u8[0][0][0][2].item<int>(), 255);
  EXPECT_EQ(u8[0][0][1][1].item<int>(), 153);
}

TEST(ImageIO, ErrorsNameThePath) {
  const auto dir = test::temp_dir("png");
  std::ofstream(dir + "/fake.png") << "hello";
  try {
    read_png(dir + "/fake.png");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a PNG"), std::string::npos);
  }
  EXPECT_THROW(read_png(dir + "/missing.png"), Error);
  EXPECT_THROW(check_output_path(dir), Error);
  std::ofstream(dir + "/file") << "x";
  EXPECT_THROW(check_output_path(dir + "/file/out.png"), Error);
  EXPECT_THROW(write_png(dir + "/x.png", torch::zeros({2, 2, 3})), Error);  // not uint8
}

// Fuzzer find (fuzz_png_params): a PNG whose first IDAT chunk is empty made
// stb_image memcpy() to a null pointer (UBSan: "null pointer passed as
// argument 1"). Empty IDAT chunks are legal and now dropped before decoding.
TEST(ImageIO, EmptyIdatChunkDecodes) {
  auto image = torch::randint(0, 256, {3, 4, 3}, torch::kUInt8);
  std::string png = encode_png(image, {{"parameters", "p"}});
  const std::string empty_idat("\0\0\0\0IDAT\x35\xaf\x06\x1e", 12);  // CRC of "IDAT"
  const size_t idat = png.find("IDAT") - 4;
  png.insert(idat, empty_idat);
  png.insert(idat, empty_idat);
  const DecodedPng decoded = decode_png(png, "empty-idat.png");
  ASSERT_EQ(decoded.pixels.size(), 3u * 4 * 3);
  EXPECT_TRUE(torch::equal(
      torch::from_blob(const_cast<uint8_t*>(decoded.pixels.data()), {3, 4, 3}, torch::kUInt8),
      image));
  ASSERT_EQ(decoded.text.size(), 1u);
  EXPECT_EQ(decoded.text[0].second, "p");

  // The fuzzer's input itself: 1x1 RGB, two tEXt chunks, an empty IDAT, IEND.
  const unsigned char found[] = {
      0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48,
      0x44, 0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00,
      0x00, 0x90, 0x77, 0x53, 0xde, 0x00, 0x00, 0x00, 0x07, 0x74, 0x45, 0x58, 0x74, 0x00,
      0x6e, 0x6f, 0x20, 0x6b, 0x65, 0x79, 0x40, 0x00, 0x73, 0x4e, 0x00, 0x00, 0x00, 0x0b,
      0x74, 0x45, 0x58, 0x74, 0x70, 0x61, 0x72, 0x61, 0x6d, 0x65, 0x74, 0x65, 0x72, 0x73,
      0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x49, 0x44, 0x41, 0x54, 0x78,
      0x9c, 0x63, 0x60, 0x50, 0xf5, 0x02, 0x00, 0x00, 0x98, 0x00, 0x70, 0x50, 0xe9, 0x93,
      0x86, 0x00, 0x00, 0x00, 0x01, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};
  EXPECT_THROW(decode_png(std::string(reinterpret_cast<const char*>(found), sizeof found), "f"),
               Error);
}

}  // namespace
}  // namespace sdgen
