#include "sdgen/layers.h"

#include "nn/cpu_parallel.h"
#include "nn/group_norm_cpu.h"
#include "nn/winograd_cpu.h"

namespace sdgen::nn {

namespace {
// `t` (a weight or bias) in the layer's compute dtype: itself, or a converted
// copy that lives until the caller's operation is done.
torch::Tensor in_compute_dtype(const torch::Tensor& t,
                               const std::optional<torch::ScalarType>& dtype) {
  return !t.defined() || !dtype || t.scalar_type() == *dtype ? t : t.to(*dtype);
}

// A weight converted into one buffer per thread, reused by every layer: a
// fresh allocation per layer (SD1.5's UNet weights reach 118 MB in fp32)
// comes from mmap and is page-faulted in again each time, which made the
// conversion 18x slower than the conversion itself (9 s against 0.5 s per
// UNet evaluation, 2-core EPYC, issue 33). Only one converted weight is
// alive at a time on a thread (the op is done before the next layer runs);
// under autograd the copy must outlive the op, so it gets its own.
torch::Tensor weight_in_compute_dtype(const torch::Tensor& w,
                                      const std::optional<torch::ScalarType>& dtype) {
  if (!dtype || w.scalar_type() == *dtype || torch::GradMode::is_enabled() || !w.is_cpu())
    return in_compute_dtype(w, dtype);
  thread_local torch::Tensor scratch;
  const int64_t n = w.numel();
  if (!scratch.defined() || scratch.numel() < n || scratch.scalar_type() != *dtype)
    scratch = torch::empty({n}, w.options().dtype(*dtype));
  torch::Tensor out = scratch.narrow(0, 0, n).view(w.sizes());
  out.copy_(w);
  return out;
}
}  // namespace

Conv2dImpl::Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride,
                       int64_t padding, bool bias)
    : stride(stride), padding(padding) {
  weight = register_parameter("weight", torch::empty({out_channels, in_channels, kernel, kernel}));
  if (bias) this->bias = register_parameter("bias", torch::empty({out_channels}));
}

// torch.nn.Conv2d.forward (zeros padding, no dilation, one group).
torch::Tensor Conv2dImpl::forward(const torch::Tensor& x) {
  const auto b = in_compute_dtype(bias, compute_dtype);
  // fp32 3x3 convolutions on the CPU with many channels: Winograd, 1.2-2x
  // faster than oneDNN's direct kernels (src/nn/winograd_cpu.h). It takes
  // fp16/bf16 weights as stored (fp32-lowmem) and converts them itself.
  if (stride == 1 && padding == 1 && (!compute_dtype || *compute_dtype == torch::kFloat32)) {
    if (auto y = conv3x3_winograd(x, weight, b)) return *std::move(y);
  }
  const auto w = weight_in_compute_dtype(weight, compute_dtype);
  return torch::conv2d(x, w, b, {stride, stride}, {padding, padding});
}

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool bias) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}));
  if (bias) this->bias = register_parameter("bias", torch::empty({out_features}));
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  const auto w = weight_in_compute_dtype(weight, compute_dtype);
  const auto b = in_compute_dtype(bias, compute_dtype);
  if (auto y = linear_rows_parallel(x, w, b)) return *std::move(y);
  return torch::linear(x, w, b);
}

GroupNormImpl::GroupNormImpl(int64_t groups, int64_t channels, double eps)
    : groups(groups), eps(eps) {
  weight = register_parameter("weight", torch::ones({channels}));
  bias = register_parameter("bias", torch::zeros({channels}));
}

// bf16 on the CPU is normalised in fp32 (group_norm_bf16_cpu): libtorch
// 1.13's bf16 GroupNorm (channels_last above all) drifted up to 66 8-bit
// levels from the fp32 reference over a 10-step pipeline; in fp32 it stays
// within 7.
namespace {
// The bf16 kernel has no backward: autograd (training) takes libtorch's path.
bool use_bf16_kernel(const torch::Tensor& x, const torch::Tensor& weight) {
  return x.is_cpu() && x.scalar_type() == torch::kBFloat16 &&
         !(torch::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad()));
}

// Under autocast (training in bf16) activations are bf16 and the weights fp32;
// libtorch 1.13's CPU GroupNorm wants one dtype, so it normalises in fp32.
torch::Tensor match_weight(const torch::Tensor& x, const torch::Tensor& weight) {
  return x.scalar_type() == weight.scalar_type() ? x : x.to(weight.scalar_type());
}
}  // namespace

torch::Tensor GroupNormImpl::forward(const torch::Tensor& x) {
  const auto w = in_compute_dtype(weight, compute_dtype), b = in_compute_dtype(bias, compute_dtype);
  if (use_bf16_kernel(x, w)) return group_norm_bf16_cpu(x, groups, w, b, eps, /*silu=*/false);
  return torch::group_norm(match_weight(x, w), groups, w, b, eps);
}

torch::Tensor GroupNormImpl::forward_silu(const torch::Tensor& x) {
  const auto w = in_compute_dtype(weight, compute_dtype), b = in_compute_dtype(bias, compute_dtype);
  if (use_bf16_kernel(x, w)) return group_norm_bf16_cpu(x, groups, w, b, eps, /*silu=*/true);
  auto y = torch::group_norm(match_weight(x, w), groups, w, b, eps);
  // In place saves a tensor, but autograd needs silu's input.
  return torch::GradMode::is_enabled() ? torch::silu(y) : torch::silu_(y);
}

LayerNormImpl::LayerNormImpl(int64_t dim, double eps) : dim(dim), eps(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
  bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  const auto w = in_compute_dtype(weight, compute_dtype), b = in_compute_dtype(bias, compute_dtype);
  return torch::layer_norm(match_weight(x, w), {dim}, w, b, eps);
}

EmbeddingImpl::EmbeddingImpl(int64_t count, int64_t dim) {
  weight = register_parameter("weight", torch::empty({count, dim}));
}

torch::Tensor EmbeddingImpl::forward(const torch::Tensor& ids) {
  // Only the rows looked up are converted.
  return in_compute_dtype(torch::embedding(weight, ids), compute_dtype);
}

void set_compute_dtype(torch::nn::Module& module, torch::ScalarType dtype) {
  for (const auto& m : module.modules(/*include_self=*/true)) {
    if (auto* c = m->as<Conv2dImpl>()) c->compute_dtype = dtype;
    if (auto* l = m->as<LinearImpl>()) l->compute_dtype = dtype;
    if (auto* g = m->as<GroupNormImpl>()) g->compute_dtype = dtype;
    if (auto* n = m->as<LayerNormImpl>()) n->compute_dtype = dtype;
    if (auto* e = m->as<EmbeddingImpl>()) e->compute_dtype = dtype;
  }
}

}  // namespace sdgen::nn
