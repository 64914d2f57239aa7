#include "nn/winograd_cpu.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "nn/cpu_parallel.h"
#include "nn/simd.h"

namespace sdgen::nn {
namespace {

// Per-thread buffers (transformed input and products of one band of tiles)
// stay below this, so that a band's matrices stay in the cache.
constexpr int64_t kBandBytes = int64_t{16} << 20;

// U[16][K][C] = G g G^T for every 3x3 kernel g, with
// G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
void transform_weights(const float* w, float* u, int64_t k_count, int64_t c_count, int64_t begin,
                       int64_t end) {
  for (int64_t k = begin; k < end; ++k) {
    for (int64_t c = 0; c < c_count; ++c) {
      const float* g = w + (k * c_count + c) * 9;
      float rows[4][3];  // G g
      for (int j = 0; j < 3; ++j) {
        rows[0][j] = g[j];
        rows[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
        rows[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
        rows[3][j] = g[6 + j];
      }
      for (int i = 0; i < 4; ++i) {
        const float* r = rows[i];
        const float out[4] = {r[0], 0.5f * (r[0] + r[1] + r[2]), 0.5f * (r[0] - r[1] + r[2]), r[2]};
        for (int j = 0; j < 4; ++j) u[((i * 4 + j) * k_count + k) * c_count + c] = out[j];
      }
    }
  }
}

// V = B^T d B for the 4x4 input patch d of every tile in tile rows [i0, i1)
// of one channel plane, with B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
// [0, 1, 0, -1]]; written to v[16][...][tile] (element p of the tiles in a
// row contiguous, so the loops run over tiles and vectorise). The padded
// input columns are split into even and odd ones first: tile j's patch
// covers padded columns 2j .. 2j + 3. `buffer`: 8 (tw + 1) + 16 tw floats.
SDGEN_SIMD_CLONES void transform_input(const float* plane, int64_t h, int64_t w, int64_t i0,
                                       int64_t i1, int64_t tw, float* buffer, float* v,
                                       int64_t v_stride) {
  const int64_t n = tw + 1;
  float* even = buffer;
  float* odd = buffer + 4 * n;
  float* cols = buffer + 8 * n;  // [input row][column combination][tile]
  for (int64_t i = i0; i < i1; ++i) {
    for (int r = 0; r < 4; ++r) {
      const int64_t y = 2 * i - 1 + r;
      float* e = even + r * n;
      float* o = odd + r * n;
      if (y < 0 || y >= h) {
        std::fill(e, e + n, 0.0f);
        std::fill(o, o + n, 0.0f);
        continue;
      }
      // Padded column p is input column p - 1: even[j] = x[2j - 1], odd[j] = x[2j].
      const float* x = plane + y * w;
      e[0] = 0.0f;
      for (int64_t j = 1; j < n; ++j) e[j] = 2 * j - 1 < w ? x[2 * j - 1] : 0.0f;
      for (int64_t j = 0; j < n; ++j) o[j] = 2 * j < w ? x[2 * j] : 0.0f;
    }
    for (int r = 0; r < 4; ++r) {
      const float* e = even + r * n;
      const float* o = odd + r * n;
      float* c0 = cols + (r * 4 + 0) * tw;
      float* c1 = cols + (r * 4 + 1) * tw;
      float* c2 = cols + (r * 4 + 2) * tw;
      float* c3 = cols + (r * 4 + 3) * tw;
      for (int64_t j = 0; j < tw; ++j) {
        c0[j] = e[j] - e[j + 1];
        c1[j] = o[j] + e[j + 1];
        c2[j] = e[j + 1] - o[j];
        c3[j] = o[j] - o[j + 1];
      }
    }
    const int64_t t0 = (i - i0) * tw;
    for (int q = 0; q < 4; ++q) {
      const float* a0 = cols + (0 * 4 + q) * tw;
      const float* a1 = cols + (1 * 4 + q) * tw;
      const float* a2 = cols + (2 * 4 + q) * tw;
      const float* a3 = cols + (3 * 4 + q) * tw;
      float* v0 = v + (0 * 4 + q) * v_stride + t0;
      float* v1 = v + (1 * 4 + q) * v_stride + t0;
      float* v2 = v + (2 * 4 + q) * v_stride + t0;
      float* v3 = v + (3 * 4 + q) * v_stride + t0;
      for (int64_t j = 0; j < tw; ++j) {
        v0[j] = a0[j] - a2[j];
        v1[j] = a1[j] + a2[j];
        v2[j] = a2[j] - a1[j];
        v3[j] = a1[j] - a3[j];
      }
    }
  }
}

// Y = A^T M A + bias for every tile in tile rows [i0, i1) of one output
// plane, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]; `buffer`: 4 tw floats.
SDGEN_SIMD_CLONES void transform_output(const float* m, int64_t m_stride, int64_t i0, int64_t i1,
                                        int64_t tw, int64_t h, int64_t w, float bias, float* plane,
                                        float* buffer) {
  float* y00 = buffer;
  float* y01 = buffer + tw;
  float* y10 = buffer + 2 * tw;
  float* y11 = buffer + 3 * tw;
  const int64_t pairs = w / 2;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t t0 = (i - i0) * tw;
    const float* s[16];
    for (int p = 0; p < 16; ++p) s[p] = m + p * m_stride + t0;
    for (int64_t j = 0; j < tw; ++j) {
      float top[4], bottom[4];
      for (int q = 0; q < 4; ++q) {
        top[q] = s[q][j] + s[4 + q][j] + s[8 + q][j];
        bottom[q] = s[4 + q][j] - s[8 + q][j] - s[12 + q][j];
      }
      y00[j] = top[0] + top[1] + top[2] + bias;
      y01[j] = top[1] - top[2] - top[3] + bias;
      y10[j] = bottom[0] + bottom[1] + bottom[2] + bias;
      y11[j] = bottom[1] - bottom[2] - bottom[3] + bias;
    }
    const int64_t y = 2 * i;
    float* row = plane + y * w;
    for (int64_t j = 0; j < pairs; ++j) {
      row[2 * j] = y00[j];
      row[2 * j + 1] = y01[j];
    }
    if (w % 2 != 0) row[w - 1] = y00[pairs];
    if (y + 1 < h) {
      row += w;
      for (int64_t j = 0; j < pairs; ++j) {
        row[2 * j] = y10[j];
        row[2 * j + 1] = y11[j];
      }
      if (w % 2 != 0) row[w - 1] = y10[pairs];
    }
  }
}

bool winograd_disabled() {
  static const bool disabled = [] {
    const char* env = std::getenv("SDGEN_CPU_WINOGRAD");
    return env != nullptr && std::strcmp(env, "0") == 0;
  }();
  return disabled;
}

}  // namespace

torch::Tensor conv3x3_winograd_always(const torch::Tensor& input, const torch::Tensor& weight,
                                      const torch::Tensor& bias) {
  TORCH_CHECK(input.dim() == 4 && weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 &&
                  weight.size(1) == input.size(1),
              "conv3x3_winograd: expected x [N, C, H, W] and w [K, C, 3, 3]");
  const torch::Tensor x = input.contiguous();
  const torch::Tensor wc = weight.contiguous();
  const int64_t batch = x.size(0), c_count = x.size(1), h = x.size(2), w = x.size(3),
                k_count = wc.size(0);
  torch::Tensor y = torch::empty({batch, k_count, h, w}, x.options());
  if (y.numel() == 0) return y;
  const int64_t th = (h + 1) / 2, tw = (w + 1) / 2;
  const int64_t threads = cpu_worker_slots();

  torch::Tensor u = torch::empty({16, k_count, c_count}, x.options());
  parallel_for_with_state(k_count, 1, [&](int64_t begin, int64_t end) {
    transform_weights(wc.data_ptr<float>(), u.data_ptr<float>(), k_count, c_count, begin, end);
  });

  // Bands of whole tile rows of one image: 256 tiles (512 from 128 pixels
  // wide), fewer where the buffers would pass kBandBytes. Measured on a
  // 2-core AVX2 EPYC for SD1.5's UNet and VAE shapes.
  const int64_t target = tw >= 64 ? 512 : 256;
  const int64_t fit = kBandBytes / (16 * (c_count + k_count) * int64_t{sizeof(float)});
  const int64_t rows_per_band = std::clamp<int64_t>(std::min(target, fit) / tw, 1, th);
  const int64_t bands = (th + rows_per_band - 1) / rows_per_band;
  const int64_t band_tiles = rows_per_band * tw;
  torch::Tensor v_all = torch::empty({threads, 16, c_count, band_tiles}, x.options());
  torch::Tensor m_all = torch::empty({threads, 16, k_count, band_tiles}, x.options());
  torch::Tensor buffers = torch::empty({threads, 8 * (tw + 1) + 16 * tw}, x.options());
  const float* x_data = x.data_ptr<float>();
  float* y_data = y.data_ptr<float>();
  const torch::Tensor b = bias.defined() ? bias.contiguous() : bias;
  const float* b_data = b.defined() ? b.data_ptr<float>() : nullptr;

  // Bands are handed out one at a time, as in attention_rows_parallel.
  const int64_t tasks = batch * bands;
  std::atomic<int64_t> next{0};
  parallel_for_with_state(threads, 1, [&](int64_t /*begin*/, int64_t /*end*/) {
    const int64_t thread = cpu_worker_slot(threads);
    const torch::Tensor v = v_all[thread], m = m_all[thread];
    float* v_data = v.data_ptr<float>();
    float* m_data = m.data_ptr<float>();
    float* buffer = buffers[thread].data_ptr<float>();
    for (int64_t task = next++; task < tasks; task = next++) {
      const int64_t n = task / bands, i0 = (task % bands) * rows_per_band;
      const int64_t i1 = std::min(th, i0 + rows_per_band);
      const int64_t tiles = (i1 - i0) * tw;
      for (int64_t c = 0; c < c_count; ++c) {
        transform_input(x_data + (n * c_count + c) * h * w, h, w, i0, i1, tw, buffer,
                        v_data + c * band_tiles, c_count * band_tiles);
      }
      for (int p = 0; p < 16; ++p) {
        torch::Tensor product = m[p].narrow(1, 0, tiles);
        at::mm_out(product, u[p], v[p].narrow(1, 0, tiles));
      }
      for (int64_t k = 0; k < k_count; ++k) {
        transform_output(m_data + k * band_tiles, k_count * band_tiles, i0, i1, tw, h, w,
                         b_data != nullptr ? b_data[k] : 0.0f, y_data + (n * k_count + k) * h * w,
                         buffer);
      }
    }
  });
  return y;
}

std::optional<torch::Tensor> conv3x3_winograd(const torch::Tensor& x, const torch::Tensor& w,
                                              const torch::Tensor& b) {
  if (!x.defined() || !w.defined() || x.dim() != 4 || !plain_fp32_cpu({&x, &w, &b}) ||
      w.dim() != 4 || w.size(2) != 3 || w.size(3) != 3 || w.size(1) != x.size(1))
    return std::nullopt;
  // channels_last inputs stay with oneDNN, which takes them as they are.
  if (!x.is_contiguous()) return std::nullopt;
  // Below 32x32 the transformed weights are read once per few tiles and the
  // direct convolution is as fast or faster (16x16: equal; 8x8: 1.4x slower).
  if (x.size(2) * x.size(3) < 32 * 32 || winograd_disabled()) return std::nullopt;
  return conv3x3_winograd_always(x, w, b);
}

}  // namespace sdgen::nn
