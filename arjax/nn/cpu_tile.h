// The f32 register tile shared by the AVX512 kernels of arjax/nn (cpu_attention.cc's many-row path, cpu_bf16.cc).
#ifndef ARJAX_NN_CPU_TILE_H_
#define ARJAX_NN_CPU_TILE_H_

#include <cstdint>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace arjax {

constexpr int64_t kTileRows = 6;

#ifdef __AVX512F__

// acc[i][j] = sum over k < n of x(i, k) * b(k, j), for 6 rows i and 4 vectors j of 16 f32 lanes (64 columns), where
// b(k, j) is the vector at b + k kstride + j jstride; then out(i, acc[i][0..3]) for each row. The 24 accumulators
// are named variables so that they stay in registers (as an array GCC keeps them on the stack).
template <typename X, typename Out>
inline void tile6x64(X&& x, const float* b, int64_t kstride, int64_t jstride, int64_t n, Out&& out) {
#define ARJAX_TILE(op) op(0) op(1) op(2) op(3) op(4) op(5)
#define ARJAX_ZERO(i) __m512 a##i##0 = _mm512_setzero_ps(), a##i##1 = a##i##0, a##i##2 = a##i##0, a##i##3 = a##i##0;
#define ARJAX_FMA(i)                            \
  {                                             \
    const __m512 xi = _mm512_set1_ps(x(i, k));  \
    a##i##0 = _mm512_fmadd_ps(xi, y0, a##i##0); \
    a##i##1 = _mm512_fmadd_ps(xi, y1, a##i##1); \
    a##i##2 = _mm512_fmadd_ps(xi, y2, a##i##2); \
    a##i##3 = _mm512_fmadd_ps(xi, y3, a##i##3); \
  }
#define ARJAX_OUT(i) out(i, a##i##0, a##i##1, a##i##2, a##i##3);
  ARJAX_TILE(ARJAX_ZERO)
  for (int64_t k = 0; k < n; ++k) {
    const float* bk = b + k * kstride;
    const __m512 y0 = _mm512_loadu_ps(bk), y1 = _mm512_loadu_ps(bk + jstride), y2 = _mm512_loadu_ps(bk + 2 * jstride),
                 y3 = _mm512_loadu_ps(bk + 3 * jstride);
    ARJAX_TILE(ARJAX_FMA)
  }
  ARJAX_TILE(ARJAX_OUT)
#undef ARJAX_TILE
#undef ARJAX_ZERO
#undef ARJAX_FMA
#undef ARJAX_OUT
}
#endif  // __AVX512F__

}  // namespace arjax

#endif  // ARJAX_NN_CPU_TILE_H_
