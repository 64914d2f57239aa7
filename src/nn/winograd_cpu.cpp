#include "nn/winograd_cpu.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>

#include "nn/cpu_parallel.h"
#include "nn/simd.h"

namespace sdgen::nn {
namespace {

// Per-thread buffers of the banded kernels (transformed input and products of
// one band of tiles) stay below this, so that a band's matrices stay in the
// cache.
constexpr int64_t kBandBytes = int64_t{16} << 20;

// The k-blocked kernel transforms the input of this many bytes at most at
// once (a batch of images is done in groups below it).
constexpr int64_t kBlockedInputBytes = int64_t{64} << 20;

// Output channels per task of the k-blocked kernel (rounded so that every
// thread gets the same number of blocks). Measured on SD1.5's 16x16 and 32x32
// shapes: 64 and 128 within the noise, 32 slower.
constexpr int64_t kOutputChannelsPerBlock = 64;

// ---- F(2x2, 3x3): 4x4 input tiles, 2x2 output tiles -----------------------

// The weights w[K][C][3][3] as stored: fp32, or fp16 / bf16 (fp32-lowmem
// keeps the checkpoint's half-precision weights; converting them here, exact,
// saves a pass over every weight).
struct Weights {
  const void* data;
  at::ScalarType type;
};

// The 9 weights of output channel k's kernels, w[k][c][t], as fp32 g[t][c] in
// `buffer`, so that the transforms below run over the input channels and
// vectorise.
template <typename T>
void regroup_by_tap(const T* src, int64_t c_count, float* buffer) {
  for (int64_t c = 0; c < c_count; ++c) {
    for (int t = 0; t < 9; ++t) buffer[t * c_count + c] = static_cast<float>(src[c * 9 + t]);
  }
}
const float* weights_by_tap(const Weights& w, int64_t k, int64_t c_count, float* buffer) {
  const int64_t offset = k * c_count * 9;
  switch (w.type) {
    case at::kHalf:
      regroup_by_tap(static_cast<const at::Half*>(w.data) + offset, c_count, buffer);
      break;
    case at::kBFloat16:
      regroup_by_tap(static_cast<const at::BFloat16*>(w.data) + offset, c_count, buffer);
      break;
    default:
      regroup_by_tap(static_cast<const float*>(w.data) + offset, c_count, buffer);
  }
  return buffer;
}

// G g G^T for one output channel's kernels g (by tap, weights_by_tap) into
// u[p * u_stride + c], with G = [[1, 0, 0], [1/2, 1/2, 1/2],
// [1/2, -1/2, 1/2], [0, 0, 1]].
SDGEN_SIMD_CLONES void kernel_f2(const float* g, int64_t c_count, float* u, int64_t u_stride) {
#pragma GCC ivdep
  for (int64_t c = 0; c < c_count; ++c) {
    float rows[4][3];  // G g
    for (int j = 0; j < 3; ++j) {
      const float top = g[j * c_count + c], middle = g[(3 + j) * c_count + c],
                  bottom = g[(6 + j) * c_count + c];
      rows[0][j] = top;
      rows[1][j] = 0.5f * (top + middle + bottom);
      rows[2][j] = 0.5f * (top - middle + bottom);
      rows[3][j] = bottom;
    }
    for (int i = 0; i < 4; ++i) {
      const float* r = rows[i];
      u[(i * 4 + 0) * u_stride + c] = r[0];
      u[(i * 4 + 1) * u_stride + c] = 0.5f * (r[0] + r[1] + r[2]);
      u[(i * 4 + 2) * u_stride + c] = 0.5f * (r[0] - r[1] + r[2]);
      u[(i * 4 + 3) * u_stride + c] = r[2];
    }
  }
}

// V = B^T d B for the 4x4 input patch d of every tile in tile rows [i0, i1)
// of one channel plane, with B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
// [0, 1, 0, -1]]; written to v[16][...][tile] (element p of the tiles in a
// row contiguous, so the loops run over tiles and vectorise). The padded
// input columns are split into even and odd ones first: tile j's patch
// covers padded columns 2j .. 2j + 3. `buffer`: input_buffer_f2(tw) floats.
int64_t input_buffer_f2(int64_t tw) { return 8 * (tw + 1) + 16 * tw; }
SDGEN_SIMD_CLONES void input_f2(const float* plane, int64_t h, int64_t w, int64_t i0, int64_t i1,
                                int64_t tw, float* buffer, float* v, int64_t v_stride) {
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
// plane, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]; `buffer`: output_buffer_f2(tw).
int64_t output_buffer_f2(int64_t tw) { return 4 * tw; }
SDGEN_SIMD_CLONES void output_f2(const float* m, int64_t m_stride, int64_t i0, int64_t i1,
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

// ---- F(4x4, 3x3): 6x6 input tiles, 4x4 output tiles -----------------------
// The matrices of Lavin and Gray's paper (interpolation points 0, +-1, +-2).

// G (a, b, c)^T with G = [[1/4, 0, 0], [-1/6, -1/6, -1/6],
// [-1/6, 1/6, -1/6], [1/24, 1/12, 1/6], [1/24, -1/12, 1/6], [0, 0, 1]].
inline void g_f4(float a, float b, float c, float* out) {
  constexpr float kSixth = 1.0f / 6.0f, kTwelfth = 1.0f / 12.0f, kTwentyFourth = 1.0f / 24.0f;
  const float even = a * kTwentyFourth + c * kSixth, odd = b * kTwelfth;
  out[0] = 0.25f * a;
  out[1] = -(a + b + c) * kSixth;
  out[2] = -(a - b + c) * kSixth;
  out[3] = even + odd;
  out[4] = even - odd;
  out[5] = c;
}

// G g G^T for one output channel's kernels (by tap) into u[p * u_stride + c].
SDGEN_SIMD_CLONES void kernel_f4(const float* g, int64_t c_count, float* u, int64_t u_stride) {
#pragma GCC ivdep
  for (int64_t c = 0; c < c_count; ++c) {
    float columns[3][6];  // column j of G g
    for (int j = 0; j < 3; ++j) {
      g_f4(g[j * c_count + c], g[(3 + j) * c_count + c], g[(6 + j) * c_count + c], columns[j]);
    }
    for (int i = 0; i < 6; ++i) {
      float out[6];
      g_f4(columns[0][i], columns[1][i], columns[2][i], out);
      for (int j = 0; j < 6; ++j) u[(i * 6 + j) * u_stride + c] = out[j];
    }
  }
}

// B^T d for d = (d0 .. d5), B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0],
// [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0],
// [0, 4, 0, -5, 0, 1]].
struct Six {
  float s[6];
};
inline Six bt_f4(float d0, float d1, float d2, float d3, float d4, float d5) {
  return {{4.0f * d0 - 5.0f * d2 + d4, d3 + d4 - 4.0f * (d1 + d2), d4 - d3 + 4.0f * (d1 - d2),
           d4 - d2 + 2.0f * (d3 - d1), d4 - d2 - 2.0f * (d3 - d1), 4.0f * d1 - 5.0f * d3 + d5}};
}

// V = B^T d B for every tile in tile rows [i0, i1) of one plane, as
// input_f2. Each input row is split by column modulo 4 first: tile j's patch
// covers padded columns 4j .. 4j + 5, i.e. phase p's elements j and j + 1.
int64_t input_buffer_f4(int64_t tw) { return 24 * (tw + 2) + 36 * tw; }
SDGEN_SIMD_CLONES void input_f4(const float* plane, int64_t h, int64_t w, int64_t i0, int64_t i1,
                                int64_t tw, float* buffer, float* v, int64_t v_stride) {
  const int64_t n = tw + 2;
  float* phases = buffer;         // [input row][column modulo 4][n]
  float* cols = buffer + 24 * n;  // [input row][B^T row][tile]
  for (int64_t i = i0; i < i1; ++i) {
    for (int r = 0; r < 6; ++r) {
      const int64_t y = 4 * i - 1 + r;
      float* row_phases = phases + r * 4 * n;
      if (y < 0 || y >= h) {
        std::fill(row_phases, row_phases + 4 * n, 0.0f);
        continue;
      }
      const float* x = plane + y * w;
      for (int p = 0; p < 4; ++p) {
        float* d = row_phases + p * n;
        for (int64_t j = 0; j < n; ++j) {
          const int64_t col = 4 * j + p - 1;  // padded column 4j + p
          d[j] = col >= 0 && col < w ? x[col] : 0.0f;
        }
      }
    }
    for (int r = 0; r < 6; ++r) {
      const float* p0 = phases + r * 4 * n;
      const float* p1 = p0 + n;
      const float* p2 = p1 + n;
      const float* p3 = p2 + n;
      float* c = cols + r * 6 * tw;
      for (int64_t j = 0; j < tw; ++j) {
        const Six t = bt_f4(p0[j], p1[j], p2[j], p3[j], p0[j + 1], p1[j + 1]);
        for (int s = 0; s < 6; ++s) c[s * tw + j] = t.s[s];
      }
    }
    const int64_t t0 = (i - i0) * tw;
    for (int q = 0; q < 6; ++q) {
      const float* a[6];
      float* out[6];
      for (int r = 0; r < 6; ++r) {
        a[r] = cols + (r * 6 + q) * tw;
        out[r] = v + (r * 6 + q) * v_stride + t0;
      }
      for (int64_t j = 0; j < tw; ++j) {
        const Six t = bt_f4(a[0][j], a[1][j], a[2][j], a[3][j], a[4][j], a[5][j]);
        for (int s = 0; s < 6; ++s) out[s][j] = t.s[s];
      }
    }
  }
}

// A^T m for m = (m0 .. m5), A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0],
// [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]].
struct Four {
  float o[4];
};
inline Four at_f4(float m0, float m1, float m2, float m3, float m4, float m5) {
  const float sum12 = m1 + m2, diff12 = m1 - m2, sum34 = m3 + m4, diff34 = m3 - m4;
  return {{m0 + sum12 + sum34, diff12 + 2.0f * diff34, sum12 + 4.0f * sum34,
           diff12 + 8.0f * diff34 + m5}};
}

// Y = A^T M A + bias for every tile in tile rows [i0, i1) of one plane.
int64_t output_buffer_f4(int64_t tw) { return 40 * tw; }
SDGEN_SIMD_CLONES void output_f4(const float* m, int64_t m_stride, int64_t i0, int64_t i1,
                                 int64_t tw, int64_t h, int64_t w, float bias, float* plane,
                                 float* buffer) {
  float* half = buffer;           // A^T M: [output row][column of M][tile]
  float* out = buffer + 24 * tw;  // [output row][output column][tile]
  const int64_t whole = w / 4;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t t0 = (i - i0) * tw;
    for (int s = 0; s < 6; ++s) {
      const float* a[6];
      for (int r = 0; r < 6; ++r) a[r] = m + (r * 6 + s) * m_stride + t0;
      for (int64_t j = 0; j < tw; ++j) {
        const Four t = at_f4(a[0][j], a[1][j], a[2][j], a[3][j], a[4][j], a[5][j]);
        for (int r = 0; r < 4; ++r) half[(r * 6 + s) * tw + j] = t.o[r];
      }
    }
    for (int r = 0; r < 4; ++r) {
      const float* a = half + r * 6 * tw;
      float* o = out + r * 4 * tw;
      for (int64_t j = 0; j < tw; ++j) {
        const Four t =
            at_f4(a[j], a[tw + j], a[2 * tw + j], a[3 * tw + j], a[4 * tw + j], a[5 * tw + j]);
        for (int s = 0; s < 4; ++s) o[s * tw + j] = t.o[s] + bias;
      }
    }
    for (int r = 0; r < 4 && 4 * i + r < h; ++r) {
      float* row = plane + (4 * i + r) * w;
      const float* o = out + r * 4 * tw;
      for (int64_t j = 0; j < whole; ++j) {
        for (int s = 0; s < 4; ++s) row[4 * j + s] = o[s * tw + j];
      }
      for (int64_t col = 4 * whole; col < w; ++col) row[col] = o[(col % 4) * tw + whole];
    }
  }
}

// ---- The two ways of running an algorithm ---------------------------------

struct Algorithm {
  int tile;  // output tile size m (2 or 4); input tiles are m + 2 wide
  // G g G^T for one output channel's kernels (by tap) into u[p * stride + c].
  void (*kernel)(const float*, int64_t, float*, int64_t);
  void (*input)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*, float*, int64_t);
  void (*output)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, float*,
                 float*);
  int64_t (*input_buffer)(int64_t);
  int64_t (*output_buffer)(int64_t);

