#include "nn/cpu_parallel.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "nn/simd.h"

namespace sdgen::nn {
namespace {

// Rows of a Linear per thread below which one BLAS call for all is as fast.
constexpr int64_t kMinRowsPerThread = 64;

// Score elements (fp32) one thread computes at once: 256 query rows x 4096
// keys = 4 MB, so that a block stays in the L3 cache between the product
// that writes it, the softmax and the product that reads it. Measured on a
// 2-core AVX2 EPYC for SD1.5's 4096-token self-attention (16 x 4096 x 40):
// 0.62 s per call at 256 rows, 0.68 s at 64, 3.05 s for the whole-head
// blocks of one BLAS thread before.
constexpr int64_t kScoreBlockElements = int64_t{1} << 20;

// The largest of n values; NaN is skipped here and propagates through the exp.
SDGEN_SIMD_CLONES float row_max(const float* x, int64_t n) {
  constexpr int kLanes = 16;
  float lane[kLanes];
  std::fill(lane, lane + kLanes, -std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] = std::max(lane[l], x[i + l]);
  for (; i < n; ++i) lane[0] = std::max(lane[0], x[i]);
  return *std::max_element(lane, lane + kLanes);
}

// x[i] = exp((x[i] - max) * scale) for n values; returns their sum. The
// scale is applied after the shift: softmax(scale * s) with s's largest value
// subtracted first, as torch's softmax does with the scaled scores.
SDGEN_SIMD_CLONES float exp_shifted(float* x, int64_t n, float max, float scale) {
  constexpr int kLanes = 16;
  float lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float e = exp_approx((x[i + l] - max) * scale);
      x[i + l] = e;
      lane[l] += e;
    }
  }
  for (; i < n; ++i) {
    const float e = exp_approx((x[i] - max) * scale);
    x[i] = e;
    lane[0] += e;
  }
  double sum = 0.0;
  for (float v : lane) sum += v;
  return static_cast<float>(sum);
}

}  // namespace

bool plain_cpu(std::initializer_list<const at::Tensor*> tensors, at::ScalarType dtype) {
  const bool autograd = at::GradMode::is_enabled();
  return std::all_of(tensors.begin(), tensors.end(), [autograd, dtype](const at::Tensor* t) {
    return !t->defined() || (t->is_cpu() && t->layout() == at::kStrided &&
                             t->scalar_type() == dtype && !(autograd && t->requires_grad()));
  });
}

bool plain_fp32_cpu(std::initializer_list<const at::Tensor*> tensors) {
  return plain_cpu(tensors, at::kFloat);
}

void parallel_for_with_state(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& body) {
  const at::ThreadLocalState state;
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard guard(state);
    body(begin, end);
  });
}

bool cpu_parallel_kernels_enabled() {
#ifdef _OPENMP
  return at::get_num_threads() > 1 && !at::in_parallel_region();
#else
  return false;
#endif
}

int64_t cpu_worker_slots() {
#ifdef _OPENMP
  if (!cpu_parallel_kernels_enabled()) return 1;
  return std::max<int64_t>(at::get_num_threads(), omp_get_max_threads());
#else
  return 1;
#endif
}

int64_t cpu_worker_slot(int64_t slots) {
  const int64_t slot = slots > 1 ? at::get_thread_num() : 0;
  TORCH_CHECK(slot >= 0 && slot < slots, "sdgen CPU kernel: thread ", slot, " of ", slots);
  return slot;
}

std::optional<at::Tensor> linear_rows_parallel(const at::Tensor& x, const at::Tensor& w,
                                               const at::Tensor& b) {
  if (!x.defined() || x.dim() < 2 || !plain_fp32_cpu({&x, &w, &b}) ||
      !cpu_parallel_kernels_enabled())
    return std::nullopt;
  const int64_t in = x.size(-1), out_features = w.size(0);
  const at::Tensor rows = x.reshape({-1, in});
  const int64_t m = rows.size(0);
  if (m < 2 * kMinRowsPerThread || w.size(1) != in) return std::nullopt;
  at::Tensor out = at::empty({m, out_features}, x.options());
  const at::Tensor wt = w.t();
  parallel_for_with_state(m, kMinRowsPerThread, [&](int64_t begin, int64_t end) {
    at::Tensor part = out.narrow(0, begin, end - begin);
    if (b.defined()) {
      at::addmm_out(part, b, rows.narrow(0, begin, end - begin), wt);
    } else {
      at::mm_out(part, rows.narrow(0, begin, end - begin), wt);
    }
  });
  auto sizes = x.sizes().vec();
  sizes.back() = out_features;
  return out.view(sizes);
}

