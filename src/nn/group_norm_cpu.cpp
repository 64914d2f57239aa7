#include "nn/group_norm_cpu.h"
#include "nn/simd.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>

namespace sdgen::nn {
namespace {

constexpr int kLanes = 16;

inline float bf16_to_float(uint16_t value) {
  const uint32_t bits = static_cast<uint32_t>(value) << 16;
  float result;
  std::memcpy(&result, &bits, sizeof result);
  return result;
}

// Round to nearest even, as c10::BFloat16's constructor; NaN stays NaN.
inline uint16_t float_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return value != value ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(rounded);
}

inline float silu(float x) { return x / (1.0f + exp_approx(-x)); }

// Sums of (x - shift) and (x - shift)^2 over `count` contiguous values; fp32
// in 16 lanes per block of 4096 values, blocks added in double.
SDGEN_SIMD_CLONES void shifted_sums(const uint16_t* x, int64_t count, float shift, double* sum,
                                    double* sum_sq) {
  constexpr int64_t kBlock = 4096;
  double total = 0.0, total_sq = 0.0;
  for (int64_t start = 0; start < count; start += kBlock) {
    const int64_t end = std::min(count, start + kBlock);
    float lane[kLanes] = {}, lane_sq[kLanes] = {};
    int64_t i = start;
    for (; i + kLanes <= end; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const float v = bf16_to_float(x[i + l]) - shift;
        lane[l] += v;
        lane_sq[l] += v * v;
      }
    }
    for (; i < end; ++i) {
      const float v = bf16_to_float(x[i]) - shift;
      lane[0] += v;
      lane_sq[0] += v * v;
    }
    for (int l = 0; l < kLanes; ++l) {
      total += lane[l];
      total_sq += lane_sq[l];
    }
  }
  *sum = total;
  *sum_sq = total_sq;
}

// Per-channel sums over `rows` rows of `channels` values (channels_last):
// fp32 partials per block of rows (in `partial`, 2 * channels floats), added
// into sum / sum_sq (double, `channels` each).
SDGEN_SIMD_CLONES void shifted_row_sums(const uint16_t* x, int64_t rows, int64_t channels,
                                        const float* shift, float* partial, double* sum,
                                        double* sum_sq) {
  constexpr int64_t kBlockRows = 256;
  float* part = partial;
  float* part_sq = partial + channels;
  for (int64_t start = 0; start < rows; start += kBlockRows) {
    const int64_t end = std::min(rows, start + kBlockRows);
    std::fill(part, part + 2 * channels, 0.0f);
    for (int64_t r = start; r < end; ++r) {
      const uint16_t* row = x + r * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const float v = bf16_to_float(row[c]) - shift[c];
        part[c] += v;
        part_sq[c] += v * v;
      }
    }
    for (int64_t c = 0; c < channels; ++c) {
      sum[c] += part[c];
      sum_sq[c] += part_sq[c];
    }
  }
}

SDGEN_SIMD_CLONES void affine(const uint16_t* __restrict x, uint16_t* __restrict y, int64_t count,
                              float scale, float shift, bool apply_silu) {
  if (apply_silu) {
    for (int64_t i = 0; i < count; ++i)
      y[i] = float_to_bf16(silu(bf16_to_float(x[i]) * scale + shift));
  } else {
    for (int64_t i = 0; i < count; ++i) y[i] = float_to_bf16(bf16_to_float(x[i]) * scale + shift);
  }
}

SDGEN_SIMD_CLONES void affine_rows(const uint16_t* __restrict x, uint16_t* __restrict y,
                                   int64_t rows, int64_t channels, const float* scale,
                                   const float* shift, bool apply_silu) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* in = x + r * channels;
    uint16_t* out = y + r * channels;
    if (apply_silu) {
      for (int64_t c = 0; c < channels; ++c)
        out[c] = float_to_bf16(silu(bf16_to_float(in[c]) * scale[c] + shift[c]));
    } else {
      for (int64_t c = 0; c < channels; ++c)
        out[c] = float_to_bf16(bf16_to_float(in[c]) * scale[c] + shift[c]);
    }
  }
}

}  // namespace

