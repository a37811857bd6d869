// Decode attention over a KV cache on CPU, as an XLA FFI custom call (arjax/nn/cpu_attention.py builds and
// registers it; the reference is arjax.nn.attention.xla_attention).
//
// For each (row b, kv head g): M query rows q [M, D] (pre-scaled) against S cache slots k, v [S, D] held as f32,
// bf16 or int8 (int8: one f32 scale per slot, w = q * scale). Slot s holds sequence index pos[b, s] (-1: empty);
// query row m sees the slots with 0 <= pos <= limit[b, m]. Softmax in f32; a row that sees nothing is zeros.
// Two passes over the cache (logits, then values), each slot read once; the (b, g) pairs are shared among the
// XLA:CPU intra-op threads. XLA's own products read an f32 cache at memory speed but a bf16 / int8 one at a
// third of it (converted element by element); here the conversion is fused into the read.
//
// Many query rows per pair (VAR's larger scales: hundreds of rows; head dim a multiple of 64; AVX512F):
// register-tiled products instead (`attend_rows`), 6 rows at a time - the pair's keys converted to f32 (times their
// scales) and transposed once into [S / 16][D][16], a bf16 / int8 pair's values converted once into [S, D], a 6-row
// x 64-key tile of logits over D, the softmax per row, then a 6-row x 64-dim tile of outputs over the slots. XLA:CPU
// runs these as batched products of [M, 64] x [64, S] at ~70 GFLOP/s.
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_parallel.h"
#include "cpu_tile.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline float to_f32(float x) { return x; }
inline float to_f32(int8_t x) { return static_cast<float>(x); }
inline float to_f32(uint16_t x) {  // bf16 bits: the high half of an f32
  const uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// exp(x) for x <= 0 (relative error ~2e-7): 2^n * p(r), r = x - n ln 2, written so that loops over it vectorize.
inline float exp_nonpositive(float x) {
  x = x < -87.f ? -87.f : x;
  const float n = __builtin_roundf(x * 1.44269504f);
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  float p = 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += static_cast<int32_t>(n) << 23;
  std::memcpy(&p, &bits, 4);
  return p;
}

struct Pair {  // one (row, kv head): pointers into the buffers and their sizes
  const float* q;  // [M, D]
  const void* k;   // [S, D]
  const float* k_scale;  // [S] or nullptr (float caches)
  const void* v;
  const float* v_scale;
  const int32_t* pos;    // [S]
  const int32_t* limit;  // [M]
  float* out;            // [M, D]
  int64_t M, S;
};

constexpr int64_t kMaxHeadDim = 256;

inline bool seen(int32_t pos, int32_t limit) { return pos >= 0 && pos <= limit; }

// Software prefetch of the slot `kAhead` slots on (the hardware prefetcher stops at 4 KB page boundaries, and a
// pair's keys or values span 16-64 of them).
constexpr int64_t kAhead = 16;
template <typename T>
inline void prefetch_slot(const T* slot, int64_t D) {
  const char* bytes = reinterpret_cast<const char*>(slot);
  for (int64_t b = 0; b < D * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(bytes + b);
}

// DK: the head dim when known at compile time (the slot loops unroll), 0 for any (<= kMaxHeadDim). Each query
// row streams the pair's keys, then its values (a pair's [S, D] stays in L2 for the next row), with its query
// and output accumulator in registers.
template <typename T, int64_t DK>
void attend(const Pair& p, int64_t head_dim, float* logits /* [S] */) {
  const int64_t D = DK ? DK : head_dim, S = p.S;
  const T* __restrict k = static_cast<const T*>(p.k);
  const T* __restrict v = static_cast<const T*>(p.v);
  for (int64_t m = 0; m < p.M; ++m) {
    const int32_t limit = p.limit[m];
    float q[DK ? DK : kMaxHeadDim], acc[DK ? DK : kMaxHeadDim];
    for (int64_t d = 0; d < D; ++d) q[d] = p.q[m * D + d], acc[d] = 0.f;
    for (int64_t s = 0; s < S; ++s) {  // logits of every slot (no branch: masked below)
      const T* k_s = k + s * D;
      if (s + kAhead < S) prefetch_slot(k_s + kAhead * D, D);
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < D; ++d) dot += q[d] * to_f32(k_s[d]);
      logits[s] = dot;
    }
    if (p.k_scale) {
#pragma omp simd
      for (int64_t s = 0; s < S; ++s) logits[s] *= p.k_scale[s];
    }
    float top = -3.0e38f;
#pragma omp simd reduction(max : top)
    for (int64_t s = 0; s < S; ++s) top = seen(p.pos[s], limit) && logits[s] > top ? logits[s] : top;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t s = 0; s < S; ++s) {
      const float e = seen(p.pos[s], limit) ? exp_nonpositive(logits[s] - top) : 0.f;
      logits[s] = e;
      sum += e;
    }
    for (int64_t s = 0; s < S; ++s) {  // the values, weighted
      const T* v_s = v + s * D;
      if (s + kAhead < S) prefetch_slot(v_s + kAhead * D, D);
      if (logits[s] == 0.f) continue;
      const float w = logits[s] * (p.v_scale ? p.v_scale[s] : 1.f);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) acc[d] += w * to_f32(v_s[d]);
    }
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    for (int64_t d = 0; d < D; ++d) p.out[m * D + d] = acc[d] * inv;
  }
}

