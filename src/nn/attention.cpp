#include "nn/attention.h"

#include "nn/cpu_parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>

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

namespace {

// Upper bound on the score elements materialised at once. One SD1.5
// self-attention at a 64x64 latent would otherwise build a 16x4096x4096 fp32
// score tensor (1 GiB), twice (scores and probabilities); blocks of at most
// this many elements keep memory bounded and stay below glibc's mmap
// threshold, so buffers are reused instead of page-faulted in on every call.
constexpr int64_t kScoreBlockElements = int64_t{1} << 22;  // 16 MiB in fp32

// q @ k^T * scale for [n, lq, d] x [n, d, lk], as diffusers' AttnProcessor
// computes it (baddbmm with beta 0). Written into a tensor that starts as
// zeros for small products: libtorch 1.13's CPU baddbmm from torch::empty
// with beta 0 gave NaN scores from finite q and k now and then when the
// product was small (d * lq * lk < 400 takes its own kernel, not BLAS), so a
// 64x64 image through a 4-level UNet (attention at 1x1) failed with NaN
// latents in about 1 process in 8 (valgrind: uninitialised bytes reaching
// the scores). In place from zeros: no failure in 120 runs, and the same
// bytes as the runs that passed before. Large products take BLAS, which
// ignores the old contents when beta is 0, so they skip the memset.
torch::Tensor attention_scores(const torch::Tensor& q, const torch::Tensor& kt, double scale) {
  constexpr int64_t kZeroFillBelow = 4096;  // elements x depth; libtorch's bound is 400
  const int64_t n = q.size(0), lq = q.size(1), d = q.size(2), lk = kt.size(2);
  auto scores = d * lq * lk < kZeroFillBelow ? torch::zeros({n, lq, lk}, q.options())
                                             : torch::empty({n, lq, lk}, q.options());
  return scores.baddbmm_(q, kt, 0.0, scale);
}

// Same math as diffusers' AttnProcessor (baddbmm with beta 0, softmax, bmm),
// computed over blocks of (batch*head) x query rows; each output row depends
// only on its own query, so blocking does not change the result.
torch::Tensor blocked_attention(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, bool causal) {
  const auto b = q.size(0), h = q.size(1), lq = q.size(2), d = q.size(3), lk = k.size(2);
  const auto bh = b * h;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  auto q3 = q.reshape({bh, lq, d});
  auto kt = k.reshape({bh, lk, d}).transpose(1, 2);
  auto v3 = v.reshape({bh, lk, d});
  const int64_t rows = std::min(lq, std::max<int64_t>(1, kScoreBlockElements / lk));
  const int64_t heads = std::min(bh, std::max<int64_t>(1, kScoreBlockElements / (rows * lk)));
  if (rows == lq && heads == bh && !causal) {
    auto scores = attention_scores(q3, kt, scale);
    return torch::bmm(scores.softmax(-1), v3).view({b, h, lq, d});
  }
  auto out = torch::empty({bh, lq, d}, q.options());
  for (int64_t h0 = 0; h0 < bh; h0 += heads) {
    const int64_t hn = std::min(heads, bh - h0);
    auto kt_h = kt.narrow(0, h0, hn);
    auto v_h = v3.narrow(0, h0, hn);
    for (int64_t q0 = 0; q0 < lq; q0 += rows) {
      const int64_t qn = std::min(rows, lq - q0);
      auto scores = attention_scores(q3.narrow(0, h0, hn).narrow(1, q0, qn), kt_h, scale);
      if (causal) {
        // Query i (absolute q0 + i) sees keys 0..q0+i.
        auto mask =
            torch::ones({qn, lk}, torch::dtype(torch::kBool).device(q.device())).triu(q0 + 1);
        scores.masked_fill_(mask, -std::numeric_limits<float>::infinity());
      }
      out.narrow(0, h0, hn).narrow(1, q0, qn).copy_(torch::bmm(scores.softmax(-1), v_h));
    }
  }
  return out.view({b, h, lq, d});
}

}  // namespace

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        bool causal) {
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, k, v, {}, 0.0, causal);
#else
  // fp32 on the CPU: blocks of query rows on every thread (libtorch 1.13's
  // bmm makes one single-threaded BLAS call per matrix).
  if (auto out = attention_rows_parallel(q, k, v, causal)) return *std::move(out);
  return blocked_attention(q, k, v, causal);
#endif
}

}  // namespace sdgen::nn
