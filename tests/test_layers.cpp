// sdgen's layers against torch's functional ops: the bf16 CPU GroupNorm
// kernel (NCHW and channels_last, fused SiLU) against fp32 group_norm on the
// same bf16 values, the fp32 Winograd convolution against float64 conv2d,
// and the layers' plain forward math.

#include <tuple>

#include "nn/group_norm_cpu.h"
#include "nn/winograd_cpu.h"
#include "sdgen/layers.h"
#include "test_util.h"

namespace sdgen {
namespace {

// Largest |a - b| / (1 + |b|).
double max_relative(const torch::Tensor& a, const torch::Tensor& b) {
  auto ad = a.to(torch::kDouble), bd = b.to(torch::kDouble);
  return ((ad - bd).abs() / (bd.abs() + 1.0)).max().item<double>();
}

struct GroupNormCase {
  std::vector<int64_t> shape;
  int64_t groups;
  double offset;  // added to the input: a large mean tests the shifted sums
  bool channels_last;
  bool silu;
};

class GroupNormBf16 : public ::testing::TestWithParam<GroupNormCase> {};

TEST_P(GroupNormBf16, MatchesFp32GroupNormWithinBf16Rounding) {
  const GroupNormCase& c = GetParam();
  torch::manual_seed(7);
  const int64_t channels = c.shape[1];
  auto x = (torch::randn(c.shape) * 3.0 + c.offset).to(torch::kBFloat16);
  if (c.channels_last) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
  auto weight = torch::randn({channels}).to(torch::kBFloat16);
  auto bias = torch::randn({channels}).to(torch::kBFloat16);

  auto expected = torch::group_norm(x.to(torch::kFloat).contiguous(), c.groups,
                                    weight.to(torch::kFloat), bias.to(torch::kFloat), 1e-5);
  if (c.silu) expected = torch::silu(expected);
  auto actual = nn::group_norm_bf16_cpu(x, c.groups, weight, bias, 1e-5, c.silu);

  EXPECT_EQ(actual.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(actual.sizes(), x.sizes());
  if (c.channels_last) EXPECT_TRUE(actual.is_contiguous(torch::MemoryFormat::ChannelsLast));
  // bf16 keeps 8 significant bits: one rounding is 2^-9 relative.
  EXPECT_LT(max_relative(actual, expected), 4e-3);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GroupNormBf16,
    ::testing::Values(GroupNormCase{{2, 64, 16, 16}, 32, 0.0, false, false},
                      GroupNormCase{{2, 64, 16, 16}, 32, 0.0, true, false},
                      GroupNormCase{{2, 64, 16, 16}, 32, 0.0, false, true},
                      GroupNormCase{{2, 64, 16, 16}, 32, 0.0, true, true},
                      // Odd sizes: lane and block tails, channels not a multiple of 16.
                      GroupNormCase{{1, 6, 7, 5}, 3, 0.0, false, true},
                      GroupNormCase{{3, 6, 7, 5}, 2, 0.0, true, true},
                      GroupNormCase{{1, 40, 65, 67}, 8, 0.0, true, false},
                      GroupNormCase{{1, 40, 65, 67}, 8, 0.0, false, false},
                      // A mean 30x the deviation: naive sums of squares cancel.
                      GroupNormCase{{2, 32, 33, 31}, 4, 100.0, false, false},
                      GroupNormCase{{2, 32, 33, 31}, 4, 100.0, true, false},
                      // [N, C, L] as the transformer blocks use.
                      GroupNormCase{{2, 12, 300}, 4, 0.0, false, true}));

TEST(GroupNormBf16, NonFiniteInputsStayNonFinite) {
  auto x = torch::randn({1, 4, 8, 8}).to(torch::kBFloat16);
  x[0][1][3][3] = std::numeric_limits<float>::quiet_NaN();
  auto y = nn::group_norm_bf16_cpu(x, 2, torch::ones({4}), torch::zeros({4}), 1e-5, true);
  // The NaN's group is NaN throughout; the other group is finite.
  EXPECT_TRUE(torch::isnan(y[0][0]).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(y[0][2]).all().item<bool>());
}

TEST(Layers, GroupNormModuleUsesTheKernelForBf16AndTorchOtherwise) {
  nn::GroupNorm norm(4, 8, 1e-6);
  torch::NoGradGuard no_grad;
  norm->weight.copy_(torch::randn({8}));
  norm->bias.copy_(torch::randn({8}));
  auto x = torch::randn({2, 8, 5, 5});
  auto expected = torch::silu(torch::group_norm(x, 4, norm->weight, norm->bias, 1e-6));
  EXPECT_TRUE(torch::allclose(norm->forward_silu(x), expected, 1e-6, 1e-6));

  norm->to(torch::kBFloat16);
  auto xb = x.to(torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast);
  auto expected_bf16 = torch::silu(torch::group_norm(xb.to(torch::kFloat).contiguous(), 4,
                                                     norm->weight.to(torch::kFloat),
                                                     norm->bias.to(torch::kFloat), 1e-6));
  EXPECT_LT(max_relative(norm->forward_silu(xb), expected_bf16), 4e-3);
  EXPECT_LT(max_relative(norm->forward(xb), torch::group_norm(xb.to(torch::kFloat).contiguous(), 4,
                                                              norm->weight.to(torch::kFloat),
                                                              norm->bias.to(torch::kFloat), 1e-6)),
            4e-3);
}

TEST(Layers, ConvAndLinearFollowTorchFunctional) {
  nn::Conv2d conv(3, 5, 3, 2, 1);
  nn::Linear linear(6, 4);
  torch::NoGradGuard no_grad;
  for (auto& p : conv->parameters()) p.copy_(torch::randn(p.sizes()));
  for (auto& p : linear->parameters()) p.copy_(torch::randn(p.sizes()));
  auto x = torch::randn({2, 3, 9, 9});
  EXPECT_TRUE(torch::allclose(conv(x), torch::conv2d(x, conv->weight, conv->bias, 2, 1)));
  auto v = torch::randn({3, 6});
  EXPECT_TRUE(torch::allclose(linear(v), torch::linear(v, linear->weight, linear->bias)));
}

// Largest |winograd - exact| for x [n, c, h, w] and k output channels, the
// exact result computed in float64.
double winograd_error(nn::WinogradKernel kernel, int64_t n, int64_t c, int64_t k, int64_t h,
                      int64_t w, bool bias) {
  const auto x = torch::randn({n, c, h, w});
  const auto weight = torch::randn({k, c, 3, 3}) / std::sqrt(9.0 * c);
  const auto b = bias ? torch::randn({k}) : torch::Tensor();
  const auto exact = torch::conv2d(x.to(torch::kDouble), weight.to(torch::kDouble),
                                   bias ? b.to(torch::kDouble) : torch::Tensor(), 1, 1);
  const auto y = nn::conv3x3_winograd_always(x, weight, b, kernel);
  EXPECT_EQ(y.sizes(), exact.sizes());
  return test::max_abs_diff(y, exact);
}

TEST(Layers, WinogradConvolutionsMatchTheExactOneOnEveryThreadCount) {
  const int old_threads = at::get_num_threads();
  for (int threads = 1; threads <= 3; ++threads) {
    at::set_num_threads(threads);
    torch::manual_seed(threads);
    // Odd and even sizes (partial 2x2 and 4x4 tiles on the right and bottom
    // edges), one row or column, one channel, batches, with and without
    // bias; several bands of tile rows (130 wide: 512-tile bands of 7 rows
    // for F(2x2), 128-tile bands of 3 rows for F(4x4)); 130 output channels:
    // several blocks of them with a shorter last one.
    const std::vector<std::array<int64_t, 5>> shapes{
        {1, 1, 1, 1, 1},     {1, 3, 5, 7, 9},    {2, 4, 3, 1, 6},    {3, 2, 2, 8, 1},
        {2, 16, 24, 33, 32}, {1, 8, 4, 130, 66}, {2, 5, 130, 10, 7}, {1, 3, 7, 6, 5}};
    for (const auto kernel : {nn::WinogradKernel::kF2Banded, nn::WinogradKernel::kF4Banded,
                              nn::WinogradKernel::kF2KBlocked}) {
      // F(4x4)'s transforms carry larger constants (up to 5 and 1/24): its
      // error is a few times F(2x2)'s (tests at these sizes: <= 1e-5).
      const double tolerance = kernel == nn::WinogradKernel::kF4Banded ? 5e-5 : 2e-5;
      for (const auto& [n, c, k, h, w] : shapes) {
        for (bool bias : {true, false}) {
          EXPECT_LT(winograd_error(kernel, n, c, k, h, w, bias), tolerance)
              << "kernel " << static_cast<int>(kernel) << ": " << n << "x" << c << "->" << k
              << " at " << h << "x" << w << " bias " << bias << ", " << threads << " threads";
        }
      }
    }
  }
  at::set_num_threads(old_threads);
}

TEST(Layers, WinogradKernelsAreChosenByShape) {
  using nn::WinogradKernel;
  // SD1.5's UNet: 320 channels at 64x64, 640 at 32x32, 1280 at 16x16 and 8x8.
  EXPECT_EQ(nn::winograd_kernel_for(320, 320, 64, 64), WinogradKernel::kF4Banded);
  EXPECT_EQ(nn::winograd_kernel_for(640, 320, 64, 64), WinogradKernel::kF4Banded);
  EXPECT_EQ(nn::winograd_kernel_for(320, 640, 32, 32), WinogradKernel::kF2KBlocked);
  EXPECT_EQ(nn::winograd_kernel_for(2560, 1280, 16, 16), WinogradKernel::kF2KBlocked);
  EXPECT_EQ(nn::winograd_kernel_for(1280, 1280, 8, 8), WinogradKernel::kF2KBlocked);
  // The VAE decoder: 512 channels from 64x64, 128 at 512x512.
  EXPECT_EQ(nn::winograd_kernel_for(512, 512, 64, 64), WinogradKernel::kF4Banded);
  EXPECT_EQ(nn::winograd_kernel_for(128, 128, 512, 512), WinogradKernel::kF4Banded);
  // Few channels (the UNet's first and last convolutions, sdgen's small
  // default model), tiny maps: oneDNN.
  EXPECT_FALSE(nn::winograd_kernel_for(4, 320, 64, 64));
  EXPECT_FALSE(nn::winograd_kernel_for(320, 4, 64, 64));
  EXPECT_FALSE(nn::winograd_kernel_for(128, 128, 32, 32));
  EXPECT_FALSE(nn::winograd_kernel_for(64, 64, 512, 512));
  EXPECT_FALSE(nn::winograd_kernel_for(1280, 1280, 4, 4));
}

TEST(Layers, WinogradTakesHalfPrecisionWeightsAsStored) {
  torch::manual_seed(11);
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({2, 6, 11, 9}), b = torch::randn({70});
  for (const auto dtype : {torch::kHalf, torch::kBFloat16}) {
    const auto stored = (torch::randn({70, 6, 3, 3}) / 8.0).to(dtype);
    const auto fp32 = stored.to(torch::kFloat32);
    for (const auto kernel : {nn::WinogradKernel::kF2Banded, nn::WinogradKernel::kF4Banded,
                              nn::WinogradKernel::kF2KBlocked}) {
      EXPECT_TRUE(torch::equal(nn::conv3x3_winograd_always(x, stored, b, kernel),
                               nn::conv3x3_winograd_always(x, fp32, b, kernel)))
          << "kernel " << static_cast<int>(kernel) << ", " << dtype;
    }
  }
  // Through the shape rule: 256 channels at 8x8, fp16 weights.
  const auto x2 = torch::randn({1, 256, 8, 8});
  const auto w2 = (torch::randn({256, 256, 3, 3}) / 48.0).to(torch::kHalf);
  const auto y = nn::conv3x3_winograd(x2, w2, torch::Tensor());
  ASSERT_TRUE(y.has_value());
  EXPECT_TRUE(
      torch::equal(*y, nn::conv3x3_winograd_always(x2, w2.to(torch::kFloat32), torch::Tensor(),
                                                   nn::WinogradKernel::kF2KBlocked)));
  // Half-precision input: not this kernel's.
  EXPECT_FALSE(nn::conv3x3_winograd(x2.to(torch::kHalf), w2, torch::Tensor()).has_value());
}

TEST(Layers, WinogradConvolutionIsUsedOnlyWhereItApplies) {
  const auto x = torch::randn({1, 256, 8, 8});
  const auto w = torch::randn({256, 256, 3, 3}) / 48.0, b = torch::randn({256});
  torch::NoGradGuard no_grad;
  const auto y = nn::conv3x3_winograd(x, w, b);
  ASSERT_TRUE(y.has_value());
  EXPECT_TRUE(
      torch::equal(*y, nn::conv3x3_winograd_always(x, w, b, nn::WinogradKernel::kF2KBlocked)));
  EXPECT_LT(test::max_abs_diff(*y, torch::conv2d(x, w, b, 1, 1)), 1e-4);
  EXPECT_TRUE(nn::conv3x3_winograd(x, w, torch::Tensor()).has_value());
  // Small maps, few channels, channels_last, other dtypes and kernels:
  // torch::conv2d.
  EXPECT_FALSE(nn::conv3x3_winograd(torch::randn({1, 256, 4, 8}), w, b).has_value());
  EXPECT_FALSE(nn::conv3x3_winograd(torch::randn({1, 4, 32, 32}), torch::randn({6, 4, 3, 3}),
                                    torch::randn({6}))
                   .has_value());
  EXPECT_FALSE(
      nn::conv3x3_winograd(x.contiguous(torch::MemoryFormat::ChannelsLast), w, b).has_value());
  EXPECT_FALSE(
      nn::conv3x3_winograd(x.to(torch::kBFloat16), w.to(torch::kBFloat16), b.to(torch::kBFloat16))
          .has_value());
  EXPECT_FALSE(nn::conv3x3_winograd(x, torch::randn({256, 256, 1, 1}), b).has_value());
  EXPECT_FALSE(nn::conv3x3_winograd(x, torch::randn({256, 255, 3, 3}), b).has_value());
}

TEST(Layers, Conv2dTakesWinogradForFp32AndKeepsAutograd) {
  nn::Conv2d conv(256, 256, 3, 1, 1);
  torch::manual_seed(5);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : conv->parameters()) p.copy_(torch::randn(p.sizes()) / 48.0);
  }
  const auto x = torch::randn({2, 256, 12, 10});
  const auto exact = torch::conv2d(x.to(torch::kDouble), conv->weight.to(torch::kDouble),
                                   conv->bias.to(torch::kDouble), 1, 1);
  {
    torch::NoGradGuard no_grad;
    const auto y = conv(x);
    EXPECT_TRUE(torch::equal(y, nn::conv3x3_winograd_always(x, conv->weight, conv->bias,
                                                            nn::WinogradKernel::kF2KBlocked)));
    EXPECT_LT(test::max_abs_diff(y, exact), 2e-5);
  }
  // Training: the parameters require grad, so libtorch's convolution runs.
  const auto y = conv(x);
  EXPECT_TRUE(y.requires_grad());
  y.sum().backward();
  EXPECT_TRUE(conv->weight.grad().defined());
  EXPECT_LT(test::max_abs_diff(y, exact), 1e-4);
}

}  // namespace
}  // namespace sdgen
