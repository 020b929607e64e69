// Attention of a few queries over a fixed KV cache's span, on the CPU as one MLX primitive.
//
// out[b, h, i] = sum_j p_j v[b, h / (H / KV), j] with p = softmax over the visible slots j of
// (q[b, h, i] * scale) . k[b, h / (H / KV), j]: grouped-query heads, and slot j visible to query i
// iff j <= offset + i (the fixed cache's mask: psilonet.generation.decode_step.FixedKVCache), so
// the slots after the written ones are never read. MLX's CPU path for the same is a graph of
// about eight ops per block (scale, two batched matmuls of one small product per head, the mask,
// the softmax); here it is one task per block: per query the scaled dots, the maximum, a
// vectorised exp (the entropy kernel's) and the weighted sum of the values. It equals
// mx.fast.scaled_dot_product_attention up to float rounding (summation order and the exp).
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace psilonet_qmm {

namespace mx = mlx::core;

// q (B, H, T, D), k and v (B, KV, S, D) float32 (any strides), offset an int32 scalar;
// H a multiple of KV, D a multiple of 8 (at most 256) -> (B, H, T, D).
mx::array span_attention(const mx::array& q, const mx::array& k, const mx::array& v, const mx::array& offset,
                         float scale, mx::StreamOrDevice s = {});

// One query: scaled query qs (D floats, already times scale), keys and values rows j at
// k + j * ks and v + j * vs (D contiguous floats each), slots 0 .. visible - 1; out (D floats).
// scores: scratch of `visible` floats. In attention_avx2.cpp (-mavx2 -mfma) or portable C++.
void attend_one(const float* qs, const float* k, int64_t ks, const float* v, int64_t vs, int visible, int D,
                float* scores, float* out);

class SpanAttention : public mx::Primitive {
 public:
  SpanAttention(mx::Stream stream, float scale) : mx::Primitive(stream), scale_(scale) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "PsilonetSpanAttention"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return scale_ == static_cast<const SpanAttention&>(other).scale_;
  }

 private:
  float scale_;
};

}  // namespace psilonet_qmm
