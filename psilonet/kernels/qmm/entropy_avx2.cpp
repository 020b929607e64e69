// The per-row entropy loop of entropy.h, built with -mavx2 -mfma (called only where the CPU has them).
#include <immintrin.h>

#include <cmath>

#include "entropy.h"

namespace psilonet_qmm {

namespace {

// exp(x) for x <= 0: 2^n p(r) with r = x - n log 2, Cephes' expf polynomial.
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));  // below, exp < 2^-125: nothing next to Z >= 1
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace

float entropy_bits_avx2(const float* l, int vocab) {
  float m = -INFINITY;
  int v = 0;
  __m256 mv = _mm256_set1_ps(-INFINITY);
  for (; v + 8 <= vocab; v += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(l + v));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, mv);
  for (float x : lanes) m = std::fmax(m, x);
  for (; v < vocab; ++v) m = std::fmax(m, l[v]);
  if (!std::isfinite(m)) return NAN;  // all -inf, or a +inf / NaN logit: no distribution
  const __m256 mb = _mm256_set1_ps(m);
  __m256 z0 = _mm256_setzero_ps(), z1 = z0, s0 = z0, s1 = z0;
  for (v = 0; v + 16 <= vocab; v += 16) {
    const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(l + v), mb);
    const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(l + v + 8), mb);
    const __m256 e0 = exp_nonpositive(d0), e1 = exp_nonpositive(d1);
    z0 = _mm256_add_ps(z0, e0);
    z1 = _mm256_add_ps(z1, e1);
    s0 = _mm256_fmadd_ps(e0, d0, s0);
    s1 = _mm256_fmadd_ps(e1, d1, s1);
  }
  double z = hsum(_mm256_add_ps(z0, z1)), s = hsum(_mm256_add_ps(s0, s1));
  for (; v < vocab; ++v) {
    const double d = static_cast<double>(l[v]) - m, e = std::exp(d);
    z += e;
    s += e * d;
  }
  return static_cast<float>((std::log(z) - s / z) / std::log(2.0));
}

}  // namespace psilonet_qmm
