// sdgen::Generator against torch.randn(shape, generator=torch.Generator("cpu").manual_seed(42)).

#include <set>
#include <string>
#include <vector>

#include "sdgen/rng.h"
#include "test_util.h"

namespace {

using sdgen::Generator;
using sdgen::test::golden;

void expect_bit_identical(const torch::Tensor& actual, const torch::Tensor& expected) {
  ASSERT_EQ(actual.sizes(), expected.sizes());
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type());
  EXPECT_TRUE(torch::equal(actual, expected))
      << "max |diff| = " << sdgen::test::max_abs_diff(actual, expected);
}

TEST(Rng, MatchesTorchRandnForEveryStoredShape) {
  SDGEN_REQUIRE_SHARED();
  const std::vector<std::vector<int64_t>> shapes = {
      {1, 4, 8, 8}, {2, 4, 8, 8}, {1, 4, 64, 64}, {1, 4, 96, 64}};
  for (const auto& shape : shapes) {
    std::string key = "rng.seed42.";
    for (size_t i = 0; i < shape.size(); ++i) key += (i ? "x" : "") + std::to_string(shape[i]);
    SCOPED_TRACE(key);
    Generator generator(42);
    expect_bit_identical(generator.randn(shape), golden(key));
  }
}

TEST(Rng, SuccessiveDrawsContinueTheStream) {
  SDGEN_REQUIRE_SHARED();
  Generator generator(42);
  const torch::Tensor first = generator.randn({1, 4, 8, 8});
  const torch::Tensor second = generator.randn({1, 4, 8, 8});
  EXPECT_FALSE(torch::equal(first, second));
  expect_bit_identical(first, golden("rng.seed42.1x4x8x8"));
  // torch's CPU normal kernel fills 16-value blocks from consecutive uniforms,
  // so two draws of 256 values equal one draw of 512.
  expect_bit_identical(torch::cat({first, second}, 0), golden("rng.seed42.2x4x8x8"));
}

TEST(Rng, SameSeedSameStreamOtherSeedOtherStream) {
  Generator a(1234), b(1234), c(1235);
  EXPECT_EQ(a.seed(), 1234u);
  const torch::Tensor x = a.randn({3, 5});
  EXPECT_TRUE(torch::equal(x, b.randn({3, 5})));
  EXPECT_FALSE(torch::equal(x, c.randn({3, 5})));
  EXPECT_EQ(x.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(x.device().is_cpu());
  // A small draw (under 16 values, torch's scalar path) is standard normal too.
  const torch::Tensor big = a.randn({100000});
  EXPECT_NEAR(big.mean().item<double>(), 0.0, 0.02);
  EXPECT_NEAR(big.std().item<double>(), 1.0, 0.02);
}

TEST(Rng, DoubleDrawsAreSupported) {
  Generator generator(5);
  const torch::Tensor x = generator.randn({2, 3}, torch::kFloat64);
  EXPECT_EQ(x.scalar_type(), torch::kFloat64);
  EXPECT_EQ(x.numel(), 6);
}

TEST(Rng, RandomSeedIsBelowTwoToThe32) {
  std::set<uint64_t> seen;
  for (int i = 0; i < 16; ++i) {
    const uint64_t seed = sdgen::random_seed();
    EXPECT_LT(seed, uint64_t{1} << 32);
    seen.insert(seed);
  }
  EXPECT_GT(seen.size(), 1u) << "16 draws from std::random_device were all equal";
}

}  // namespace
