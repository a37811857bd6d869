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
// repacking reads w once per item, so decoding (a few rows) reads each weight once, as the product must. A last
// panel of at most 32 columns (N = 160: the image decoders' widest level) is packed as 2 vectors and runs a
// 6-row x 32-column tile instead of computing 64 columns for 32.
//
// The SAME 3x3 stride-1 convolution (image decoders) runs on the same tile: each pixel of x [B, H, W, C] is
// quantised on its own (over its C channels) into a zero-padded [B, H + 2, W + 2] grid of rows, flattened, so that
// output pixel (b, y, x), computed at flat row q = (b (H + 2) + y) (W + 2) + x, reads tap (dy, dx) at row
// q + dy (W + 2) + dx: 9 shifted products with K = C. A tap's int32 sums are rescaled by its pixels' scales and
// added in f32 (per pixel, not per 3x3 window, so one large pixel does not coarsen its neighbours). Rows of the
// 2 padding columns and rows are computed and not stored (1.6% extra work at 256 x 256).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu_parallel.h"
#include "cpu_tile.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using arjax::kTileRows;
constexpr int64_t kPanel = 64;  // columns per panel: 4 vectors of 16 int32 lanes
constexpr int64_t kBlockRows = 256;

// Packed vector j, lane l holds column 16 (l / 4) + 4 j + l % 4 of its panel: the order the in-register
// interleave of 4 rows of w yields (unpacks act within 128-bit lanes); `to_columns` puts tiles back in order. A
// 2-vector (32-column) panel holds the same interleave of 256-bit rows: lane l of vector j holds column
// 16 ((l / 4) % 2) + 4 (2 j + l / 8) + l % 4.
inline int64_t packed_column(int64_t j, int64_t l, int64_t vectors) {
  return vectors == 4 ? 16 * (l >> 2) + 4 * j + (l & 3) : 16 * ((l >> 2) & 1) + 4 * (2 * j + (l >> 3)) + (l & 3);
}

// Vectors per panel from column n0: 2 for a last panel of at most 32 columns, else 4.
inline int64_t panel_vectors(int64_t N, int64_t n0) { return N - n0 <= kPanel / 2 ? 2 : 4; }

// One row of x (K floats) -> u8 q + 128 in out[0, Kp) (Kp = K rounded up to 4, padded with 128: the value 0);
// returns its scale.
float quantize_row(const float* row, int64_t K, int64_t Kp, uint8_t* out) {
  const __m512 sign = _mm512_set1_ps(-0.f);
  __m512 amax = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 in = arjax::first16(K - k);
    amax = _mm512_max_ps(amax, _mm512_andnot_ps(sign, _mm512_maskz_loadu_ps(in, row + k)));
  }
  const float top = _mm512_reduce_max_ps(amax);
  const float s = top > 0.f ? top / 127.f : 1.f;
  const __m512 inv = _mm512_set1_ps(1.f / s), lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 in = arjax::first16(K - k);
    __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(in, row + k), inv),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm512_min_ps(_mm512_max_ps(q, lo), hi);
    const __m512i u = _mm512_add_epi32(_mm512_cvtps_epi32(q), _mm512_set1_epi32(128));
    _mm_mask_storeu_epi8(out + k, in, _mm512_cvtepi32_epi8(u));
  }
  for (int64_t k = K; k < Kp; ++k) out[k] = 128;
  return s;
}

