// Multi-tensor (torch::_foreach_*) forms of AdamW, gradient clipping and the
// EMA update (train.h), which train_diffusion uses.

#include <cmath>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "sdgen/error.h"
#include "train/train.h"

namespace sdgen::train {

namespace {

// The key of a parameter's state in a torch::optim optimizer: the address of its
// TensorImpl, printed (libtorch 1.x) or as is (2.x).
template <class Key>
Key optimizer_state_key(const torch::Tensor& p);

template <>
[[maybe_unused]] std::string optimizer_state_key<std::string>(const torch::Tensor& p) {
  std::ostringstream key;  // what c10::guts::to_string writes
  key << p.unsafeGetTensorImpl();
  return key.str();
}

template <>
[[maybe_unused]] void* optimizer_state_key<void*>(const torch::Tensor& p) {
  return p.unsafeGetTensorImpl();
}

}  // namespace

// Follows torch::optim::AdamW::step (torch/csrc/api/src/optim/adamw.cpp),
// operation for operation, with each operation applied to all the parameters at once.
void adamw_step_multi_tensor(torch::optim::AdamW& optimizer) {
  torch::NoGradGuard no_grad;
  auto& states = optimizer.state();
  using Key = typename std::decay_t<decltype(states)>::key_type;
  for (auto& group : optimizer.param_groups()) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    if (options.amsgrad()) throw Error("adamw_step_multi_tensor: amsgrad is not supported");
    std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs;
    int64_t step = -1;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const auto key = optimizer_state_key<Key>(p);
      auto found = states.find(key);
      if (found == states.end()) {
        auto state = std::make_unique<torch::optim::AdamWParamState>();
        state->step(0);
        state->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        state->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        found = states.insert_or_assign(key, std::move(state)).first;
      }
      auto& state = static_cast<torch::optim::AdamWParamState&>(*found->second);
      state.step(state.step() + 1);
      if (step < 0) step = state.step();
      if (state.step() != step)
        throw Error("adamw_step_multi_tensor: parameters of a group at different steps");
      params.push_back(p);
      grads.push_back(p.grad());
      exp_avgs.push_back(state.exp_avg());
      exp_avg_sqs.push_back(state.exp_avg_sq());
    }
    if (params.empty()) continue;
    if (options.weight_decay() != 0)
      at::_foreach_mul_(params, 1 - options.lr() * options.weight_decay());
    const auto [beta1, beta2] = options.betas();
    const double bias_correction1 = 1 - std::pow(beta1, step);
    const double bias_correction2 = 1 - std::pow(beta2, step);
    at::_foreach_mul_(exp_avgs, beta1);
    at::_foreach_add_(exp_avgs, grads, 1 - beta1);
    at::_foreach_mul_(exp_avg_sqs, beta2);
    at::_foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2);
    auto denom = at::_foreach_sqrt(exp_avg_sqs);
    at::_foreach_div_(denom, std::sqrt(bias_correction2));
    at::_foreach_add_(denom, options.eps());
    at::_foreach_addcdiv_(params, exp_avgs, denom, -options.lr() / bias_correction1);
  }
}

// Follows torch::nn::utils::clip_grad_norm_ (2-norm, no finiteness check).
double clip_grad_norm_multi_tensor(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return 0.0;
  const auto norms = at::_foreach_norm(grads, 2);
  const auto total = norms.size() == 1 ? norms[0] : torch::stack(norms).norm(2);
  const double total_norm = total.item<double>();
  // clip_grad_norm_ multiplies by its clamped coefficient, a float tensor.
  const float coef = torch::clamp_max(max_norm / (total + 1e-6), 1.0).item<float>();
  at::_foreach_mul_(grads, coef);
  return total_norm;
}

void ema_update_multi_tensor(std::vector<torch::Tensor>& ema,
                             const std::vector<torch::Tensor>& params, double decay) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> detached;
  detached.reserve(params.size());
  for (const auto& p : params) detached.push_back(p.detach());
  at::_foreach_mul_(ema, decay);
  at::_foreach_add_(ema, detached, 1 - decay);
}

}  // namespace sdgen::train
