// The per-row entropy loop of entropy.h, built with -mavx2 -mfma (called only where the CPU has them).
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "entropy.h"
#include "exp_avx2.inc"

namespace psilonet_qmm {

using avx2::exp_nonpositive;
using avx2::hsum;
using avx2::log2_positive;

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

float energy_entropy_bits(const float* h, int D) {
  __m256 e0 = _mm256_setzero_ps();
  int d = 0;
  for (; d + 8 <= D; d += 8) {
    const __m256 v = _mm256_loadu_ps(h + d);
    e0 = _mm256_fmadd_ps(v, v, e0);
  }
  double total = hsum(e0);
  for (int t = d; t < D; ++t) total += static_cast<double>(h[t]) * h[t];
  const float inv = 1.0f / static_cast<float>(std::max(total, 1e-30));
  const __m256 iv = _mm256_set1_ps(inv), floor = _mm256_set1_ps(1e-30f);
  __m256 acc = _mm256_setzero_ps();
  for (d = 0; d + 8 <= D; d += 8) {
    const __m256 v = _mm256_loadu_ps(h + d);
    const __m256 p = _mm256_mul_ps(_mm256_mul_ps(v, v), iv);
    acc = _mm256_fmadd_ps(p, log2_positive(_mm256_max_ps(p, floor)), acc);
  }
  double sum = hsum(acc);
  for (int t = d; t < D; ++t) {
    const float p = h[t] * h[t] * inv;
    sum += static_cast<double>(p) * std::log2(std::max(p, 1e-30f));
  }
  return sum >= 0 ? 0.0f : static_cast<float>(-sum);  // never -0 or a rounding below 0
}

}  // namespace psilonet_qmm
