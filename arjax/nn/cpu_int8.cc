// int8 Dense products on CPUs with AVX512-VNNI, as an XLA FFI custom call (arjax/nn/cpu_int8.py builds and
// registers it; the reference is the XLA form in arjax.nn.quant.int8_dot).
//
// y [M, N] f32 = quant(x) [M, K] . w [K, N] int8, rescaled: y = float(acc) * x_scale[m] * w_scale[n], where each row
// of x f32 is quantised symmetrically (scale absmax / 127, x times 1 / scale rounded half to even: what XLA makes of
// quant.symmetric's division) and acc is the exact int32 sum. XLA:CPU runs an int8 x int8 -> int32 dot at its f32
// rate; here vpdpbusd multiplies 4 u8 x s8 pairs per int32 lane. It takes unsigned activations, so x is stored as q
// + 128 and the sums are corrected by 128 x (column sums of w).
//
// Each work item is (64-column panel, block of rows): the panel of w is repacked into the thread's scratch as
// [K/4][4 vectors][16 lanes][4 k] (4 rows of w interleaved in registers) with its column sums, then a 6-row x
// 64-column tile of int32 accumulators (24 of the 32 vector registers) stays in registers over all of K. The
// repacking reads w once per item, so decoding (a few rows) reads each weight once, as the product must.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kTileRows = 6;
constexpr int64_t kPanel = 64;  // columns per panel: 4 vectors of 16 int32 lanes
constexpr int64_t kBlockRows = 256;

// Packed vector j, lane l holds column 16 (l / 4) + 4 j + l % 4 of its panel: the order the in-register
// interleave of 4 rows of w yields (unpacks act within 128-bit lanes); `to_columns` puts tiles back in order.
inline int64_t packed_column(int64_t j, int64_t l) { return 16 * (l >> 2) + 4 * j + (l & 3); }

// Rows [m0, m1) of x: u8 q + 128 into a [M, Kp] (Kp = K rounded up to 4, padded with 128: the value 0) and the
// rows' scales.
void quantize_rows(const float* x, int64_t K, int64_t Kp, int64_t m0, int64_t m1, uint8_t* a, float* scale) {
  const __m512 sign = _mm512_set1_ps(-0.f);
  for (int64_t m = m0; m < m1; ++m) {
    const float* row = x + m * K;
    __m512 amax = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 in = K - k >= 16 ? 0xffff : (1u << (K - k)) - 1;
      amax = _mm512_max_ps(amax, _mm512_andnot_ps(sign, _mm512_maskz_loadu_ps(in, row + k)));
    }
    const float top = _mm512_reduce_max_ps(amax);
    const float s = top > 0.f ? top / 127.f : 1.f;
    scale[m] = s;
    const __m512 inv = _mm512_set1_ps(1.f / s), lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
    uint8_t* out = a + m * Kp;
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 in = K - k >= 16 ? 0xffff : (1u << (K - k)) - 1;
      __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(in, row + k), inv),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q = _mm512_min_ps(_mm512_max_ps(q, lo), hi);
      const __m512i u = _mm512_add_epi32(_mm512_cvtps_epi32(q), _mm512_set1_epi32(128));
      _mm_mask_storeu_epi8(out + k, in, _mm512_cvtepi32_epi8(u));
    }
    for (int64_t k = K; k < Kp; ++k) out[k] = 128;
  }
}

// Columns [n0, n0 + 64) of w [K, N] -> panel [Kp / 4][4][16][4] (zeros past K and N) and 128 x its column sums
// (packed order, 4 vectors).
void pack_panel(const int8_t* w, int64_t K, int64_t N, int64_t n0, int8_t* panel, __m512i* sums128) {
  const int64_t K4 = (K + 3) / 4;
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i sums[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                     _mm512_setzero_si512()};
  for (int64_t k4 = 0; k4 < K4; ++k4) {
    int8_t* dst = panel + k4 * 4 * kPanel;
    if (4 * k4 + 4 <= K && n0 + kPanel <= N) {
      const int8_t* src = w + 4 * k4 * N + n0;
      const __m512i r0 = _mm512_loadu_si512(src), r1 = _mm512_loadu_si512(src + N),
                    r2 = _mm512_loadu_si512(src + 2 * N), r3 = _mm512_loadu_si512(src + 3 * N);
      const __m512i t0 = _mm512_unpacklo_epi8(r0, r1), t1 = _mm512_unpackhi_epi8(r0, r1),
                    t2 = _mm512_unpacklo_epi8(r2, r3), t3 = _mm512_unpackhi_epi8(r2, r3);
      _mm512_storeu_si512(dst, _mm512_unpacklo_epi16(t0, t2));
      _mm512_storeu_si512(dst + 64, _mm512_unpackhi_epi16(t0, t2));
      _mm512_storeu_si512(dst + 128, _mm512_unpacklo_epi16(t1, t3));
      _mm512_storeu_si512(dst + 192, _mm512_unpackhi_epi16(t1, t3));
    } else {  // the edges, element by element in the same order
      for (int64_t j = 0; j < 4; ++j)
        for (int64_t l = 0; l < 16; ++l)
          for (int64_t t = 0; t < 4; ++t) {
            const int64_t k = 4 * k4 + t, n = n0 + packed_column(j, l);
            dst[(j * 16 + l) * 4 + t] = k < K && n < N ? w[k * N + n] : 0;
          }
    }
    for (int64_t j = 0; j < 4; ++j) sums[j] = _mm512_dpbusd_epi32(sums[j], ones, _mm512_loadu_si512(dst + 64 * j));
  }
  for (int64_t j = 0; j < 4; ++j) sums128[j] = _mm512_slli_epi32(sums[j], 7);
}

