#include "rmsnorm.h"

#include <cmath>
#include <stdexcept>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/fast.h"
#include "mlx/transforms.h"
#include "strided.h"

namespace psilonet_qmm {

namespace {

void run(const float* x, const float* w, float* out, int64_t rows, int D, float eps) {
  const float inv = static_cast<float>(1.0 / D);  // NumberOfElements(inverted), as float32
  for (int64_t r = 0; r < rows; ++r, x += D, out += D) {
    float sum = 0.0f;
    for (int d = 0; d < D; ++d) sum = sum + x[d] * x[d];  // in order: MLX's scalar reduction
    sum = 0.0f + sum;  // the reduction's final op(init, accumulator)
    const float r_ = 1.0f / std::sqrt(sum * inv + eps);
    // -ffp-contract=off for this file; the products are exact per value, so the compiler may
    // vectorise this loop without changing a bit
    for (int d = 0; d < D; ++d) out[d] = (x[d] * r_) * w[d];
  }
}

}  // namespace

mx::array rms_norm(const mx::array& x, const mx::array& w, float eps, mx::StreamOrDevice s) {
  if (x.dtype() != mx::float32 || w.dtype() != mx::float32 || x.ndim() < 1 || w.ndim() != 1 ||
      w.shape(0) != x.shape(-1))
    throw std::invalid_argument("rms_norm: x must be float32 (..., D) and w float32 (D,)");
  auto stream = mx::to_stream(s);
  return mx::array(x.shape(), mx::float32, std::make_shared<RmsNorm>(stream, eps), {x, w});
}

void RmsNorm::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const auto& x = inputs[0];
  const auto& w = inputs[1];
  auto& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  encoder.set_input_array(x);
  encoder.set_input_array(w);
  encoder.set_output_array(out);
  const int D = x.shape(-1);
  const int64_t rows = D ? static_cast<int64_t>(x.size()) / D : 0;
  encoder.dispatch([x = mx::array::unsafe_weak_copy(x), w = mx::array::unsafe_weak_copy(w), o = out.data<float>(),
                    rows, D, eps = eps_]() {
    std::vector<float> xc, wc;  // copies only where an input is strided (strided.h)
    run(row_major(x, xc), row_major(w, wc), o, rows, D, eps);
  });
}

void RmsNorm::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("rms_norm: CPU only (on a GPU use mx.fast.rms_norm)");
}

std::vector<mx::array> RmsNorm::vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                                    const std::vector<int>& argnums, const std::vector<mx::array>&) {
  // MLX's own gradient of the same function
  auto f = [eps = eps_, s = stream()](const std::vector<mx::array>& in) {
    return std::vector<mx::array>{mx::fast::rms_norm(in[0], in[1], eps, s)};
  };
  auto [outs, grads] = mx::vjp(f, {primals[0], primals[1]}, {cotangents[0]});
  std::vector<mx::array> picked;
  for (int arg : argnums) picked.push_back(grads[arg]);
  return picked;
}

std::vector<mx::Shape> RmsNorm::output_shapes(const std::vector<mx::array>& inputs) { return {inputs[0].shape()}; }

}  // namespace psilonet_qmm
