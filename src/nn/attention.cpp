#include "nn/attention.h"

#include <cmath>

#include <torch/version.h>

namespace sdgen::nn {

torch::Tensor split_heads(const torch::Tensor& x, int64_t heads) {
  const auto b = x.size(0), l = x.size(1), c = x.size(2);
  return x.view({b, l, heads, c / heads}).transpose(1, 2);
}

torch::Tensor merge_heads(const torch::Tensor& x) {
  const auto b = x.size(0), h = x.size(1), l = x.size(2), d = x.size(3);
  return x.transpose(1, 2).reshape({b, l, h * d});
}

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        bool causal) {
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, k, v, {}, 0.0, causal);
#else
  // Same math as diffusers' AttnProcessor (baddbmm with beta 0, softmax, bmm).
  const auto b = q.size(0), h = q.size(1), lq = q.size(2), d = q.size(3), lk = k.size(2);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  auto q3 = q.reshape({b * h, lq, d});
  auto k3 = k.reshape({b * h, lk, d});
  auto v3 = v.reshape({b * h, lk, d});
  auto scores = torch::baddbmm(torch::empty({b * h, lq, lk}, q.options()), q3, k3.transpose(1, 2),
                               /*beta=*/0.0, /*alpha=*/scale);
  if (causal) {
    auto mask = torch::ones({lq, lk}, torch::dtype(torch::kBool).device(q.device())).triu(1);
    scores.masked_fill_(mask, -std::numeric_limits<float>::infinity());
  }
  auto probs = scores.softmax(-1);
  return torch::bmm(probs, v3).view({b, h, lq, d});
#endif
}

}  // namespace sdgen::nn
