// sdgen's layers against torch's functional ops: the bf16 CPU GroupNorm
// kernel (NCHW and channels_last, fused SiLU) against fp32 group_norm on the
// same bf16 values, and the layers' plain forward math.

#include <tuple>

#include "nn/group_norm_cpu.h"
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

}  // namespace
}  // namespace sdgen