  int64_t products() const { return int64_t{tile + 2} * (tile + 2); }
  int64_t tiles(int64_t size) const { return (size + tile - 1) / tile; }  // along one side
  int64_t buffer(int64_t tw) const { return std::max(input_buffer(tw), output_buffer(tw)); }
};

const Algorithm kF2{2, kernel_f2, input_f2, output_f2, input_buffer_f2, output_buffer_f2};
const Algorithm kF4{4, kernel_f4, input_f4, output_f4, input_buffer_f4, output_buffer_f4};

// U[products][rows][C] for output channels [begin, end) of w, channel begin
// in U's row 0 at `u` (u_rows: U's second dimension); `buffer`: 9 C floats.
void transform_weights(const Algorithm& f, const Weights& w, float* u, int64_t u_rows,
                       int64_t c_count, int64_t begin, int64_t end, float* buffer) {
  for (int64_t k = begin; k < end; ++k) {
    f.kernel(weights_by_tap(w, k, c_count, buffer), c_count, u + (k - begin) * c_count,
             u_rows * c_count);
  }
}

// Bands of whole tile rows of one image, one band per task: each thread
// transforms its band's input for every channel, makes the products for
// every output channel and transforms them back. For large feature maps,
// where the transformed weights are read once per many tiles.
void run_banded(const Algorithm& f, const at::Tensor& x, const at::Tensor& wc, const float* bias,
                at::Tensor& y) {
  const int64_t batch = x.size(0), c_count = x.size(1), h = x.size(2), w = x.size(3),
                k_count = wc.size(0), products = f.products();
  const int64_t th = f.tiles(h), tw = f.tiles(w);
  const int64_t threads = cpu_worker_slots();

  at::Tensor u = at::empty({products, k_count, c_count}, x.options());
  parallel_for_with_state(k_count, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(9 * c_count);
    transform_weights(f, Weights{wc.data_ptr(), wc.scalar_type()},
                      u.data_ptr<float>() + begin * c_count, k_count, c_count, begin, end,
                      buffer.data());
  });