// Columns [n0, n0 + 16 V) of w [K, N] -> panel [Kp / 4][V][16][4] (V = `vectors`; zeros past K and N), and
// 128 x its column sums (packed order, V vectors) over each segment of `seg4` groups of 4 rows (the convolution's
// taps; a product's whole K is one segment) into sums128[segment * 4 + j].
void pack_panel(const int8_t* w, int64_t K, int64_t N, int64_t n0, int64_t seg4, int64_t vectors, int8_t* panel,
                __m512i* sums128) {
  const int64_t K4 = (K + 3) / 4;
  const __m512i ones = _mm512_set1_epi8(1), z = _mm512_setzero_si512();
  __m512i sums[4] = {z, z, z, z};
  for (int64_t k4 = 0; k4 < K4; ++k4) {
    int8_t* dst = panel + k4 * vectors * 64;
    if (4 * k4 + 4 <= K && vectors == 2 && n0 + kPanel / 2 <= N) {
      const int8_t* src = w + 4 * k4 * N + n0;
      const auto row = [&](int64_t i) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i * N)); };
      const __m256i r0 = row(0), r1 = row(1), r2 = row(2), r3 = row(3);
      const __m256i t0 = _mm256_unpacklo_epi8(r0, r1), t1 = _mm256_unpackhi_epi8(r0, r1),
                    t2 = _mm256_unpacklo_epi8(r2, r3), t3 = _mm256_unpackhi_epi8(r2, r3);
      __m256i* out = reinterpret_cast<__m256i*>(dst);
      _mm256_storeu_si256(out, _mm256_unpacklo_epi16(t0, t2));
      _mm256_storeu_si256(out + 1, _mm256_unpackhi_epi16(t0, t2));
      _mm256_storeu_si256(out + 2, _mm256_unpacklo_epi16(t1, t3));
      _mm256_storeu_si256(out + 3, _mm256_unpackhi_epi16(t1, t3));
    } else if (4 * k4 + 4 <= K && vectors == 4 && n0 + kPanel <= N) {
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
      for (int64_t j = 0; j < vectors; ++j)
        for (int64_t l = 0; l < 16; ++l)
          for (int64_t t = 0; t < 4; ++t) {
            const int64_t k = 4 * k4 + t, n = n0 + packed_column(j, l, vectors);
            dst[(j * 16 + l) * 4 + t] = k < K && n < N ? w[k * N + n] : 0;
          }
    }
    for (int64_t j = 0; j < vectors; ++j) {
      sums[j] = _mm512_dpbusd_epi32(sums[j], ones, _mm512_loadu_si512(dst + 64 * j));
    }
    if ((k4 + 1) % seg4 == 0 || k4 + 1 == K4) {
      for (int64_t j = 0; j < 4; ++j) sums128[k4 / seg4 * 4 + j] = _mm512_slli_epi32(sums[j], 7), sums[j] = z;
    }
  }
}

// The 4 packed vectors of one row -> its 64 columns in order (a 4 x 4 transpose of 128-bit blocks).
inline void to_columns(__m512i a0, __m512i a1, __m512i a2, __m512i a3, __m512i* out) {
  const __m512i s0 = _mm512_shuffle_i32x4(a0, a1, 0x44), s1 = _mm512_shuffle_i32x4(a0, a1, 0xee),
                s2 = _mm512_shuffle_i32x4(a2, a3, 0x44), s3 = _mm512_shuffle_i32x4(a2, a3, 0xee);
  out[0] = _mm512_shuffle_i32x4(s0, s2, 0x88);
  out[1] = _mm512_shuffle_i32x4(s0, s2, 0xdd);
  out[2] = _mm512_shuffle_i32x4(s1, s3, 0x88);
  out[3] = _mm512_shuffle_i32x4(s1, s3, 0xdd);
}

// The V packed f32 vectors of one row -> columns [n0, n0 + 16 V) of y_row (those < N), times the columns' scales.
template <int V>
inline void store_columns(const __m512* f, const float* w_scale, int64_t N, int64_t n0, float* y_row) {
  __m512i cols[4];
  if constexpr (V == 4) {
    to_columns(_mm512_castps_si512(f[0]), _mm512_castps_si512(f[1]), _mm512_castps_si512(f[2]),
               _mm512_castps_si512(f[3]), cols);
  } else {  // columns 0-15 are blocks 0, 2 of both vectors, 16-31 blocks 1, 3
    cols[0] = _mm512_shuffle_i32x4(_mm512_castps_si512(f[0]), _mm512_castps_si512(f[1]), 0x88);
    cols[1] = _mm512_shuffle_i32x4(_mm512_castps_si512(f[0]), _mm512_castps_si512(f[1]), 0xdd);
  }
  for (int64_t v = 0; v < V; ++v) {
    const int64_t n = n0 + 16 * v, left = std::clamp<int64_t>(N - n, 0, 16);
    if (!left) break;
    const __mmask16 in = arjax::first16(left);
    _mm512_mask_storeu_ps(y_row + n, in,
                          _mm512_mul_ps(_mm512_castsi512_ps(cols[v]), _mm512_maskz_loadu_ps(in, w_scale + n)));
  }
}

