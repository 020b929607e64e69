// Next-token entropy (bits) of float32 logits on the CPU as one MLX primitive.
//
// H = -sum_v p_v log2 p_v with p = softmax(logits), computed per row in two passes over the
// vocabulary: the maximum m, then Z = sum exp(l - m) and S = sum exp(l - m) (l - m), so that
// H = (log Z - S / Z) / log 2. MLX's CPU graph for the same (logsumexp, exp, multiply, sum) runs
// a scalar exp several times over the vocabulary; here exp is an AVX2 polynomial (Cephes',
// relative error about 1e-7) and the sums run in eight lanes, then double. Against a float64
// reference it is within about 1e-5 bits on 49,152 logits, where MLX's float32 graph is off by
// about 1e-4 (its single float32 sum).
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace psilonet_qmm {

namespace mx = mlx::core;

// logits (..., V) float32 -> (...) entropy in bits. Needs AVX2 + FMA (the caller checks).
mx::array token_entropy(const mx::array& logits, mx::StreamOrDevice s = {});

// One row: kernels in entropy.cpp (built with -mavx2 -mfma).
float entropy_bits_avx2(const float* logits, int vocab);

// Hidden-state entropy (bits) of each state's last position: p = h^2 / max(sum h^2, 1e-30) over
// D, H = -sum p log2 max(p, 1e-30) (psilonet.generation.entropy.hidden_entropy_bits), for n states
// (B, T, D) float32 of any strides -> (B, n). One primitive reads all n where MLX's graph slices,
// stacks and reduces them (about 70 nodes of a tracked step); sums in eight lanes, then double,
// and a vectorised log2 (Cephes' logf polynomial).
mx::array layer_entropies(const std::vector<mx::array>& states, mx::StreamOrDevice s = {});

// One state row of D contiguous floats (entropy_avx2.cpp, or portable C++).
float energy_entropy_bits(const float* h, int D);

class LayerEntropies : public mx::Primitive {
 public:
  explicit LayerEntropies(mx::Stream stream) : mx::Primitive(stream) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "PsilonetLayerEntropies"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

class TokenEntropy : public mx::Primitive {
 public:
  explicit TokenEntropy(mx::Stream stream) : mx::Primitive(stream) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "PsilonetTokenEntropy"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

}  // namespace psilonet_qmm
