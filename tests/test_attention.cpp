// nn::attention against the textbook formula, including sizes that make it
// work in blocks (bounded memory) and the causal mask across block edges; the
// CPU kernels that split rows over threads (nn/cpu_parallel.h) on 1-3 threads.

#include <cmath>

#include "nn/attention.h"
#include "nn/cpu_parallel.h"
#include "test_util.h"

namespace sdgen {
namespace {

torch::Tensor reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        bool causal) {
  auto qd = q.to(torch::kDouble), kd = k.to(torch::kDouble), vd = v.to(torch::kDouble);
  auto scores =
      torch::matmul(qd, kd.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(-1)));
  if (causal) {
    auto mask = torch::ones({q.size(2), k.size(2)}, torch::kBool).triu(1);
    scores.masked_fill_(mask, -INFINITY);
  }
  return torch::matmul(scores.softmax(-1), vd).to(q.scalar_type());
}

void check(int64_t b, int64_t h, int64_t lq, int64_t lk, int64_t d, bool causal) {
  torch::manual_seed(lq + lk);
  auto q = torch::randn({b, h, lq, d}), k = torch::randn({b, h, lk, d}),
       v = torch::randn({b, h, lk, d});
  const double err = test::max_abs_diff(nn::attention(q, k, v, causal), reference(q, k, v, causal));
  EXPECT_LT(err, 1e-5) << b << "x" << h << "x" << lq << "x" << lk << " causal " << causal;
}

TEST(Attention, SmallMatchesReference) {
  check(2, 4, 77, 77, 8, true);
  check(2, 4, 64, 77, 8, false);  // cross-attention
}

TEST(Attention, BlockedMatchesReference) {
  check(2, 2, 4096, 4096, 8, false);  // 2x2x4096x4096 scores: worked in query blocks
  check(1, 3, 2500, 2500, 4, true);   // causal mask across block edges
}

// Sets libtorch's thread count for one test and puts the old one back.
class Threads {
 public:
  explicit Threads(int n) : old_(at::get_num_threads()) { at::set_num_threads(n); }
  ~Threads() { at::set_num_threads(old_); }
  Threads(const Threads&) = delete;
  Threads& operator=(const Threads&) = delete;

 private:
  int old_;
};

// The row-parallel kernel itself (nn::attention takes it for fp32 CPU
// tensors on libtorch 1.13; libtorch 2 uses scaled_dot_product_attention).
void check_kernel(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                  bool causal, const std::string& what) {
  const auto out = nn::attention_rows_parallel(q, k, v, causal);
  ASSERT_TRUE(out.has_value()) << what;
  EXPECT_EQ(out->sizes(), (std::vector<int64_t>{q.size(0), q.size(1), q.size(2), v.size(3)}));
  EXPECT_LT(test::max_abs_diff(*out, reference(q, k, v, causal)), 1e-5) << what;
}

TEST(Attention, RowParallelKernelMatchesReferenceOnOneToThreeThreads) {
  for (int threads = 1; threads <= 3; ++threads) {
    const Threads scope(threads);
    const std::string on = " on " + std::to_string(threads) + " threads";
    torch::manual_seed(threads);
    // Self-attention with a block edge inside a head, 8 heads of 40 as SD1.5.
    check_kernel(torch::randn({2, 8, 300, 40}), torch::randn({2, 8, 300, 40}),
                 torch::randn({2, 8, 300, 40}), false, "self" + on);
    // Causal (the text encoder), cross-attention with 77 keys, v wider than q.
    check_kernel(torch::randn({1, 3, 77, 16}), torch::randn({1, 3, 77, 16}),
                 torch::randn({1, 3, 77, 16}), true, "causal" + on);
    check_kernel(torch::randn({2, 4, 130, 8}), torch::randn({2, 4, 77, 8}),
                 torch::randn({2, 4, 77, 12}), false, "cross" + on);
    // Heads as split_heads leaves them (views with rows H * D apart), and a
    // last dimension that is not dense (copied first).
    const auto x = torch::randn({2, 333, 6 * 8});
    check_kernel(nn::split_heads(x, 6), nn::split_heads(x * 0.5, 6), nn::split_heads(x + 1, 6),
                 false, "split_heads views" + on);
    const auto t = torch::randn({1, 2, 8, 50}).transpose(2, 3);
    check_kernel(t, t * 2, t, true, "transposed" + on);
    // Long rows: 1M score elements per block means 256 rows of 4096 keys.
    check_kernel(torch::randn({1, 2, 600, 4}), torch::randn({1, 2, 4100, 4}),
                 torch::randn({1, 2, 4100, 4}), false, "4100 keys" + on);
  }
}