// The 4 packed accumulators of one row -> its 64 columns in order (a 4 x 4 transpose of 128-bit blocks).
inline void to_columns(__m512i a0, __m512i a1, __m512i a2, __m512i a3, __m512i* out) {
  const __m512i s0 = _mm512_shuffle_i32x4(a0, a1, 0x44), s1 = _mm512_shuffle_i32x4(a0, a1, 0xee),
                s2 = _mm512_shuffle_i32x4(a2, a3, 0x44), s3 = _mm512_shuffle_i32x4(a2, a3, 0xee);
  out[0] = _mm512_shuffle_i32x4(s0, s2, 0x88);
  out[1] = _mm512_shuffle_i32x4(s0, s2, 0xdd);
  out[2] = _mm512_shuffle_i32x4(s1, s3, 0x88);
  out[3] = _mm512_shuffle_i32x4(s1, s3, 0xdd);
}

// acc += u8 a . s8 b per int32 lane. As inline asm with acc read and written in one register: given the
// intrinsic, GCC copies every accumulator through another register at each step (2 moves per product).
inline void dpbusd(__m512i& acc, __m512i a, __m512i b) { asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b)); }

struct Product {
  const uint8_t* a;  // [M, Kp]
  const float *x_scale, *w_scale;  // [M], [N]
  float* y;                         // [M, N]
  int64_t M, N, Kp;
};

// Row m's packed int32 sums over the panel at column n0 -> its outputs: minus 128 x the column sums, in column
// order, times the row's and the columns' scales.
inline void store_row(const Product& p, const __m512i* sums128, __m512i a0, __m512i a1, __m512i a2, __m512i a3,
                      int64_t m, int64_t n0) {
  __m512i cols[4];
  to_columns(_mm512_sub_epi32(a0, sums128[0]), _mm512_sub_epi32(a1, sums128[1]), _mm512_sub_epi32(a2, sums128[2]),
             _mm512_sub_epi32(a3, sums128[3]), cols);
  const __m512 xs = _mm512_set1_ps(p.x_scale[m]);
  for (int64_t v = 0; v < 4; ++v) {
    const int64_t n = n0 + 16 * v, left = std::clamp<int64_t>(p.N - n, 0, 16);
    if (!left) break;
    const __mmask16 in = left == 16 ? 0xffff : (1u << left) - 1;
    const __m512 f = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(cols[v]), xs),
                                   _mm512_maskz_loadu_ps(in, p.w_scale + n));
    _mm512_mask_storeu_ps(p.y + m * p.N + n, in, f);
  }
}

inline __m512i broadcast4(const uint8_t* a) {  // 4 bytes into every int32 lane
  int32_t four;
  std::memcpy(&four, a, 4);
  return _mm512_set1_epi32(four);
}