// diffusers' AttnProcessor (baddbmm with beta 0 and scale 1/sqrt(d), softmax,
// bmm) per block of query rows of one batch x head: q k^T into a per-thread
// block, the softmax in place (exp_approx, sums in fp32 lanes and double),
// the block times v, and each output row divided by its sum. Rows are
// independent, so blocking changes nothing but rounding.
std::optional<at::Tensor> attention_rows_parallel(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, bool causal) {
  if (!q.defined() || !k.defined() || !v.defined() || q.dim() != 4 || k.dim() != 4 ||
      v.dim() != 4 || !plain_fp32_cpu({&q, &k, &v}))
    return std::nullopt;
  const int64_t b = q.size(0), h = q.size(1), lq = q.size(2), d = q.size(3), lk = k.size(2),
                dv = v.size(3);
  const int64_t bh = b * h;
  if (bh == 0 || lq == 0 || lk == 0 || d == 0) return std::nullopt;
  // Each head's [L, D] matrix is read in place (split_heads' view of the
  // projection: rows h * D apart), as BLAS takes a row stride; only a last
  // dimension that is not dense needs a copy.
  const auto rows_dense = [](const at::Tensor& t) {
    return t.stride(-1) == 1 ? t : t.contiguous();
  };
  const at::Tensor qd = rows_dense(q), kd = rows_dense(k), vd = rows_dense(v);
  // diffusers' scale is dim_head ** -0.5 in double, rounded to fp32 by baddbmm.
  const auto scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));

  const int64_t threads = cpu_worker_slots();
  int64_t rows = std::clamp<int64_t>(kScoreBlockElements / lk, 1, lq);
  // Enough blocks for every thread to get several.
  while (rows > 16 && bh * ((lq + rows - 1) / rows) < 4 * threads) rows = (rows + 1) / 2;
  const int64_t blocks_per_head = (lq + rows - 1) / rows;

  // [B, Lq, H, Dv], returned as the [B, H, Lq, Dv] view: merge_heads, which
  // every caller applies next, is then free.
  at::Tensor out = at::empty({b, lq, h, dv}, q.options());
  // One score block per thread, allocated here (not on OpenMP's workers).
  // Zeros, not empty: libtorch 1.13's small-product kernels have let
  // uninitialised output bytes through (attention.cpp, attention_scores).
  at::Tensor scratch = at::zeros({threads, rows, lk}, q.options());
  std::vector<float> sums(static_cast<size_t>(threads * rows));
  // Blocks are handed out one at a time (not a fixed share per thread): the
  // threads' BLAS calls run at different speeds, and a static split left one
  // waiting at the end of every call.
  const int64_t tasks = bh * blocks_per_head;
  std::atomic<int64_t> next{0};
  // One call per thread (or one in all where parallel_for stays serial).
  parallel_for_with_state(threads, 1, [&](int64_t /*worker*/, int64_t /*worker_end*/) {
    const int64_t thread = cpu_worker_slot(threads);
    float* sum = sums.data() + thread * rows;
    for (int64_t task = next++; task < tasks; task = next++) {
      const int64_t head = task / blocks_per_head, row0 = (task % blocks_per_head) * rows;
      const int64_t bi = head / h, hi = head % h;
      const int64_t n = std::min(rows, lq - row0);
      at::Tensor scores = scratch[thread].narrow(0, 0, n);
      at::mm_out(scores, qd[bi][hi].narrow(0, row0, n), kd[bi][hi].t());
      float* s = scores.data_ptr<float>();
      for (int64_t r = 0; r < n; ++r) {
        float* row = s + r * lk;
        // Causal: query row0 + r sees keys 0 .. row0 + r.
        const int64_t visible = causal ? std::min(lk, row0 + r + 1) : lk;
        sum[r] = exp_shifted(row, visible, row_max(row, visible), scale);
        std::fill(row + visible, row + lk, 0.0f);
      }
      at::Tensor o = out[bi].narrow(0, row0, n).select(1, hi);
      at::mm_out(o, scores, vd[bi][hi]);
      float* op = o.data_ptr<float>();
      const int64_t stride = o.stride(0);
      for (int64_t r = 0; r < n; ++r) {
        const float inv = 1.0f / sum[r];
        for (int64_t j = 0; j < dv; ++j) op[r * stride + j] *= inv;
      }
    }
  });
  return out.permute({0, 2, 1, 3});
}

}  // namespace sdgen::nn