// acc += u8 a . s8 b per int32 lane. As inline asm with acc read and written in one register: given the
// intrinsic, GCC copies every accumulator through another register at each step (2 moves per product).
inline void dpbusd(__m512i& acc, __m512i a, __m512i b) { asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b)); }

inline __m512i broadcast4(const uint8_t* a) {  // 4 bytes into every int32 lane
  int32_t four;
  std::memcpy(&four, a, 4);
  return _mm512_set1_epi32(four);
}

// R (<= 6) rows of u8 a (row i at a + i stride) x k4n groups of 4 rows of a V-vector panel, then out(i, 4 packed
// int32 sums; the last 4 - V zero) for each row. The 6 x 4 accumulators are named variables so that they stay in
// registers (as an array GCC keeps them in memory).
template <int R, int V, typename Out>
inline void tile(const uint8_t* a, int64_t stride, const int8_t* panel, int64_t k4n, Out&& out) {
  const __m512i z = _mm512_setzero_si512();
  __m512i c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z, c20 = z, c21 = z, c22 = z,
          c23 = z, c30 = z, c31 = z, c32 = z, c33 = z, c40 = z, c41 = z, c42 = z, c43 = z, c50 = z, c51 = z,
          c52 = z, c53 = z;
  for (int64_t k4 = 0; k4 < k4n; ++k4) {
    const int8_t* b = panel + k4 * V * 64;
    const __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 64),
                  b2 = V == 4 ? _mm512_loadu_si512(b + 128) : z, b3 = V == 4 ? _mm512_loadu_si512(b + 192) : z;
#define ARJAX_ROW(i)                                                      \
  if constexpr (R > i) {                                                  \
    const __m512i ai = broadcast4(a + i * stride + 4 * k4);               \
    dpbusd(c##i##0, ai, b0), dpbusd(c##i##1, ai, b1);                     \
    if constexpr (V == 4) dpbusd(c##i##2, ai, b2), dpbusd(c##i##3, ai, b3); \
  }
    ARJAX_ROW(0) ARJAX_ROW(1) ARJAX_ROW(2) ARJAX_ROW(3) ARJAX_ROW(4) ARJAX_ROW(5)
#undef ARJAX_ROW
  }
  out(0, c00, c01, c02, c03);
  if constexpr (R > 1) out(1, c10, c11, c12, c13);
  if constexpr (R > 2) out(2, c20, c21, c22, c23);
  if constexpr (R > 3) out(3, c30, c31, c32, c33);
  if constexpr (R > 4) out(4, c40, c41, c42, c43);
  if constexpr (R > 5) out(5, c50, c51, c52, c53);
}

// fn(std::integral_constant<int, r>, std::integral_constant<int, v>) for r in 1 .. 6 and v in {2, 4}: a tile's
// row and vector counts as template arguments.
template <typename F>
inline void with_tile(int64_t r, int64_t v, F&& fn) {
  const auto rows = [&](auto V) {
    switch (r) {
      case 6: fn(std::integral_constant<int, 6>{}, V); break;
      case 5: fn(std::integral_constant<int, 5>{}, V); break;
      case 4: fn(std::integral_constant<int, 4>{}, V); break;
      case 3: fn(std::integral_constant<int, 3>{}, V); break;
      case 2: fn(std::integral_constant<int, 2>{}, V); break;
      case 1: fn(std::integral_constant<int, 1>{}, V); break;
    }
  };
  v == 4 ? rows(std::integral_constant<int, 4>{}) : rows(std::integral_constant<int, 2>{});
}

// int32 sums minus 128 x the column sums, as floats.
inline __m512 corrected(__m512i acc, __m512i sum128) { return _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, sum128)); }

// Per-thread scratch and the walk over work items (64-column panel, block of rows), panel-major, shared by both
// products: Derived::rows(panel, n0, m0, m1) computes a block.
template <typename Derived>
struct PanelWalk {
  const int8_t* w;
  int64_t K, N, seg4, blocks;  // w [K, N]; row blocks per panel
  std::vector<int8_t> panel;
  std::vector<__m512i> sums128;
  int64_t packed = -1, vectors = 4;  // the panel now in scratch and its vectors
  void begin() { panel.resize((K + 3) / 4 * 4 * kPanel), sums128.resize(((K + 3) / 4 + seg4 - 1) / seg4 * 4); }
  void operator()(int64_t item) {
    const int64_t nb = item / blocks, m0 = item % blocks * kBlockRows, n0 = nb * kPanel;
    if (nb != packed) {
      vectors = panel_vectors(N, n0), packed = nb;
      pack_panel(w, K, N, n0, seg4, vectors, panel.data(), sums128.data());
    }
    static_cast<Derived*>(this)->rows(n0, m0, m0 + kBlockRows);
  }
};

