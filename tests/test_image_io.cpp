#include <filesystem>
#include <fstream>

#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

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

}  // namespace
}  // namespace sdgen
