// One block's dose (psilonet.generation.perturb) on the CPU as one MLX primitive.
//
// For row b, token t and features d of the block output h (B, T, D), at layer l:
//   noise:  g[d] = h[d] + ((noise[l, b, t, d] * a) * i[b]) * std      a = 0.25 * s(l)
//           std  = sqrt(mean_d (h[d] - mean_d h)^2)   (sums in double)
//   linear: out[d] = sum_k coef[b, l, d, k] * g[idx[b, l, d * K + k]]   (k in order, float)
// with g = h where the noise is off and out = g where the linear map is off. This is the graph
// of perturb._make_apply in one call: that graph is some fifteen small ops per block (a
// variance, the noise's scale, a gather, a weighted sum, and the slices that pick the layer's
// map), and on these CPUs each op costs more in dispatch than in arithmetic. At intensity 0
// the noise term is zero and the map is the identity with coefficient 1, so h is unchanged.
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace psilonet_qmm {

namespace mx = mlx::core;

// h (B, T, D) float32; noise (L, B, T, D) float32, or an empty array for no noise; i (B, ...)
// float32 intensities (one per row); idx (B, L, ..., D*K) int32 and coef (B, L, ..., D, K)
// float32 the feature map, or empty arrays for none. Returns the dosed h at `layer`.
mx::array dose(const mx::array& h, const mx::array& noise, const mx::array& i, const mx::array& idx,
               const mx::array& coef, int layer, float sensitivity, float noise_per_intensity,
               mx::StreamOrDevice s = {});

class Dose : public mx::Primitive {
 public:
  Dose(mx::Stream stream, int layer, float sensitivity, float noise_per_intensity, bool noise, bool linear)
      : mx::Primitive(stream), layer_(layer), sensitivity_(sensitivity), per_intensity_(noise_per_intensity),
        noise_(noise), linear_(linear) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "PsilonetDose"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  int layer_;
  float sensitivity_, per_intensity_;
  bool noise_, linear_;
};

}  // namespace psilonet_qmm
