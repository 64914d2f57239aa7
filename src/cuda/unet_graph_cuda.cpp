// CUDA-graph capture of the guided UNet step; compiled only when libtorch has
// CUDA (CMake defines SDGEN_WITH_CUDA). Follows the capture recipe of
// torch.cuda.graphs (warm-up on a side stream, capture on it, replay on the
// current stream).

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/cuda.h>

#include "sdgen/pipeline.h"
#include "unet_graph.h"

namespace sdgen {

namespace {

class CudaUNetGraph : public UNetGraph {
 public:
  CudaUNetGraph(UNet2DConditionModel unet, const UNetGraphKey& key, const torch::Tensor& context,
                const torch::Tensor& added, bool channels_last)
      : unet_(std::move(unet)), key_(key), channels_last_(channels_last) {
    const auto device = context.device();
    const auto dtype = context.scalar_type();
    const int64_t channels = unet_->config().in_channels;
    latents_ = torch::zeros({key.batch, channels, key.height, key.width},
                            torch::TensorOptions().dtype(dtype).device(device));
    if (channels_last_) latents_ = latents_.contiguous(torch::MemoryFormat::ChannelsLast);
    const int64_t rows = key.guided ? 2 * key.batch : key.batch;
    t_ = torch::zeros({rows}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
    context_ = context.clone();
    if (added.defined()) added_ = added.clone();
    t_.fill_(500.0);

    torch::NoGradGuard no_grad;
    torch::cuda::synchronize(device.index());
    auto stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
    {
      c10::cuda::CUDAStreamGuard guard(stream);
      // Warm-up: cuDNN algorithm search, cuBLAS workspaces, lazy inits, all
      // on the capture stream, before capturing.
      for (int i = 0; i < 2; ++i) forward();
      stream.synchronize();
      graph_.capture_begin();
      output_ = forward();
      graph_.capture_end();
    }
    torch::cuda::synchronize(device.index());
  }

  const UNetGraphKey& key() const override { return key_; }

  void set_context(const torch::Tensor& context, const torch::Tensor& added) override {
    if (context.sizes() != context_.sizes())
      throw std::runtime_error("UNet graph: context shape changed");
    if (added.defined() != added_.defined() || (added.defined() && added.sizes() != added_.sizes()))
      throw std::runtime_error("UNet graph: addition embedding shape changed");
    context_.copy_(context);
    if (added.defined()) added_.copy_(added);
  }

  torch::Tensor run(const torch::Tensor& latents, double t) override {
    latents_.copy_(latents);
    t_.fill_(t);
    graph_.replay();
    return output_.clone(torch::MemoryFormat::Contiguous);
  }

 private:
  torch::Tensor forward() {
    auto x = key_.guided ? torch::cat({latents_, latents_}, 0) : latents_;
    if (channels_last_) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
    auto eps = unet_->forward(x, t_, context_, added_);
    if (key_.guided) {
      auto parts = eps.chunk(2, 0);
      eps = combine_guidance(parts[0], parts[1], key_.cfg_scale, key_.guidance_rescale);
    }
    return eps;
  }

  UNet2DConditionModel unet_;
  UNetGraphKey key_;
  bool channels_last_;
  torch::Tensor latents_, t_, context_, added_, output_;
  at::cuda::CUDAGraph graph_;
};

}  // namespace

std::unique_ptr<UNetGraph> capture_unet_graph(UNet2DConditionModel unet, const UNetGraphKey& key,
                                              const torch::Tensor& context,
                                              const torch::Tensor& added, bool channels_last) {
  return std::make_unique<CudaUNetGraph>(std::move(unet), key, context, added, channels_last);
}

}  // namespace sdgen
