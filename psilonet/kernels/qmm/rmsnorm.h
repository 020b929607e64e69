// RMS norm of float32 rows on the CPU as one MLX primitive, equal to mx.fast.rms_norm's CPU
// result bit for bit.
//
// MLX has no CPU kernel for mx.fast.rms_norm: its CPU path is the graph
//   y = (x * rsqrt(sum(x * x) * (1 / D) + eps)) * w
// of three dispatched ops (a square, a sum, a fused rest), and a decode step normalises 61 times.
// Here the same float operations run in one call: the sum one value after another from 0, as
// MLX's CPU reduction does on Linux (its SIMD width is 1 there), 1 / D rounded from double as
// MLX's NumberOfElements, rsqrt as 1 / sqrt, and the two products per value (eight lanes at a
// time: a product is exact whatever the width).
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace psilonet_qmm {

namespace mx = mlx::core;

// x (..., D) float32, w (D,) float32.
mx::array rms_norm(const mx::array& x, const mx::array& w, float eps, mx::StreamOrDevice s = {});

class RmsNorm : public mx::Primitive {
 public:
  RmsNorm(mx::Stream stream, float eps) : mx::Primitive(stream), eps_(eps) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "PsilonetRmsNorm"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return eps_ == static_cast<const RmsNorm&>(other).eps_;
  }

 private:
  float eps_;
};

}  // namespace psilonet_qmm