  // About 256 (F2) or 128 (F4) tiles per band, fewer where the buffers would
  // pass kBandBytes, and bands of equal height. Measured on a 2-core AVX2
  // EPYC for SD1.5's UNet and VAE shapes.
  const int64_t target = f.tile == 2 ? (tw >= 64 ? 512 : 256) : 128;
  const int64_t fit = kBandBytes / (products * (c_count + k_count) * int64_t{sizeof(float)});
  const int64_t rows_fit = std::clamp<int64_t>(std::min(target, fit) / tw, 1, th);
  const int64_t bands = (th + rows_fit - 1) / rows_fit;
  const int64_t rows_per_band = (th + bands - 1) / bands;
  const int64_t band_tiles = rows_per_band * tw;
  at::Tensor v_all = at::empty({threads, products, c_count, band_tiles}, x.options());
  at::Tensor m_all = at::empty({threads, products, k_count, band_tiles}, x.options());
  at::Tensor buffers = at::empty({threads, f.buffer(tw)}, x.options());
  const float* x_data = x.data_ptr<float>();
  float* y_data = y.data_ptr<float>();

  // Bands are handed out one at a time, as in attention_rows_parallel.
  const int64_t tasks = batch * bands;
  std::atomic<int64_t> next{0};
  parallel_for_with_state(threads, 1, [&](int64_t /*begin*/, int64_t /*end*/) {
    const int64_t thread = cpu_worker_slot(threads);
    const at::Tensor v = v_all[thread], m = m_all[thread];
    float* v_data = v.data_ptr<float>();
    float* m_data = m.data_ptr<float>();
    float* buffer = buffers[thread].data_ptr<float>();
    for (int64_t task = next++; task < tasks; task = next++) {
      const int64_t n = task / bands, i0 = (task % bands) * rows_per_band;
      const int64_t i1 = std::min(th, i0 + rows_per_band);
      const int64_t tiles = (i1 - i0) * tw;
      for (int64_t c = 0; c < c_count; ++c) {
        f.input(x_data + (n * c_count + c) * h * w, h, w, i0, i1, tw, buffer,
                v_data + c * band_tiles, c_count * band_tiles);
      }
      for (int64_t p = 0; p < products; ++p) {
        at::Tensor product = m[p].narrow(1, 0, tiles);
        at::mm_out(product, u[p], v[p].narrow(1, 0, tiles));
      }
      for (int64_t k = 0; k < k_count; ++k) {
        f.output(m_data + k * band_tiles, k_count * band_tiles, i0, i1, tw, h, w,
                 bias != nullptr ? bias[k] : 0.0f, y_data + (n * k_count + k) * h * w, buffer);
      }
    }
  });
}

