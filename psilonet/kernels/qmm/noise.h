// The dose's per-step noise on the CPU as one MLX primitive, equal bit for bit to MLX's
//   mx.stack([mx.random.normal((L, T, D), key=keys[r]) for r in range(B)], axis=1)
//
// MLX draws a normal as sqrt(2) * erfinv(u) with u uniform in [nextafter(-1, 0), 1): per key,
// threefry2x32 turns the counter pairs (c, c + n/2 + n%2) into two 32-bit words each
// (mlx/backend/cpu/primitives.cpp, RandomBits), u = (2 * min(bits / 2^32, nextafter(1, 0)))
// + nextafter(-1, 0) in float32, and erfinv is MLX's polynomial in log(1 - u^2)
// (mlx/backend/cpu/simd/math.h). On the CPU that graph is a scalar pass per op; a dose draws
// L * T * D values per row and step. Here the counters run eight at a time (AVX2 integer ops),
// the polynomials with fused multiply-adds (as MLX's std::fma: one rounding), and the
// logarithm is the same std::log(float) MLX calls, so every value is MLX's.
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace psilonet_qmm {

namespace mx = mlx::core;

// keys (B, 2) uint32 (mx.random.key's two words per row) -> (L, B, T, D) float32.
mx::array dose_noise(const mx::array& keys, int layers, int tokens, int features, mx::StreamOrDevice s = {});

// Counter pairs from .. to - 1 (to <= n / 2, and the odd last value where to == n / 2) of the n
// normals of one key (k1, k2) into out: MLX's mx.random.normal((n,), key) values.
void normal_pairs_portable(uint32_t k1, uint32_t k2, float* out, int64_t n, int64_t from, int64_t to);
void normal_pairs_avx2(uint32_t k1, uint32_t k2, float* out, int64_t n, int64_t from, int64_t to);  // noise_avx2.cpp

class DoseNoise : public mx::Primitive {
 public:
  DoseNoise(mx::Stream stream, int layers, int tokens, int features)
      : mx::Primitive(stream), layers_(layers), tokens_(tokens), features_(features) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "PsilonetDoseNoise"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  int layers_, tokens_, features_;
};

}  // namespace psilonet_qmm
