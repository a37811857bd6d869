// bf16-weight Dense products on CPUs with AVX512F, as an XLA FFI custom call (arjax/nn/cpu_bf16.py builds and
// registers it; the reference is the XLA form in arjax.nn.quant.dot_general: bf16 operands, f32 accumulation).
//
// y [M, N] f32 = bf16(x) [M, K] . w [K, N] bf16, products and sums in f32. Without AMX, XLA:CPU converts a bf16
// operand element by element inside its dot, and reads bf16 weights at about a third of the rate it reads f32 ones
// (scripts/bench_dense_kernels.py), so bf16 weights made decoding slower, not faster. Here each work item (64-column
// panel, block of rows) runs the shared 6 x 64 f32 register tile (cpu_tile.h) over the panel's weights converted to
// f32 (a 16-bit shift each): with at most 6 rows (decoding) straight from w, each weight read once, 2 bytes; with
// more, converted once into f32 scratch [K][64] that every 6-row tile reuses, at the f32 FMA rate. x is rounded to
// bf16 first (to nearest even, as XLA's convert), so the products are those of the XLA form.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_parallel.h"
#include "cpu_tile.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPanel = 64;
constexpr int64_t kBlockRows = 256;

// x [K] -> its bf16 values (round to nearest even; NaN stays NaN) as f32 in out [K].
void round_row(const float* x, int64_t K, float* out) {
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 in = arjax::first16(K - k);
    const __m512 v = _mm512_maskz_loadu_ps(in, x + k);
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i up = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
    const __m512 rounded = _mm512_castsi512_ps(_mm512_and_si512(up, _mm512_set1_epi32(int32_t(0xffff0000u))));
    _mm512_mask_storeu_ps(out + k, in, _mm512_mask_mov_ps(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v));
  }
}

// The 16 bf16 weights of row k, columns n0 + 16 j + [0, 16) (zeros past N) as f32, for tile6x64; prefetches the
// row kAhead on (rows lie N * 2 bytes apart, on other pages, where the hardware prefetcher does not follow).
struct Weights {
  const uint16_t* w;
  int64_t N, n0;
  __mmask16 in[4];
  static constexpr int64_t kAhead = 8;
  Weights(const uint16_t* w, int64_t N, int64_t n0) : w(w), N(N), n0(n0) {
    for (int64_t j = 0; j < 4; ++j) in[j] = arjax::first16(N - n0 - 16 * j);
  }
  __m512 operator()(int64_t k, int64_t j) const {
    const uint16_t* src = w + k * N + n0 + 16 * j;
    if (j == 0) __builtin_prefetch(src + kAhead * N), __builtin_prefetch(src + kAhead * N + 32);
    const __m256i h = _mm256_maskz_loadu_epi16(in[j], src);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
};

struct ProductTask {
  const float* a;     // [M, K]: x rounded to bf16
  const uint16_t* w;  // [K, N]
  float* y;           // [M, N]
  int64_t M, K, N, blocks;  // row blocks per panel
  std::vector<float> panel;
  int64_t packed = -1;  // the panel now in scratch
  void begin() { panel.resize(M > arjax::kTileRows ? K * kPanel : 0); }
  void operator()(int64_t item) {
    const int64_t nb = item / blocks, m0 = item % blocks * kBlockRows, n0 = nb * kPanel;
    const Weights weights(w, N, n0);
    if (M <= arjax::kTileRows) return rows(m0, n0, weights);  // one tile: the weights once, straight from w
    if (nb != packed) {  // many tiles: the panel converted once into scratch [K][64]
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t j = 0; j < 4; ++j) _mm512_storeu_ps(panel.data() + k * kPanel + 16 * j, weights(k, j));
      }
      packed = nb;
    }
    rows(m0, n0, arjax::strided(panel.data(), kPanel, 16));
  }
  template <typename B>
  void rows(int64_t m0, int64_t n0, B&& b) {
    for (int64_t m = m0; m < std::min(M, m0 + kBlockRows); m += arjax::kTileRows) {
      const float* x_rows[arjax::kTileRows];  // past M: the last row again, its results unused
      for (int64_t i = 0; i < arjax::kTileRows; ++i) x_rows[i] = a + std::min(m + i, M - 1) * K;
      arjax::tile6x64([&](int i, int64_t k) { return x_rows[i][k]; }, b, K,
                      [&](int i, __m512 c0, __m512 c1, __m512 c2, __m512 c3) {
                        if (m + i >= M) return;
                        float* out = y + (m + i) * N + n0;
                        const __m512 c[4] = {c0, c1, c2, c3};
                        for (int64_t j = 0; j < 4; ++j) {
                          _mm512_mask_storeu_ps(out + 16 * j, arjax::first16(N - n0 - 16 * j), c[j]);
                        }
                      });
    }
  }
};

ffi::Error Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::BF16> w,
                  ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[0]) {
    return ffi::Error::InvalidArgument("x [M, K] and w [K, N] expected");
  }
  const int64_t M = xd[0], K = xd[1], N = wd[1];
  if (M == 0 || N == 0) return ffi::Error::Success();
  std::vector<float> a(M * K);
  const float* xs = x.typed_data();
  arjax::for_rows(pool, M, M * K >= (int64_t{1} << 18),
                  [&, K](int64_t m) { round_row(xs + m * K, K, a.data() + m * K); });
  const int64_t blocks = (M + kBlockRows - 1) / kBlockRows, panels = (N + kPanel - 1) / kPanel;
  ProductTask task{a.data(), reinterpret_cast<const uint16_t*>(w.untyped_data()), y->typed_data(), M, K, N, blocks};
  // Splitting pays above ~256k weights or 16M products (a few microseconds of work is less than a hand-off).
  const bool parallel = K * N >= (int64_t{1} << 18) || M * K * N >= (int64_t{1} << 24);
  arjax::parallel_for(pool, panels * blocks, parallel, task);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ArjaxBf16Matmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
