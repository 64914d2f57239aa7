// Needs nothing from ../shared: the project makes a tiny random model of its
// own (weights and tokenizer vocabulary) and sdgen turns it into a PNG.

#include <filesystem>

#include "sdgen/image_io.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

TEST(Smoke, TinyRandomModelMakesAPng) {
  const auto dir = test::temp_dir("smoke");
  std::string log;
  ASSERT_EQ(
      test::run(test::binary_dir() + "/sdgen-mkmodel tiny --out " + dir + "/model --seed 1", &log),
      0)
      << log;
  ASSERT_TRUE(fs::exists(dir + "/model/model_index.json"));
  const std::string out = dir + "/img/out.png";  // the folder is created
  ASSERT_EQ(test::run(test::binary_dir() + "/sdgen --model " + dir +
                          "/model -p 'a red circle above a blue square' --steps 3 -W 72 -H 48"
                          " --seed 5 -o " +
                          out,
                      &log),
            0)
      << log;
  EXPECT_NE(log.find("wrote " + out + " (seed 5)"), std::string::npos) << log;
  auto png = read_png(out);
  EXPECT_EQ(png.pixels.sizes(), (std::vector<int64_t>{48, 72, 3}));
  // The same seed gives the same image; another seed a different one.
  const std::string again = dir + "/again.png", other = dir + "/other.png";
  ASSERT_EQ(test::run(test::binary_dir() + "/sdgen -q --model " + dir +
                          "/model -p 'a red circle above a blue square' --steps 3 -W 72 -H 48"
                          " --seed 5 -o " +
                          again,
                      &log),
            0)
      << log;
  ASSERT_EQ(test::run(test::binary_dir() + "/sdgen -q --model " + dir +
                          "/model -p 'a red circle above a blue square' --steps 3 -W 72 -H 48"
                          " --seed 6 -o " +
                          other,
                      &log),
            0)
      << log;
  EXPECT_TRUE(torch::equal(read_png(again).pixels, png.pixels));
  EXPECT_FALSE(torch::equal(read_png(other).pixels, png.pixels));
}

TEST(Smoke, RandomSeedIsPrinted) {
  const auto dir = test::temp_dir("smoke");
  std::string log;
  ASSERT_EQ(test::run(test::binary_dir() + "/sdgen-mkmodel tiny --out " + dir + "/model", &log), 0)
      << log;
  ASSERT_EQ(test::run(test::binary_dir() + "/sdgen -q --model " + dir +
                          "/model -p cat --steps 1 -W 64 -H 64 -o " + dir + "/r.png",
                      &log),
            0)
      << log;
  EXPECT_NE(log.find("(seed "), std::string::npos) << log;
}

}  // namespace
}  // namespace sdgen
