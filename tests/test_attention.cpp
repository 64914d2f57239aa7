// nn::attention against the textbook formula, including sizes that make it
// work in blocks (bounded memory) and the causal mask across block edges.

#include <cmath>

#include "nn/attention.h"
#include "test_util.h"

namespace sdgen {
namespace {

torch::Tensor reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        bool causal) {
  auto qd = q.to(torch::kDouble), kd = k.to(torch::kDouble), vd = v.to(torch::kDouble);
  auto scores = torch::matmul(qd, kd.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(-1)));
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

TEST(Attention, SplitAndMergeHeads) {
  auto x = torch::randn({2, 5, 12});
  auto s = nn::split_heads(x, 3);
  EXPECT_EQ(s.sizes(), (std::vector<int64_t>{2, 3, 5, 4}));
  EXPECT_TRUE(torch::equal(nn::merge_heads(s), x));
}

}  // namespace
}  // namespace sdgen