// The input of images [n0, n1) transformed once for every tile, then one
// block of output channels per task: the task transforms its block's weights
// into a per-thread buffer, makes the products over all tiles and transforms
// them back. For small feature maps with many channels, where the banded
// kernel would read the whole transformed weights once per few tiles.
void run_k_blocked(const Algorithm& f, const at::Tensor& x, const at::Tensor& wc, const float* bias,
                   int64_t n0, int64_t n1, at::Tensor& y) {
  const int64_t c_count = x.size(1), h = x.size(2), w = x.size(3), k_count = wc.size(0),
                products = f.products();
  const int64_t th = f.tiles(h), tw = f.tiles(w);
  const int64_t image_tiles = th * tw, tiles = (n1 - n0) * image_tiles;
  const int64_t threads = cpu_worker_slots();

  at::Tensor v = at::empty({products, c_count, tiles}, x.options());
  at::Tensor buffers = at::empty({threads, std::max(f.buffer(tw), 9 * c_count)}, x.options());
  const float* x_data = x.data_ptr<float>();
  float* v_data = v.data_ptr<float>();
  parallel_for_with_state((n1 - n0) * c_count, 1, [&](int64_t begin, int64_t end) {
    float* buffer = buffers[cpu_worker_slot(threads)].data_ptr<float>();
    for (int64_t index = begin; index < end; ++index) {
      const int64_t n = index / c_count, c = index % c_count;
      f.input(x_data + ((n0 + n) * c_count + c) * h * w, h, w, 0, th, tw, buffer,
              v_data + c * tiles + n * image_tiles, c_count * tiles);
    }
  });

  // Blocks of about kOutputChannelsPerBlock channels, a multiple of the
  // thread count of them.
  int64_t blocks = (k_count + kOutputChannelsPerBlock - 1) / kOutputChannelsPerBlock;
  blocks = std::min(k_count, (blocks + threads - 1) / threads * threads);
  const int64_t block = (k_count + blocks - 1) / blocks;
  blocks = (k_count + block - 1) / block;
  at::Tensor u_all = at::empty({threads, products * block * c_count}, x.options());
  at::Tensor m_all = at::empty({threads, products * block * tiles}, x.options());
  const Weights weights{wc.data_ptr(), wc.scalar_type()};
  float* y_data = y.data_ptr<float>();
  std::atomic<int64_t> next{0};
  parallel_for_with_state(threads, 1, [&](int64_t /*begin*/, int64_t /*end*/) {
    const int64_t thread = cpu_worker_slot(threads);
    float* u_data = u_all[thread].data_ptr<float>();
    float* m_data = m_all[thread].data_ptr<float>();
    float* buffer = buffers[thread].data_ptr<float>();
    for (int64_t task = next++; task < blocks; task = next++) {
      const int64_t k0 = task * block, count = std::min(k_count, k0 + block) - k0;
      transform_weights(f, weights, u_data, count, c_count, k0, k0 + count, buffer);
      const at::Tensor u =
          u_all[thread].narrow(0, 0, products * count * c_count).view({products, count, c_count});
      at::Tensor m =
          m_all[thread].narrow(0, 0, products * count * tiles).view({products, count, tiles});
      for (int64_t p = 0; p < products; ++p) {
        at::Tensor product = m[p];
        at::mm_out(product, u[p], v[p]);
      }
      for (int64_t k = 0; k < count; ++k) {
        for (int64_t n = 0; n < n1 - n0; ++n) {
          f.output(m_data + k * tiles + n * image_tiles, count * tiles, 0, th, tw, h, w,
                   bias != nullptr ? bias[k0 + k] : 0.0f,
                   y_data + ((n0 + n) * k_count + k0 + k) * h * w, buffer);
        }
      }
    }
  });
}

