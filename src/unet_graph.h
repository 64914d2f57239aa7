#pragma once

// The guided UNet step captured in a CUDA graph (private to the library).
//
// One capture covers: [x, x] batching for classifier-free guidance, the UNet
// forward and the guidance combine uncond + g * (cond - uncond), for one
// (batch, height, width, guidance) and static input buffers. Each step copies
// the (already scaled) latents and the timestep into those buffers and
// replays the graph, which removes the per-kernel launch cost that dominates
// a batch-1 UNet on a large GPU. The scheduler update stays outside: its
// coefficients change every step and it is a handful of kernels.

#include <memory>

#include <torch/torch.h>

#include "sdgen/unet.h"

namespace sdgen {

struct UNetGraphKey {
  int64_t batch = 0;  // latents per step (before the CFG doubling)
  int64_t height = 0;
  int64_t width = 0;
  int64_t context_length = 0;
  bool guided = false;
  double cfg_scale = 1.0;
  double guidance_rescale = 0.0;
  bool operator==(const UNetGraphKey& o) const {
    return batch == o.batch && height == o.height && width == o.width &&
           context_length == o.context_length && guided == o.guided && cfg_scale == o.cfg_scale &&
           guidance_rescale == o.guidance_rescale;
  }
};

class UNetGraph {
 public:
  virtual ~UNetGraph() = default;
  virtual const UNetGraphKey& key() const = 0;
  // Sets the text context ([2B or B, L, C]) and, for SDXL, the addition
  // embedding ([2B or B, time_dim]; undefined otherwise) for the following steps.
  virtual void set_context(const torch::Tensor& context, const torch::Tensor& added) = 0;
  // latents [B, 4, h, w] already scaled by the scheduler -> guided noise
  // prediction [B, 4, h, w] (a fresh tensor: schedulers may keep it).
  virtual torch::Tensor run(const torch::Tensor& latents, double t) = 0;
};

// Captures a graph for `key` (warm-up runs included). Returns nullptr when
// this build of libtorch has no CUDA graph support. Throws on capture errors.
std::unique_ptr<UNetGraph> capture_unet_graph(UNet2DConditionModel unet, const UNetGraphKey& key,
                                              const torch::Tensor& context,
                                              const torch::Tensor& added, bool channels_last);

}  // namespace sdgen