// y [M, N] = rows of a [M, Kp] (u8) x w [K, N], rescaled.
struct ProductTask : PanelWalk<ProductTask> {
  const uint8_t* a;
  const float *x_scale, *w_scale;
  float* y;
  int64_t M, Kp;
  void rows(int64_t n0, int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < std::min(M, m1); m += kTileRows) {
      with_tile(std::min(kTileRows, M - m), vectors, [&](auto R, auto V) {
        tile<R, V>(a + m * Kp, Kp, panel.data(), Kp / 4, [&](int i, __m512i c0, __m512i c1, __m512i c2, __m512i c3) {
          const __m512 xs = _mm512_set1_ps(x_scale[m + i]);
          const __m512i c[4] = {c0, c1, c2, c3};
          __m512 f[4];
          for (int j = 0; j < V; ++j) f[j] = _mm512_mul_ps(corrected(c[j], sums128[j]), xs);
          store_columns<V>(f, w_scale, N, n0, y + (m + i) * N);
        });
      });
    }
  }
};

// y [B, H, W, N] = SAME 3x3 conv of the padded, flattened u8 pixels a [rows, C] (scales 0 on the padding) with
// w [3, 3, C, N], computed at flat rows q < M = B (H + 2) (W + 2) (see the top of the file).
struct ConvTask : PanelWalk<ConvTask> {
  const uint8_t* a;
  const float *x_scale, *w_scale;
  float* y;
  int64_t M, B, H, W, C;
  float acc[kTileRows][kPanel];  // f32 sums over the taps done, packed order
  void rows(int64_t n0, int64_t m0, int64_t m1) {
    const int64_t Wp = W + 2;
    for (int64_t q = m0; q < std::min(M, m1); q += kTileRows) {
      with_tile(std::min(kTileRows, M - q), vectors, [&](auto R, auto V) {
        std::memset(acc, 0, sizeof(acc));
        for (int64_t t = 0; t < 9; ++t) {
          const int64_t r = q + t / 3 * Wp + t % 3;
          tile<R, V>(a + r * C, C, panel.data() + t * C * 16 * V, C / 4,
                     [&](int i, __m512i c0, __m512i c1, __m512i c2, __m512i c3) {
                       const __m512 s = _mm512_set1_ps(x_scale[r + i]);
                       const __m512i c[4] = {c0, c1, c2, c3};
                       for (int j = 0; j < V; ++j) {
                         float* dst = acc[i] + 16 * j;
                         _mm512_storeu_ps(dst, _mm512_fmadd_ps(corrected(c[j], sums128[4 * t + j]), s,
                                                               _mm512_loadu_ps(dst)));
                       }
                     });
        }
        for (int i = 0; i < R; ++i) {
          const int64_t b = (q + i) / ((H + 2) * Wp), yy = (q + i) / Wp % (H + 2), xx = (q + i) % Wp;
          if (yy >= H || xx >= W) continue;
          const __m512 f[4] = {_mm512_loadu_ps(acc[i]), _mm512_loadu_ps(acc[i] + 16), _mm512_loadu_ps(acc[i] + 32),
                               _mm512_loadu_ps(acc[i] + 48)};
          store_columns<V>(f, w_scale, N, n0, y + ((b * H + yy) * W + xx) * N);
        }
      });
    }
  }
};

// Splitting pays above ~256k weight entries or 16M products (a few microseconds of work is less than a hand-off).
bool worth_threads(int64_t M, int64_t K, int64_t N) {
  return K * N >= (int64_t{1} << 18) || M * K * N >= (int64_t{1} << 24);
}

std::unique_ptr<uint8_t[]> bytes(int64_t n) { return std::unique_ptr<uint8_t[]>(new uint8_t[n]); }

