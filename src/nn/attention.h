#pragma once

#include <torch/torch.h>

namespace sdgen::nn {

// softmax(q k^T / sqrt(d) [+ causal mask]) v for q [B, H, Lq, D], k/v [B, H, Lk, D].
// Uses at::scaled_dot_product_attention (flash / memory-efficient kernels)
// on libtorch >= 2.0 and an explicit baddbmm + softmax on 1.13.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        bool causal = false);

// [B, L, H*D] -> [B, H, L, D]
torch::Tensor split_heads(const torch::Tensor& x, int64_t heads);
// [B, H, L, D] -> [B, L, H*D]
torch::Tensor merge_heads(const torch::Tensor& x);

}  // namespace sdgen::nn