TEST(Attention, RowParallelKernelKeepsNonFiniteRowsToThemselves) {
  auto q = torch::randn({1, 2, 40, 8}), k = torch::randn({1, 2, 40, 8}),
       v = torch::randn({1, 2, 40, 8});
  q[0][1][7][3] = NAN;
  const auto out = nn::attention_rows_parallel(q, k, v, false);
  ASSERT_TRUE(out.has_value());
  EXPECT_TRUE(torch::isnan((*out)[0][1][7]).all().item<bool>());
  auto finite = out->clone();
  finite[0][1][7] = 0;
  EXPECT_TRUE(torch::isfinite(finite).all().item<bool>());
}

TEST(Attention, RowParallelKernelLeavesOtherCasesToLibtorch) {
  const auto f = torch::randn({1, 2, 16, 8});
  EXPECT_FALSE(nn::attention_rows_parallel(f.to(torch::kBFloat16), f.to(torch::kBFloat16),
                                           f.to(torch::kBFloat16), false));
  EXPECT_FALSE(nn::attention_rows_parallel(f.to(torch::kDouble), f, f, false));
  const auto g = f.clone().requires_grad_();
  EXPECT_FALSE(nn::attention_rows_parallel(g, f, f, false));  // autograd: blocked_attention
  {
    const torch::NoGradGuard no_grad;
    EXPECT_TRUE(nn::attention_rows_parallel(g, f, f, false));
  }
  // Through nn::attention the gradient still flows.
  nn::attention(g, f, f).sum().backward();
  EXPECT_TRUE(g.grad().defined());
}

TEST(Attention, LinearRowsParallelMatchesTorchLinear) {
  const Threads scope(2);
  // With GCC (OpenMP) the kernels use the threads; other compilers run them on one.
#if defined(__GNUC__) && !defined(__clang__)
  EXPECT_TRUE(nn::cpu_parallel_kernels_enabled());
#endif
  torch::manual_seed(3);
  const auto w = torch::randn({96, 40}), b = torch::randn({96});
  for (const auto& x :
       {torch::randn({2, 257, 40}), torch::randn({40, 300}).t(), torch::randn({3, 2, 129, 40})}) {
    for (const auto& bias : {b, torch::Tensor()}) {
      const auto y = nn::linear_rows_parallel(x, w, bias);
      ASSERT_TRUE(y.has_value());
      EXPECT_EQ(y->sizes(), torch::linear(x, w, bias).sizes());
      EXPECT_LT(test::max_abs_diff(*y, torch::linear(x, w, bias)), 1e-4);
    }
  }
  // Few rows, another dtype, autograd: torch::linear's business.
  EXPECT_FALSE(nn::linear_rows_parallel(torch::randn({2, 40}), w, b));
  EXPECT_FALSE(nn::linear_rows_parallel(torch::randn({300, 40}).to(torch::kBFloat16),
                                        w.to(torch::kBFloat16), b.to(torch::kBFloat16)));
  EXPECT_FALSE(nn::linear_rows_parallel(torch::randn({300, 40}), w.clone().requires_grad_(), b));
}

TEST(Attention, SplitAndMergeHeads) {
  auto x = torch::randn({2, 5, 12});
  auto s = nn::split_heads(x, 3);
  EXPECT_EQ(s.sizes(), (std::vector<int64_t>{2, 3, 5, 4}));
  EXPECT_TRUE(torch::equal(nn::merge_heads(s), x));
}

}  // namespace
}  // namespace sdgen
