#pragma once

// Seeded randomness, bit-identical to torch.Generator("cpu").manual_seed(seed)
// followed by torch.randn(...) calls in the same order.

#include <cstdint>

#include <torch/torch.h>

namespace sdgen {

// One CPU random stream (a libtorch CPUGeneratorImpl: mt19937 plus the cached
// Box-Muller sample), seeded like torch.Generator("cpu").manual_seed(seed).
// All noise of a run is drawn from it on the CPU, in the order diffusers draws
// it, and moved to the model's device afterwards (diffusers' randn_tensor does
// the same for a CPU generator), so images do not depend on the device.
class Generator {
 public:
  explicit Generator(uint64_t seed);
  // Standard normal tensor on the CPU, advancing the generator exactly as
  // torch.randn(shape, generator=g, dtype=dtype) does. float32 by default.
  torch::Tensor randn(at::IntArrayRef shape, torch::ScalarType dtype = torch::kFloat32);
  uint64_t seed() const { return seed_; }
  at::Generator& get() { return generator_; }

 private:
  uint64_t seed_;
  at::Generator generator_;
};

// A seed from the operating system's entropy, for runs without --seed.
// In [0, 2^32) like A1111's seeds, so that a printed seed is easy to retype.
uint64_t random_seed();

}  // namespace sdgen
