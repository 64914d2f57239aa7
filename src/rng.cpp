#include "sdgen/rng.h"

#include <random>

#include <ATen/CPUGeneratorImpl.h>

namespace sdgen {

// torch.Generator("cpu").manual_seed(seed) == a CPUGeneratorImpl constructed
// with that seed (mt19937 seeded, no cached normal sample).
Generator::Generator(uint64_t seed)
    : seed_(seed), generator_(at::detail::createCPUGenerator(seed)) {}

torch::Tensor Generator::randn(at::IntArrayRef shape, torch::ScalarType dtype) {
  // torch::randn locks the generator's mutex itself and uses the same CPU
  // normal kernels as torch.randn, so the stream is the Python one.
  return torch::randn(shape, generator_, torch::TensorOptions().dtype(dtype).device(torch::kCPU));
}

uint64_t random_seed() {
  std::random_device device;
  // std::random_device yields 32-bit unsigned values: exactly [0, 2^32).
  return static_cast<uint64_t>(static_cast<uint32_t>(device()));
}

}  // namespace sdgen
