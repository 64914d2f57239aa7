#pragma once

// 3x3 convolutions (stride 1, padding 1) on the CPU in fp32 by Winograd's
// algorithms (Lavin and Gray, "Fast Algorithms for Convolutional Neural
// Networks", 2016). F(m x m, 3x3) computes an m x m output tile from an
// (m + 2)^2 input tile with (m + 2)^2 multiplications per input/output
// channel pair instead of 9 m^2: the input tiles and the weights are
// transformed, the products become (m + 2)^2 matrix products over the
// channels, and the output tiles are transformed back.
//
// - F(2x2, 3x3): 16 products per 4 outputs. Its transforms use only 0, +-1
//   and +-1/2, so the result is closer to the exact convolution than
//   oneDNN's direct kernel (3-4e-6 against float64 where oneDNN is 2-6e-5).
// - F(4x4, 3x3): 36 products per 16 outputs; transforms with up to 5 and
//   1/24, so a little less exact (5-9e-5 on SD1.5's shapes, about 2x
//   oneDNN's error; tests/test_layers.cpp).

#include <optional>

#include <ATen/core/Tensor.h>

namespace sdgen::nn {

enum class WinogradKernel {
  kF2Banded,    // F(2x2, 3x3), bands of tile rows per task
  kF4Banded,    // F(4x4, 3x3), bands of tile rows per task (large maps)
  kF2KBlocked,  // F(2x2, 3x3), blocks of output channels per task (small maps)
};

// The kernel sdgen uses for this convolution's shape, or nullopt where
// oneDNN's direct convolution is as fast (few channels, maps under 8x8).
std::optional<WinogradKernel> winograd_kernel_for(int64_t in_channels, int64_t out_channels,
                                                  int64_t height, int64_t width);

// conv2d(x, w, b, stride 1, padding 1) for an fp32 NCHW CPU x [N, C, H, W]
// and w [K, C, 3, 3] (fp32, or fp16 / bf16 weights as fp32-lowmem stores
// them: converted exactly, the result bit-identical to converting first);
// nullopt where it does not apply or would not be faster
// (another dtype, layout or kernel, autograd, winograd_kernel_for's shapes,
// SDGEN_CPU_WINOGRAD=0 in the environment) and the caller takes
// torch::conv2d.
std::optional<at::Tensor> conv3x3_winograd(const at::Tensor& x, const at::Tensor& w,
                                           const at::Tensor& b);

// One kernel without the shape and environment checks, for tests.
at::Tensor conv3x3_winograd_always(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                                   WinogradKernel kernel);

}  // namespace sdgen::nn
