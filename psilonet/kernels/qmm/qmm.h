// The MLX op and primitive around kernels.h: x @ W.T with W in MLX's affine quantized layout.
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace psilonet_qmm {

namespace mx = mlx::core;

// mode: kernels.h's Mode (0 float32, 1 int8, 2 int16 activations).
// x (..., K) float32; w (N, K*bits/32) uint32; scales, biases (N, K/group) float32 -> (..., N).
mx::array quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                           const mx::array& biases, int group_size, int bits, int mode,
                           mx::StreamOrDevice s = {});

// The same product from the panel layout of W (kernels.h): wp (N / 8, K * bits) uint8, sp and bp
// (N / 8, K / group, 8) float32, made by pack_panels; int16 activations. MLX's layout is not an
// input, so a model that keeps only the panels in memory reads no other copy while it decodes.
mx::array quantized_matmul_panel(const mx::array& x, const mx::array& wp, const mx::array& sp,
                                 const mx::array& bp, int group_size, int bits, mx::StreamOrDevice s = {});

// silu(x @ Wg.T) * (x @ Wu.T): an MLP's gate and up products and its gating (mlx-lm's swiglu,
// bit for bit: swiglu.h) in one primitive, from the panel layout of the gate's rows followed by
// the up projection's (wp (2F / 8, K * bits), sp and bp (2F / 8, K / group, 8)) -> (..., F).
// One node and one pass of the thread pool where three nodes and two passes were.
mx::array gated_product_panel(const mx::array& x, const mx::array& wp, const mx::array& sp, const mx::array& bp,
                              int group_size, int bits, mx::StreamOrDevice s = {});

// MLX's affine layout (w, scales, biases) of a panel layout, as a graph of MLX ops: exact (the
// same codes, scales and biases), lazy until something evaluates it.
std::vector<mx::array> unpack_panels(const mx::array& wp, const mx::array& sp, const mx::array& bp, int group_size,
                                     int bits, mx::StreamOrDevice s = {});

class QuantizedMatmul : public mx::Primitive {
 public:
  QuantizedMatmul(mx::Stream stream, int group_size, int bits, int mode, bool panel = false)
      : mx::Primitive(stream), group_size_(group_size), bits_(bits), mode_(mode), panel_(panel) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  // Gradients flow to x only (the quantized weights are frozen), through MLX's own kernel.
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals,
                             const std::vector<mx::array>& cotangents, const std::vector<int>& argnums,
                             const std::vector<mx::array>& outputs) override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "PsilonetQuantizedMatmul"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  int group_size_, bits_, mode_;
  bool panel_;
};

class GatedProduct : public mx::Primitive {
 public:
  GatedProduct(mx::Stream stream, int group_size, int bits)
      : mx::Primitive(stream), group_size_(group_size), bits_(bits) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  // Gradients flow to x only, through MLX's kernels on the unpacked weights.
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals,
                             const std::vector<mx::array>& cotangents, const std::vector<int>& argnums,
                             const std::vector<mx::array>& outputs) override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "PsilonetGatedProduct"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  int group_size_, bits_;
};

}  // namespace psilonet_qmm
