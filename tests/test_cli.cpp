// End to end through the `sdgen` binary: golden images from both checkpoint
// layouts, and bad input giving one clear line, a non-zero exit and no file.

#include <filesystem>
#include <fstream>

#include "sdgen/image_io.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

std::string sdgen_bin() { return test::binary_dir() + "/sdgen"; }

std::string quote(const std::string& s) { return "'" + s + "'"; }

std::string golden_args() {
  return " -p 'a photograph of an astronaut riding a horse' -n 'blurry, low quality'"
         " --steps 10 --cfg-scale 7.5 --seed 42 -W 64 -H 64 --threads 1 --dtype fp32 -q";
}

void expect_png_matches(const std::string& path, const torch::Tensor& expected_u8,
                        const std::string& label) {
  auto png = read_png(path);
  auto got = png.pixels.unsqueeze(0);
  ASSERT_EQ(got.sizes(), expected_u8.sizes()) << label;
  const double diff = test::max_abs_diff(got, expected_u8);
  std::cout << "[parity] " << label << ": max 8-bit difference " << diff << std::endl;
  EXPECT_LE(diff, 1.0) << label;
  ASSERT_FALSE(png.text.empty()) << "no A1111 parameters chunk";
  EXPECT_EQ(png.text[0].first, "parameters");
  EXPECT_NE(png.text[0].second.find("Seed: 42"), std::string::npos) << png.text[0].second;
}

TEST(CLI, DiffusersFolderDDIMAndDDPM) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("cli");
  for (const std::string sampler : {"ddim", "ddpm"}) {
    const std::string out = dir + "/" + sampler + ".png";
    std::string log;
    ASSERT_EQ(test::run(sdgen_bin() + " --model " + quote(test::tiny_model_dir()) + golden_args() +
                            " --sampler " + sampler + " -o " + quote(out),
                        &log),
              0)
        << log;
    expect_png_matches(out, test::golden("pipe." + sampler + ".image_u8"), "folder " + sampler);
  }
}

TEST(CLI, SingleFileWithConfig) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("cli");
  for (const std::string sampler : {"ddim", "ddpm"}) {
    const std::string out = dir + "/single-" + sampler + ".png";
    std::string log;
    ASSERT_EQ(test::run(sdgen_bin() + " --model " + quote(test::tiny_model_file()) + " --config " +
                            quote(test::tiny_model_dir()) + golden_args() + " --sampler " +
                            sampler + " -o " + quote(out),
                        &log),
              0)
        << log;
    expect_png_matches(out, test::golden("pipe." + sampler + ".image_u8"),
                       "single file " + sampler);
  }
}

TEST(CLI, Batch2NonSquareClipSkip) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("cli");
  std::string log;
  ASSERT_EQ(
      test::run(sdgen_bin() + " --model " + quote(test::tiny_model_dir()) +
                    " -p 'a red fox in the snow' --steps 10 --cfg-scale 5 --seed 7 -W 96 -H 64"
                    " --batch-size 2 --clip-skip 2 --dtype fp32 -q -o " +
                    quote(dir + "/fox.png"),
                &log),
      0)
      << log;
  const auto expected = test::golden("pipe_batch2_clipskip.ddim.image");
  const auto expected_u8 = (expected * 255).round().to(torch::kUInt8);
  for (int i = 0; i < 2; ++i) {
    const std::string path = dir + "/fox-" + std::to_string(i) + ".png";
    ASSERT_TRUE(fs::exists(path)) << log;
    auto png = read_png(path);
    const double diff = test::max_abs_diff(png.pixels, expected_u8[i]);
    std::cout << "[parity] batch2 clip-skip image " << i << ": max 8-bit difference " << diff
              << std::endl;
    EXPECT_LE(diff, 1.0);
  }
}

// Every bad input: non-zero exit, one line naming the problem, no PNG left.
struct BadCase {
  std::string name;
  std::string args;
  std::string message;  // words the error line must contain
};

TEST(CLI, BadInputFailsCleanly) {
  const auto dir = test::temp_dir("bad");
  const std::string truncated = dir + "/truncated.safetensors";
  {
    std::ofstream f(truncated, std::ios::binary);
    f << std::string("\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":", 13);
  }
  std::ofstream(dir + "/not-a-dir") << "x";
  const std::string model = test::has_shared() ? test::tiny_model_dir() : dir;
  std::vector<BadCase> cases = {
      {"missing model", "--model " + dir + "/nope -p x", "model not found"},
      {"folder without model_index", "--model " + dir + " -p x", "model_index.json"},
      {"truncated safetensors", "--model " + truncated + " -p x", "truncated"},
      {"width not multiple of 8", "--model " + model + " -p x -W 63", "multiple of 8"},
      {"zero steps", "--model " + model + " -p x --steps 0", "steps"},
      {"unknown sampler", "--model " + model + " -p x --sampler nope", "ddim"},
      {"output is a directory", "--model " + model + " -p x -o " + dir, "directory"},
      {"unwritable output", "--model " + model + " -p x -o " + dir + "/not-a-dir/out.png",
       "not-a-dir"},
  };
  for (const auto& c : cases) {
    std::string log;
    const std::string out = dir + "/out.png";
    std::string args = c.args;
    if (args.find(" -o ") == std::string::npos) args += " -o " + out;
    if (args.find("--steps") == std::string::npos) args += " --steps 2";
    const int code = test::run(sdgen_bin() + " -q " + args, &log);
    EXPECT_NE(code, 0) << c.name << ": " << log;
    EXPECT_NE(log.find(c.message), std::string::npos) << c.name << ": " << log;
    EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << c.name << ": " << log;
    EXPECT_FALSE(fs::exists(out)) << c.name;
    for (const auto& e : fs::recursive_directory_iterator(dir))
      EXPECT_NE(e.path().extension(), ".png") << c.name << " left " << e.path();
  }
}

TEST(CLI, VersionAndHelp) {
  std::string log;
  EXPECT_EQ(test::run(sdgen_bin() + " --version", &log), 0);
  EXPECT_NE(log.find("sdgen"), std::string::npos);
  EXPECT_EQ(test::run(sdgen_bin() + " --help", &log), 0);
  for (const char* flag : {"--model",
                           "--config",
                           "--tokenizer",
                           "--prompt",
                           "--negative-prompt",
                           "--steps",
                           "--cfg-scale",
                           "--guidance-rescale",
                           "--seed",
                           "--width",
                           "--height",
                           "--sampler",
                           "--eta",
                           "--clip-skip",
                           "--batch-size",
                           "--device",
                           "--dtype",
                           "--threads",
                           "--output",
                           "--prediction"})
    EXPECT_NE(log.find(flag), std::string::npos) << flag;
}

}  // namespace
}  // namespace sdgen
