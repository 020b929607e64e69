// normal_pairs_avx2 of noise.h, built with -mavx2 -mfma (called only where the CPU has them).
#include <immintrin.h>

#include "noise.h"
#include "noise_math.inc"

namespace psilonet_qmm {

namespace {

template <int R>
inline __m256i rotl(__m256i x) {
  return _mm256_or_si256(_mm256_slli_epi32(x, R), _mm256_srli_epi32(x, 32 - R));
}

template <int R>
inline void mix(__m256i& x0, __m256i& x1) {
  x0 = _mm256_add_epi32(x0, x1);
  x1 = _mm256_xor_si256(rotl<R>(x1), x0);
}

// threefry2x32 of eight counter pairs at once (noise_math.inc's threefry, lane by lane)
inline void threefry8(uint32_t k1, uint32_t k2, __m256i& x0, __m256i& x1) {
  const __m256i ks[3] = {_mm256_set1_epi32(static_cast<int>(k1)), _mm256_set1_epi32(static_cast<int>(k2)),
                         _mm256_set1_epi32(static_cast<int>(k1 ^ k2 ^ noise_detail::kParity))};
  x0 = _mm256_add_epi32(x0, ks[0]);
  x1 = _mm256_add_epi32(x1, ks[1]);
  for (int i = 0; i < 5; ++i) {
    if (i % 2 == 0) {
      mix<13>(x0, x1), mix<15>(x0, x1), mix<26>(x0, x1), mix<6>(x0, x1);
    } else {
      mix<17>(x0, x1), mix<29>(x0, x1), mix<16>(x0, x1), mix<24>(x0, x1);
    }
    x0 = _mm256_add_epi32(x0, ks[(i + 1) % 3]);
    x1 = _mm256_add_epi32(x1, _mm256_add_epi32(ks[(i + 2) % 3], _mm256_set1_epi32(i + 1)));
  }
}

// noise_math.inc's normal_of for eight words: the same float operations, lane by lane
inline __m256 normal8(__m256i bits) {
  // uint32 -> float32 with one rounding: the high and low halves are exact, their sum rounds once
  const __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(bits, 16));
  const __m256 lo16 = _mm256_cvtepi32_ps(_mm256_and_si256(bits, _mm256_set1_epi32(0xFFFF)));
  const __m256 f = _mm256_add_ps(_mm256_mul_ps(hi, _mm256_set1_ps(65536.0f)), lo16);
  const float lo = std::nextafter(-1.0f, 0.0f);
  __m256 u = _mm256_div_ps(f, _mm256_set1_ps(static_cast<float>(std::numeric_limits<uint32_t>::max())));
  u = _mm256_min_ps(u, _mm256_set1_ps(std::nextafter(1.0f, 0.0f)));
  const __m256 a = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(1.0f - lo), u), _mm256_set1_ps(lo));
  __m256 t = _mm256_fmadd_ps(a, _mm256_sub_ps(_mm256_setzero_ps(), a), _mm256_set1_ps(1.0f));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, t);
  for (float& v : lanes) v = std::log(v);  // the libm logf MLX calls: no vector version is equal
  t = _mm256_load_ps(lanes);
  __m256 p = _mm256_set1_ps(3.03697567e-10f), q = _mm256_set1_ps(5.43877832e-9f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(2.93243101e-8f));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.43285448e-7f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.22150334e-6f));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.22774793e-6f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(2.84108955e-5f));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.12963626e-7f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(3.93552968e-4f));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(-5.61530760e-5f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(3.02698812e-3f));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(-1.47697632e-4f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(4.83185798e-3f));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(2.31468678e-3f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-2.64646143e-1f));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.15392581e-2f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(8.40016484e-1f));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(-2.32015476e-1f));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(8.86226892e-1f));
  const __m256 abs_t = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), t);
  const __m256 poly = _mm256_blendv_ps(q, p, _mm256_cmp_ps(abs_t, _mm256_set1_ps(6.125f), _CMP_GT_OQ));
  return _mm256_mul_ps(_mm256_set1_ps(static_cast<float>(std::sqrt(2.0))), _mm256_mul_ps(a, poly));
}

}  // namespace

void normal_pairs_avx2(uint32_t k1, uint32_t k2, float* out, int64_t n, int64_t from, int64_t to) {
  const int64_t half = n / 2, odd = n % 2;
  const __m256i step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t c = from;
  for (; c + 8 <= to; c += 8) {
    __m256i x0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(c)), step);
    __m256i x1 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(c + half + odd)), step);
    threefry8(k1, k2, x0, x1);
    _mm256_storeu_ps(out + c, normal8(x0));
    _mm256_storeu_ps(out + c + half + odd, normal8(x1));
  }
  noise_detail::normal_pairs(k1, k2, out, n, c, to);
}

}  // namespace psilonet_qmm