// Rows [m, m + R) (R <= 6) x the panel at column n0, over all of K; the 6 x 4 accumulators are named variables so
// that they stay in registers (as an array GCC keeps them in memory).
template <int R>
void tile(const Product& p, const int8_t* panel, const __m512i* sums128, int64_t m, int64_t n0) {
  const __m512i z = _mm512_setzero_si512();
  __m512i c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z, c20 = z, c21 = z, c22 = z,
          c23 = z, c30 = z, c31 = z, c32 = z, c33 = z, c40 = z, c41 = z, c42 = z, c43 = z, c50 = z, c51 = z,
          c52 = z, c53 = z;
  const uint8_t* a = p.a + m * p.Kp;
  for (int64_t k4 = 0; k4 < p.Kp / 4; ++k4) {
    const int8_t* b = panel + k4 * 4 * kPanel;
    const __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 64), b2 = _mm512_loadu_si512(b + 128),
                  b3 = _mm512_loadu_si512(b + 192);
#define ARJAX_ROW(i)                                                            \
  if constexpr (R > i) {                                                        \
    const __m512i ai = broadcast4(a + i * p.Kp + 4 * k4);                       \
    dpbusd(c##i##0, ai, b0), dpbusd(c##i##1, ai, b1), dpbusd(c##i##2, ai, b2), \
        dpbusd(c##i##3, ai, b3);                                                \
  }
    ARJAX_ROW(0) ARJAX_ROW(1) ARJAX_ROW(2) ARJAX_ROW(3) ARJAX_ROW(4) ARJAX_ROW(5)
#undef ARJAX_ROW
  }
  store_row(p, sums128, c00, c01, c02, c03, m, n0);
  if constexpr (R > 1) store_row(p, sums128, c10, c11, c12, c13, m + 1, n0);
  if constexpr (R > 2) store_row(p, sums128, c20, c21, c22, c23, m + 2, n0);
  if constexpr (R > 3) store_row(p, sums128, c30, c31, c32, c33, m + 3, n0);
  if constexpr (R > 4) store_row(p, sums128, c40, c41, c42, c43, m + 4, n0);
  if constexpr (R > 5) store_row(p, sums128, c50, c51, c52, c53, m + 5, n0);
}

struct PanelTask {
  Product p;
  const int8_t* w;
  int64_t K, blocks;  // row blocks per panel
  std::vector<int8_t> panel;
  __m512i sums128[4];
  int64_t packed = -1;  // the panel now in scratch
  void begin() { panel.resize(p.Kp * kPanel); }
  void operator()(int64_t item) {  // item = panel index * blocks + row block
    const int64_t nb = item / blocks, m0 = item % blocks * kBlockRows, m1 = std::min(p.M, m0 + kBlockRows);
    if (nb != packed) pack_panel(w, K, p.N, nb * kPanel, panel.data(), sums128), packed = nb;
    int64_t m = m0;
    for (; m + kTileRows <= m1; m += kTileRows) tile<kTileRows>(p, panel.data(), sums128, m, nb * kPanel);
    switch (m1 - m) {
      case 5: tile<5>(p, panel.data(), sums128, m, nb * kPanel); break;
      case 4: tile<4>(p, panel.data(), sums128, m, nb * kPanel); break;
      case 3: tile<3>(p, panel.data(), sums128, m, nb * kPanel); break;
      case 2: tile<2>(p, panel.data(), sums128, m, nb * kPanel); break;
      case 1: tile<1>(p, panel.data(), sums128, m, nb * kPanel); break;
    }
  }
};

struct QuantizeTask {
  const float* x;
  uint8_t* a;
  float* scale;
  int64_t M, K, Kp;
  void begin() {}
  void operator()(int64_t i) { quantize_rows(x, K, Kp, i * 64, std::min(M, i * 64 + 64), a, scale); }
};

ffi::Error Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w,
                ffi::Buffer<ffi::F32> w_scale, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[0]) {
    return ffi::Error::InvalidArgument("x [M, K] and w [K, N] expected");
  }
  const int64_t M = xd[0], K = xd[1], N = wd[1], Kp = (K + 3) / 4 * 4;
  if (static_cast<int64_t>(w_scale.element_count()) != N) return ffi::Error::InvalidArgument("w_scale [N] expected");
  if (M == 0 || N == 0) return ffi::Error::Success();
  std::vector<uint8_t> a(M * Kp);
  std::vector<float> x_scale(M);
  // Splitting pays above ~256k weight entries (a few microseconds of work is less than a hand-off).
  const bool parallel = K * N >= (int64_t{1} << 18) || M * K * N >= (int64_t{1} << 24);
  arjax::parallel_for(pool, (M + 63) / 64, M * K >= (int64_t{1} << 18),
                      QuantizeTask{x.typed_data(), a.data(), x_scale.data(), M, K, Kp});
  const int64_t blocks = (M + kBlockRows - 1) / kBlockRows, panels = (N + kPanel - 1) / kPanel;
  PanelTask task{{a.data(), x_scale.data(), w_scale.typed_data(), y->typed_data(), M, N, Kp},
                 reinterpret_cast<const int8_t*>(w.untyped_data()), K, blocks, {}, {}};
  arjax::parallel_for(pool, panels * blocks, parallel, task);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ArjaxInt8Matmul, Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
