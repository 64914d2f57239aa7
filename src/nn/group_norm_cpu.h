#pragma once

// GroupNorm (optionally followed by SiLU) for bf16 tensors on the CPU, with
// the statistics and the normalisation computed in fp32.
//
// libtorch 1.13's own bf16 GroupNorm on the CPU drifts (up to 66 8-bit
// levels over a 10-step pipeline with channels_last), and converting the
// whole tensor to fp32 around at::group_norm costs two extra passes and a
// 2x larger temporary. This kernel reads bf16, accumulates per-channel sums
// (shifted by the channel's first value, combined per group with Chan's
// parallel variance formula) and writes bf16 in the input's memory format
// (NCHW or channels_last), fusing the SiLU that usually follows.

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace sdgen::nn {

// x: [N, C, *] bf16 on the CPU; weight, bias: [C] (any float dtype).
// Follows torch.nn.functional.group_norm (biased variance, eps inside the
// square root); apply_silu applies x * sigmoid(x) to the result.
at::Tensor group_norm_bf16_cpu(const at::Tensor& x, int64_t groups, const at::Tensor& weight,
                               const at::Tensor& bias, double eps, bool apply_silu);

}  // namespace sdgen::nn
