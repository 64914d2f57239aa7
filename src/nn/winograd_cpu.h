#pragma once

// 3x3 convolutions (stride 1, padding 1) on the CPU in fp32 by Winograd's
// F(2x2, 3x3) algorithm (Lavin and Gray, "Fast Algorithms for Convolutional
// Neural Networks", 2016): each 2x2 output tile takes 16 multiplications per
// input/output channel pair instead of 36. The input tiles and the weights are
// transformed, the 16 products become 16 matrix products over the channels,
// and the output tiles are transformed back. The transforms use only the
// coefficients 0, +-1 and +-1/2, so the result stays as close to the exact
// convolution as libtorch's own (measured: 3-4e-6 against float64 where
// oneDNN's direct convolution is 2-6e-5; tests/test_layers.cpp).

#include <optional>

#include <torch/torch.h>

namespace sdgen::nn {

// conv2d(x, w, b, stride 1, padding 1) for an fp32 NCHW CPU x [N, C, H, W]
// and w [K, C, 3, 3]; nullopt where it does not apply or would not be faster
// (another dtype, layout or kernel, autograd, feature maps under 32x32,
// SDGEN_CPU_WINOGRAD=0 in the environment) and the caller takes
// torch::conv2d.
std::optional<torch::Tensor> conv3x3_winograd(const torch::Tensor& x, const torch::Tensor& w,
                                              const torch::Tensor& b);

// The same without the size and environment checks, for tests.
torch::Tensor conv3x3_winograd_always(const torch::Tensor& x, const torch::Tensor& w,
                                      const torch::Tensor& b);

}  // namespace sdgen::nn