ffi::Error Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w,
                  ffi::Buffer<ffi::F32> w_scale, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[0]) {
    return ffi::Error::InvalidArgument("x [M, K] and w [K, N] expected");
  }
  const int64_t M = xd[0], K = xd[1], N = wd[1], Kp = (K + 3) / 4 * 4;
  if (static_cast<int64_t>(w_scale.element_count()) != N) return ffi::Error::InvalidArgument("w_scale [N] expected");
  if (M == 0 || N == 0) return ffi::Error::Success();
  if (K == 0) return std::fill_n(y->typed_data(), M * N, 0.f), ffi::Error::Success();  // an empty sum
  auto a = bytes(M * Kp);
  std::vector<float> x_scale(M);
  const float* xs = x.typed_data();
  arjax::for_rows(pool, M, M * K >= (int64_t{1} << 18),
                  [&, K, Kp](int64_t m) { x_scale[m] = quantize_row(xs + m * K, K, Kp, a.get() + m * Kp); });
  const int64_t blocks = (M + kBlockRows - 1) / kBlockRows, panels = (N + kPanel - 1) / kPanel;
  ProductTask task{{reinterpret_cast<const int8_t*>(w.untyped_data()), K, N, Kp / 4, blocks},
                   a.get(), x_scale.data(), w_scale.typed_data(), y->typed_data(), M, Kp};
  arjax::parallel_for(pool, panels * blocks, worth_threads(M, K, N), task);
  return ffi::Error::Success();
}

ffi::Error Conv3x3(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w,
                   ffi::Buffer<ffi::F32> w_scale, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 4 || wd.size() != 4 || wd[0] != 3 || wd[1] != 3 || xd[3] != wd[2] || xd[3] % 4) {
    return ffi::Error::InvalidArgument("x [B, H, W, C] and w [3, 3, C, N] with C a multiple of 4 expected");
  }
  const int64_t B = xd[0], H = xd[1], W = xd[2], C = xd[3], N = wd[3], Hp = H + 2, Wp = W + 2;
  if (static_cast<int64_t>(w_scale.element_count()) != N) return ffi::Error::InvalidArgument("w_scale [N] expected");
  if (B * H * W == 0 || N == 0) return ffi::Error::Success();
  if (C == 0) return std::fill_n(y->typed_data(), B * H * W * N, 0.f), ffi::Error::Success();
  // padded pixels, then the rows the last tiles' taps read past them (2 rows and 2 pixels)
  const int64_t M = B * Hp * Wp, rows = M + 2 * Wp + 2;
  auto a = bytes(rows * C);
  std::vector<float> x_scale(rows);
  const float* xs = x.typed_data();
  arjax::for_rows(pool, rows, rows * C >= (int64_t{1} << 18), [&, C, H, W, Hp, Wp, M](int64_t r) {
    const int64_t b = r / (Hp * Wp), yy = r / Wp % Hp - 1, xx = r % Wp - 1;
    if (r < M && yy >= 0 && yy < H && xx >= 0 && xx < W) {
      x_scale[r] = quantize_row(xs + ((b * H + yy) * W + xx) * C, C, C, a.get() + r * C);
    } else {
      x_scale[r] = 0.f, std::memset(a.get() + r * C, 128, C);
    }
  });
  const int64_t blocks = (M + kBlockRows - 1) / kBlockRows, panels = (N + kPanel - 1) / kPanel;
  ConvTask task{{reinterpret_cast<const int8_t*>(w.untyped_data()), 9 * C, N, C / 4, blocks},
                a.get(), x_scale.data(), w_scale.typed_data(), y->typed_data(), M, B, H, W, C, {}};
  arjax::parallel_for(pool, panels * blocks, worth_threads(M, 9 * C, N), task);
  return ffi::Error::Success();
}

}  // namespace

#define ARJAX_INT8_HANDLER(name, impl)                                     \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, impl,                                \
                                ffi::Ffi::Bind()                           \
                                    .Ctx<ffi::ThreadPool>()                \
                                    .Arg<ffi::Buffer<ffi::F32>>()          \
                                    .Arg<ffi::Buffer<ffi::S8>>()           \
                                    .Arg<ffi::Buffer<ffi::F32>>()          \
                                    .Ret<ffi::Buffer<ffi::F32>>());
ARJAX_INT8_HANDLER(ArjaxInt8Matmul, Matmul)
ARJAX_INT8_HANDLER(ArjaxInt8Conv3x3, Conv3x3)
