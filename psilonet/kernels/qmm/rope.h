// Rotary position embedding (RoPE) of float32 arrays on the CPU as one MLX primitive.
//
// MLX has no CPU kernel for mx.fast.rope: on the CPU it builds a graph of about a dozen ops per
// call (positions, frequencies, cos, sin, two slices, the rotation, a concatenation). A decode
// step rotates q and k in every block, so those ops cost more in dispatch than in arithmetic.
// This primitive does the same arithmetic, in the same order and with MLX's own exp, sin and
// cos (mlx/backend/cpu/simd), so its results equal mx.fast.rope's CPU results bit for bit:
//   positions[t] = (t + offset) * scale
//   inv_freq[i]  = exp(-i * (log(base) / (dims / 2)))             i < dims / 2
//   theta        = positions[t] * inv_freq[i]
//   forward:  (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos)
//   backward: (x1, x2) -> (x2 sin + x1 cos, x2 cos - x1 sin)       (the vjp)
// with x1, x2 the first and second halves of the first `dims` features (traditional: the even
// and odd ones); features past `dims` pass through.
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace psilonet_qmm {

namespace mx = mlx::core;

// x (B, ..., T, D) float32 with at least 3 axes, offset an int32 scalar or (B,) array.
mx::array rope(const mx::array& x, const mx::array& offset, int dims, bool traditional, float base, float scale,
               bool forward = true, mx::StreamOrDevice s = {});

class Rope : public mx::Primitive {
 public:
  Rope(mx::Stream stream, int dims, bool traditional, float base, float scale, bool forward)
      : mx::Primitive(stream), dims_(dims), traditional_(traditional), base_(base), scale_(scale), forward_(forward) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "PsilonetRoPE"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  int dims_;
  bool traditional_;
  float base_, scale_;
  bool forward_;
};

}  // namespace psilonet_qmm
