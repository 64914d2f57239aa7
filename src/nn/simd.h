#pragma once

// Helpers for CPU loops that the compiler vectorises: one build of the
// library for generic x86-64 that still runs AVX-512 or AVX2 code where the
// CPU has it.

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace sdgen::nn {

// A function with this attribute is compiled for AVX-512, AVX2 and plain
// x86-64, and the loader picks the clone for the CPU it runs on (GCC's
// target_clones; other compilers get one generic build).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SDGEN_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SDGEN_SIMD_CLONES
#endif

// exp(x) to about 1 ulp of fp32 (Cephes expf: x = n ln2 + r, a degree-6
// polynomial for exp(r), 2^n from the exponent bits), written so that the
// compiler vectorises it: no calls, no branches, no float-to-int conversion
// (n is rounded by adding 1.5 * 2^23 and read back from the mantissa bits).
// Inputs are clamped to [-87, 88] (exp(-87) = 1.6e-38; below it the true
// result is a denormal, here that bound); NaN propagates through r.
inline float exp_approx(float input) {
  const float x = std::min(std::max(input, -87.0f), 88.0f);
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  const float shifted = x * 1.44269504088896341f + kRound;
  const float n = shifted - kRound;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  uint32_t shifted_bits, round_bits;
  std::memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
  std::memcpy(&round_bits, &kRound, sizeof round_bits);
  const uint32_t bits = (shifted_bits - round_bits + 127u) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace sdgen::nn