using arjax::kTileRows;
constexpr int64_t kMaxDecodeRows = 16;  // cpu_attention.MAX_ROWS

#ifdef __AVX512F__
constexpr bool kAvx512 = true;
#else
constexpr bool kAvx512 = false;
#endif

// Whether `attend_rows` serves a pair of M rows (cpu_attention.many_rows mirrors this).
inline bool many_rows(int64_t M, int64_t D) {
  return kAvx512 && M > kMaxDecodeRows && D % 64 == 0;
}

#ifdef __AVX512F__
// exp(x) for x <= 0 in 16 lanes, as exp_nonpositive.
inline __m512 exp_nonpositive16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f),
                                    _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x));
  __m512 p = _mm512_set1_ps(1.f / 720);
  for (const float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

// The 6 (or fewer: the last row repeats, its results unused) query rows from m0: logits [6][Sp] = q k^T over the
// transposed keys kt [Sp / 16][D][16] (Sp = S rounded up to 64, zero keys past S).
void tile_logits(const Pair& p, int64_t D, int64_t Sp, const float* kt, int64_t m0, float* logits) {
  const float* rows[kTileRows];
  for (int64_t i = 0; i < kTileRows; ++i) rows[i] = p.q + std::min(m0 + i, p.M - 1) * D;
  for (int64_t s0 = 0; s0 < Sp; s0 += 64) {  // 4 blocks of 16 keys, each [D][16]
    arjax::tile6x64([&](int i, int64_t d) { return rows[i][d]; }, arjax::strided(kt + s0 * D, 16, D * 16), D,
                    [&](int i, __m512 c0, __m512 c1, __m512 c2, __m512 c3) {
                      float* out = logits + i * Sp + s0;
                      _mm512_storeu_ps(out, c0), _mm512_storeu_ps(out + 16, c1);
                      _mm512_storeu_ps(out + 32, c2), _mm512_storeu_ps(out + 48, c3);
                    });
  }
}

// out rows [m0, m0 + 6) (those < M) = the weights w [6][Sp] (zero past S) times the f32 values v [S, D], over
// 1 / sums.
void tile_values(const Pair& p, const float* v, int64_t D, int64_t Sp, const float* w, const float* sums,
                 int64_t m0) {
  for (int64_t d0 = 0; d0 < D; d0 += 64) {
    arjax::tile6x64([&](int i, int64_t s) { return w[i * Sp + s]; }, arjax::strided(v + d0, D, 16), p.S,
                    [&](int i, __m512 c0, __m512 c1, __m512 c2, __m512 c3) {
                      if (m0 + i >= p.M) return;
                      const __m512 inv = _mm512_set1_ps(sums[i] > 0.f ? 1.f / sums[i] : 0.f);
                      float* out = p.out + (m0 + i) * D + d0;
                      _mm512_storeu_ps(out, _mm512_mul_ps(c0, inv));
                      _mm512_storeu_ps(out + 16, _mm512_mul_ps(c1, inv));
                      _mm512_storeu_ps(out + 32, _mm512_mul_ps(c2, inv));
                      _mm512_storeu_ps(out + 48, _mm512_mul_ps(c3, inv));
                    });
  }
}

// One row's logits [Sp] -> its softmax weights over the slots it sees (zeros elsewhere and past S); returns the
// sum of the weights (the normalisation is applied to the outputs).
float softmax_row(const int32_t* pos, int32_t limit, int64_t S, int64_t Sp, float* row) {
  const __m512i lim = _mm512_set1_epi32(limit), zero = _mm512_setzero_si512();
  const auto seen16 = [&](int64_t s) {
    const __mmask16 in = arjax::first16(S - s);
    const __m512i ps = _mm512_maskz_loadu_epi32(in, pos + s);
    return static_cast<__mmask16>(in & _mm512_cmpge_epi32_mask(ps, zero) & _mm512_cmple_epi32_mask(ps, lim));
  };
  __m512 top = _mm512_set1_ps(-3.0e38f);
  for (int64_t s = 0; s < Sp; s += 16) top = _mm512_mask_max_ps(top, seen16(s), top, _mm512_loadu_ps(row + s));
  const __m512 t = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t s = 0; s < Sp; s += 16) {
    const __m512 e = _mm512_maskz_mov_ps(seen16(s), exp_nonpositive16(_mm512_sub_ps(_mm512_loadu_ps(row + s), t)));
    _mm512_storeu_ps(row + s, e);
    sum = _mm512_add_ps(sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

// A pair with many query rows: scratch kt [Sp * D], vf [S * D] (bf16 / int8 caches), logits [6 * Sp].
template <typename T>
void attend_rows(const Pair& p, int64_t D, float* kt, float* vf, float* logits) {
  const int64_t S = p.S, Sp = (S + 63) / 64 * 64;
  const T* k = static_cast<const T*>(p.k);
  for (int64_t s = 0; s < Sp; ++s) {
    const float scale = s < S && p.k_scale ? p.k_scale[s] : 1.f;
    for (int64_t d = 0; d < D; ++d) kt[(s / 16 * D + d) * 16 + s % 16] = s < S ? to_f32(k[s * D + d]) * scale : 0.f;
  }
  const float* v = static_cast<const float*>(p.v);
  if constexpr (!std::is_same_v<T, float>) {
    const T* held = static_cast<const T*>(p.v);
    for (int64_t s = 0; s < S; ++s) {
      const float scale = p.v_scale ? p.v_scale[s] : 1.f;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) vf[s * D + d] = to_f32(held[s * D + d]) * scale;
    }
    v = vf;
  }
  for (int64_t m0 = 0; m0 < p.M; m0 += kTileRows) {
    tile_logits(p, D, Sp, kt, m0, logits);
    float sums[kTileRows] = {};
    for (int64_t i = 0; i < kTileRows && m0 + i < p.M; ++i) {
      sums[i] = softmax_row(p.pos, p.limit[m0 + i], S, Sp, logits + i * Sp);
    }
    tile_values(p, v, D, Sp, logits, sums, m0);
  }
}
#endif  // __AVX512F__

template <typename T>
void attend_any(const Pair& p, int64_t head_dim, float* logits) {
  if (head_dim == 64) return attend<T, 64>(p, head_dim, logits);
  if (head_dim == 128) return attend<T, 128>(p, head_dim, logits);
  attend<T, 0>(p, head_dim, logits);
}

template <typename T>
struct PairTask {
  const float *q, *k_scale, *v_scale;
  const T *k, *v;
  const int32_t *pos, *limit;
  float* out;
  int64_t G, M, S, D, pos_stride, limit_stride;
  std::vector<float> logits, kt, vf;  // per thread: parallel_for gives each its own copy
  void begin() {
    if (!many_rows(M, D)) return logits.resize(S);
    const int64_t Sp = (S + 63) / 64 * 64;
    logits.resize(kTileRows * Sp);
    kt.resize(Sp * D);
    if (!std::is_same_v<T, float>) vf.resize(S * D);
  }
  void operator()(int64_t i) {  // i = b * G + g
    const int64_t b = i / G;
    const Pair p{q + i * M * D, k + i * S * D, k_scale ? k_scale + i * S : nullptr, v + i * S * D,
                 v_scale ? v_scale + i * S : nullptr, pos + b * pos_stride, limit + b * limit_stride,
                 out + i * M * D, M, S};
#ifdef __AVX512F__
    if (many_rows(M, D)) return attend_rows<T>(p, D, kt.data(), vf.data(), logits.data());
#endif
    attend_any<T>(p, D, logits.data());
  }
};

template <ffi::DataType DT, typename T>
ffi::Error Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<DT> k, ffi::Buffer<ffi::F32> k_scale,
                ffi::Buffer<DT> v, ffi::Buffer<ffi::F32> v_scale, ffi::Buffer<ffi::S32> pos,
                ffi::Buffer<ffi::S32> limit, ffi::ResultBuffer<ffi::F32> out) {
  const auto qd = q.dimensions(), kd = k.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || v.dimensions().size() != 4) {
    return ffi::Error::InvalidArgument("q [B, G, M, D], k and v [B, G, S, D] expected");
  }
  const int64_t B = qd[0], G = qd[1], M = qd[2], D = qd[3], S = kd[2];
  if (D > kMaxHeadDim) return ffi::Error::InvalidArgument("head dim > 256");
  if (kd[0] != B || kd[1] != G || kd[3] != D || !std::equal(kd.begin(), kd.end(), v.dimensions().begin())) {
    return ffi::Error::InvalidArgument("k and v must be [B, G, S, D] with q's B, G and D");
  }
  const auto count = [](const auto& buffer) { return static_cast<int64_t>(buffer.element_count()); };
  const bool scaled = count(k_scale) == B * G * S;
  if ((!scaled && count(k_scale) != 1) || count(v_scale) != count(k_scale)) {
    return ffi::Error::InvalidArgument("k_scale / v_scale must be [B, G, S] (int8) or one element (float)");
  }
  const int64_t pos_rows = count(pos) / S, limit_rows = count(limit) / M;
  if ((pos_rows != 1 && pos_rows != B) || count(pos) != pos_rows * S || (limit_rows != 1 && limit_rows != B) ||
      count(limit) != limit_rows * M) {
    return ffi::Error::InvalidArgument("pos must be [B or 1, S] and limit [B or 1, M]");
  }
  PairTask<T> task{q.typed_data(), scaled ? k_scale.typed_data() : nullptr,
                   scaled ? v_scale.typed_data() : nullptr, reinterpret_cast<const T*>(k.untyped_data()),
                   reinterpret_cast<const T*>(v.untyped_data()), pos.typed_data(), limit.typed_data(),
                   out->typed_data(), G, M, S, D, pos_rows == 1 ? 0 : S, limit_rows == 1 ? 0 : M, {}};
  // Below ~256k cache elements a call is a few microseconds of work, less than handing pairs to another thread.
  arjax::parallel_for(pool, B * G, B * G * S * D >= (int64_t{1} << 18), task);
  return ffi::Error::Success();
}

}  // namespace

#define ARJAX_BIND(DT)                                                                                      \
  ffi::Ffi::Bind()                                                                                          \
      .Ctx<ffi::ThreadPool>()                                                                               \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                         \
      .Arg<ffi::Buffer<DT>>()                                                                               \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                         \
      .Arg<ffi::Buffer<DT>>()                                                                               \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                         \
      .Arg<ffi::Buffer<ffi::S32>>()                                                                         \
      .Arg<ffi::Buffer<ffi::S32>>()                                                                         \
      .Ret<ffi::Buffer<ffi::F32>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(ArjaxDecodeAttentionF32, (Impl<ffi::F32, float>), ARJAX_BIND(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ArjaxDecodeAttentionBF16, (Impl<ffi::BF16, uint16_t>), ARJAX_BIND(ffi::BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ArjaxDecodeAttentionS8, (Impl<ffi::S8, int8_t>), ARJAX_BIND(ffi::S8));