bool winograd_disabled() {
  static const bool disabled = [] {
    const char* env = std::getenv("SDGEN_CPU_WINOGRAD");
    return env != nullptr && std::strcmp(env, "0") == 0;
  }();
  return disabled;
}

}  // namespace

std::optional<WinogradKernel> winograd_kernel_for(int64_t in_channels, int64_t out_channels,
                                                  int64_t height, int64_t width) {
  const int64_t channels = std::min(in_channels, out_channels), pixels = height * width;
  // Measured per convolution on a 2-core AVX2 EPYC (docs/performance.md):
  // from 64x64 up with 128+ channels F(4x4) is 1.2-1.9x oneDNN's direct
  // kernel (VAE 128 channels at 512x512 1006 -> 523 ms, UNet 320 at 64x64);
  // on smaller maps its 36 transformed weights per kernel cost more than the
  // products save. Below 64x64 with 256+ channels F(2x2) by blocks of output
  // channels: 1.3-1.8x (1280 channels at 16x16 222 -> 121 ms, at 8x8 99 ->
  // 71 ms). With fewer channels the transforms outweigh the products (16
  // channels: 2-4x slower than oneDNN).
  if (pixels >= 64 * 64 && channels >= 128) return WinogradKernel::kF4Banded;
  if (pixels < 64 * 64 && pixels >= 8 * 8 && channels >= 256) return WinogradKernel::kF2KBlocked;
  return std::nullopt;
}

