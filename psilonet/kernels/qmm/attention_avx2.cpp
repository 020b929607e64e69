// One query's attention over a span (attention.h), built with -mavx2 -mfma.
#include <immintrin.h>

#include <cmath>

#include "attention.h"
#include "exp_avx2.inc"

namespace psilonet_qmm {

void attend_one(const float* qs, const float* k, int64_t ks, const float* v, int64_t vs, int visible, int D,
                float* scores, float* out) {
  const int chunks = D / 8;
  __m256 q[32];
  for (int c = 0; c < chunks; ++c) q[c] = _mm256_loadu_ps(qs + 8 * c);
  float m = -INFINITY;
  for (int j = 0; j < visible; ++j) {
    const float* kj = k + j * ks;
    __m256 a = _mm256_mul_ps(q[0], _mm256_loadu_ps(kj));
    for (int c = 1; c < chunks; ++c) a = _mm256_fmadd_ps(q[c], _mm256_loadu_ps(kj + 8 * c), a);
    scores[j] = avx2::hsum(a);
    m = scores[j] > m ? scores[j] : m;
  }
  const __m256 mb = _mm256_set1_ps(m);
  __m256 z = _mm256_setzero_ps();
  int j = 0;
  for (; j + 8 <= visible; j += 8) {
    const __m256 e = avx2::exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(scores + j), mb));
    _mm256_storeu_ps(scores + j, e);
    z = _mm256_add_ps(z, e);
  }
  float total = avx2::hsum(z);
  if (j < visible) {  // the last few slots through one masked vector
    alignas(32) float tail[8];
    for (int t = 0; t < 8; ++t) tail[t] = j + t < visible ? scores[j + t] - m : -100.0f;
    _mm256_store_ps(tail, avx2::exp_nonpositive(_mm256_load_ps(tail)));
    for (int t = 0; j + t < visible; ++t) {
      scores[j + t] = tail[t];
      total += tail[t];
    }
  }
  __m256 acc[32];
  for (int c = 0; c < chunks; ++c) acc[c] = _mm256_setzero_ps();
  for (j = 0; j < visible; ++j) {
    const __m256 p = _mm256_set1_ps(scores[j]);
    const float* vj = v + j * vs;
    for (int c = 0; c < chunks; ++c) acc[c] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vj + 8 * c), acc[c]);
  }
  const __m256 inv = _mm256_set1_ps(1.0f / total);
  for (int c = 0; c < chunks; ++c) _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(acc[c], inv));
}

}  // namespace psilonet_qmm