at::Tensor group_norm_bf16_cpu(const at::Tensor& x, int64_t groups, const at::Tensor& weight,
                               const at::Tensor& bias, double eps, bool apply_silu) {
  TORCH_CHECK(x.is_cpu() && x.scalar_type() == at::kBFloat16 && x.dim() >= 2,
              "group_norm_bf16_cpu: expected a bf16 CPU tensor [N, C, ...]");
  const int64_t batch = x.size(0), channels = x.size(1);
  TORCH_CHECK(groups > 0 && channels % groups == 0, "group_norm_bf16_cpu: ", channels,
              " channels are not divisible into ", groups, " groups");
  const bool channels_last =
      x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor input = channels_last ? x : x.contiguous();
  at::Tensor output = at::empty_like(input);
  if (input.numel() == 0) return output;
  const int64_t spatial = input.numel() / (batch * channels);
  const auto* in = reinterpret_cast<const uint16_t*>(input.data_ptr<at::BFloat16>());
  auto* out = reinterpret_cast<uint16_t*>(output.data_ptr<at::BFloat16>());

  // Per (sample, channel): mean and sum of squared deviations.
  std::vector<double> mean(batch * channels), m2(batch * channels);
  if (!channels_last) {
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const uint16_t* plane = in + i * spatial;
        const float shift = bf16_to_float(plane[0]);
        double sum, sum_sq;
        shifted_sums(plane, spatial, shift, &sum, &sum_sq);
        mean[i] = shift + sum / spatial;
        m2[i] = std::max(0.0, sum_sq - sum * sum / spatial);
      }
    });
  } else {
    // Rows of `channels` values; each chunk of rows sums into its own arrays,
    // shifted by the sample's first row so that chunks add up exactly.
    const int64_t chunks_per_sample =
        std::max<int64_t>(1, std::min<int64_t>(spatial / 64, 4 * at::get_num_threads()));
    const int64_t rows_per_chunk = (spatial + chunks_per_sample - 1) / chunks_per_sample;
    const int64_t chunks = batch * chunks_per_sample;
    std::vector<double> sums(chunks * channels, 0.0), sums_sq(chunks * channels, 0.0);
    std::vector<float> shifts(batch * channels);
    for (int64_t n = 0; n < batch; ++n)
      for (int64_t c = 0; c < channels; ++c)
        shifts[n * channels + c] = bf16_to_float(in[n * spatial * channels + c]);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> partial(2 * channels);
      for (int64_t k = begin; k < end; ++k) {
        const int64_t n = k / chunks_per_sample, part = k % chunks_per_sample;
        const int64_t row = part * rows_per_chunk;
        const int64_t rows = std::min(spatial, row + rows_per_chunk) - row;
        if (rows <= 0) continue;
        shifted_row_sums(in + (n * spatial + row) * channels, rows, channels,
                         shifts.data() + n * channels, partial.data(), sums.data() + k * channels,
                         sums_sq.data() + k * channels);
      }
    });
    for (int64_t n = 0; n < batch; ++n) {
      for (int64_t c = 0; c < channels; ++c) {
        double sum = 0.0, sum_sq = 0.0;
        for (int64_t part = 0; part < chunks_per_sample; ++part) {
          sum += sums[(n * chunks_per_sample + part) * channels + c];
          sum_sq += sums_sq[(n * chunks_per_sample + part) * channels + c];
        }
        const int64_t i = n * channels + c;
        mean[i] = shifts[i] + sum / spatial;
        m2[i] = std::max(0.0, sum_sq - sum * sum / spatial);
      }
    }
  }

  // Groups from channels (Chan et al.'s parallel variance), then the
  // per-channel affine map y = x * scale + shift.
  const at::Tensor gamma = weight.to(at::kFloat).contiguous();
  const at::Tensor beta = bias.to(at::kFloat).contiguous();
  const float* gamma_data = gamma.data_ptr<float>();
  const float* beta_data = beta.data_ptr<float>();
  const int64_t per_group = channels / groups;
  std::vector<float> scale(batch * channels), shift(batch * channels);
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t first = n * channels + g * per_group;
      double group_mean = 0.0;
      for (int64_t c = 0; c < per_group; ++c) group_mean += mean[first + c];
      group_mean /= per_group;
      double group_m2 = 0.0;
      for (int64_t c = 0; c < per_group; ++c) {
        const double d = mean[first + c] - group_mean;
        group_m2 += m2[first + c] + spatial * d * d;
      }
      const double variance = group_m2 / (static_cast<double>(per_group) * spatial);
      const double rstd = 1.0 / std::sqrt(variance + eps);
      for (int64_t c = 0; c < per_group; ++c) {
        const int64_t channel = g * per_group + c;
        const double s = rstd * gamma_data[channel];
        scale[first + c] = static_cast<float>(s);
        shift[first + c] = static_cast<float>(beta_data[channel] - group_mean * s);
      }
    }
  }

  if (!channels_last) {
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        affine(in + i * spatial, out + i * spatial, spatial, scale[i], shift[i], apply_silu);
    });
  } else {
    at::parallel_for(0, batch * spatial, 256, [&](int64_t begin, int64_t end) {
      // Rows of one sample share the scale/shift arrays; split at samples.
      for (int64_t r = begin; r < end;) {
        const int64_t n = r / spatial;
        const int64_t stop = std::min(end, (n + 1) * spatial);
        affine_rows(in + r * channels, out + r * channels, stop - r, channels,
                    scale.data() + n * channels, shift.data() + n * channels, apply_silu);
        r = stop;
      }
    });
  }
  return output;
}

}  // namespace sdgen::nn