at::Tensor conv3x3_winograd_always(const at::Tensor& input, const at::Tensor& weight,
                                   const at::Tensor& bias, WinogradKernel kernel) {
  TORCH_CHECK(input.dim() == 4 && weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 &&
                  weight.size(1) == input.size(1),
              "conv3x3_winograd: expected x [N, C, H, W] and w [K, C, 3, 3]");
  const at::Tensor x = input.contiguous();
  const at::Tensor wc = weight.contiguous();
  const at::Tensor b = bias.defined() ? bias.contiguous() : bias;
  const float* b_data = b.defined() ? b.data_ptr<float>() : nullptr;
  at::Tensor y = at::empty({x.size(0), wc.size(0), x.size(2), x.size(3)}, x.options());
  if (y.numel() == 0) return y;
  switch (kernel) {
    case WinogradKernel::kF2Banded:
      run_banded(kF2, x, wc, b_data, y);
      break;
    case WinogradKernel::kF4Banded:
      run_banded(kF4, x, wc, b_data, y);
      break;
    case WinogradKernel::kF2KBlocked: {
      // Images in groups whose transformed input stays below kBlockedInputBytes.
      const int64_t image_bytes = kF2.products() * x.size(1) * kF2.tiles(x.size(2)) *
                                  kF2.tiles(x.size(3)) * int64_t{sizeof(float)};
      const int64_t group = std::max<int64_t>(1, kBlockedInputBytes / image_bytes);
      for (int64_t n0 = 0; n0 < x.size(0); n0 += group)
        run_k_blocked(kF2, x, wc, b_data, n0, std::min(x.size(0), n0 + group), y);
      break;
    }
  }
  return y;
}

std::optional<at::Tensor> conv3x3_winograd(const at::Tensor& x, const at::Tensor& w,
                                           const at::Tensor& b) {
  // The weights may be fp16 or bf16 as stored (fp32-lowmem): converted
  // exactly on the way into the weight transform.
  if (!x.defined() || !w.defined() || x.dim() != 4 || !plain_fp32_cpu({&x, &b}) ||
      !(plain_fp32_cpu({&w}) || plain_cpu({&w}, at::kHalf) || plain_cpu({&w}, at::kBFloat16)) ||
      w.dim() != 4 || w.size(2) != 3 || w.size(3) != 3 || w.size(1) != x.size(1))
    return std::nullopt;
  // channels_last inputs stay with oneDNN, which takes them as they are.
  if (!x.is_contiguous() || winograd_disabled()) return std::nullopt;
  const auto kernel = winograd_kernel_for(x.size(1), w.size(0), x.size(2), x.size(3));
  if (!kernel) return std::nullopt;
  return conv3x3_winograd_always(x, w, b, *kernel);
}

}  // namespace sdgen::nn
