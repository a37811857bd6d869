// The f32 register tile shared by the AVX512 kernels of arjax/nn (cpu_attention.cc's many-row path, cpu_bf16.cc),
// and their lane masks (cpu_int8.cc too).
#ifndef ARJAX_NN_CPU_TILE_H_
#define ARJAX_NN_CPU_TILE_H_

#include <cstdint>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace arjax {

constexpr int64_t kTileRows = 6;

#ifdef __AVX512F__

// The mask of the first n of 16 lanes (n <= 0: none, n >= 16: all).
inline __mmask16 first16(int64_t n) { return n >= 16 ? 0xffff : (1u << (n > 0 ? n : 0)) - 1; }

// acc[i][j] = sum over k < n of x(i, k) * b(k, j), for 6 rows i and 4 vectors j (__m512, 16 f32 lanes: 64
// columns); then out(i, acc[i][0..3]) for each row. The 24 accumulators are named variables so that they stay in
// registers (as an array GCC keeps them on the stack).
template <typename X, typename B, typename Out>
inline void tile6x64(X&& x, B&& b, int64_t n, Out&& out) {
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
    const __m512 y0 = b(k, 0), y1 = b(k, 1), y2 = b(k, 2), y3 = b(k, 3);
    ARJAX_TILE(ARJAX_FMA)
  }
  ARJAX_TILE(ARJAX_OUT)
#undef ARJAX_TILE
#undef ARJAX_ZERO
#undef ARJAX_FMA
#undef ARJAX_OUT
}

// b(k, j) for tile6x64 over f32 vectors at b + k kstride + j jstride.
inline auto strided(const float* b, int64_t kstride, int64_t jstride) {
  return [=](int64_t k, int64_t j) { return _mm512_loadu_ps(b + k * kstride + j * jstride); };
}
#endif  // __AVX512F__

}  // namespace arjax

#endif  // ARJAX_NN_CPU_TILE_H_
