// SwiGLU, silu(gate) * x = (gate * sigmoid(gate)) * x, of float32 arrays on the CPU as one MLX
// primitive, equal to MLX's CPU result bit for bit.
//
// Every block's MLP gates its up projection so (mlx-lm's activations.swiglu). MLX's CPU
// sigmoid is 1 / (1 + exp(|g|)), mirrored for g >= 0, with MLX's own exp (a degree-6
// polynomial in the fraction of g log2 e, scaled by 2^n; mlx/backend/cpu/simd/math.h); on
// Linux MLX runs it one value at a time, about 13 ns per value here, a tenth of an 8-row
// decode step. This file runs the same float operations eight lanes at a time (AVX2; the
// rounding to n in double, as MLX's floor(x + 0.5) does), so every value is MLX's.
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace psilonet_qmm {

namespace mx = mlx::core;

// gate and x float32 of one shape -> silu(gate) * x.
mx::array swiglu(const mx::array& gate, const mx::array& x, mx::StreamOrDevice s = {});

void swiglu_portable(const float* gate, const float* x, float* out, int64_t n);
void swiglu_avx2(const float* gate, const float* x, float* out, int64_t n);  // swiglu_avx2.cpp

class SwiGLU : public mx::Primitive {
 public:
  explicit SwiGLU(mx::Stream stream) : mx::Primitive(stream) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "PsilonetSwiGLU"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

}  // namespace psilonet_qmm
