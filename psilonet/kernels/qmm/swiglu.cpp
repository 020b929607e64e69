#include "swiglu.h"

#include <stdexcept>

#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "strided.h"
#include "swiglu_math.inc"

namespace psilonet_qmm {

void swiglu_portable(const float* gate, const float* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = swiglu_detail::swiglu_of(gate[i], x[i]);
}

mx::array swiglu(const mx::array& gate, const mx::array& x, mx::StreamOrDevice s) {
  if (gate.dtype() != mx::float32 || x.dtype() != mx::float32 || gate.shape() != x.shape())
    throw std::invalid_argument("swiglu: gate and x must be float32 arrays of one shape");
  auto stream = mx::to_stream(s);
  return mx::array(gate.shape(), mx::float32, std::make_shared<SwiGLU>(stream), {gate, x});
}

void SwiGLU::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const auto& gate = inputs[0];
  const auto& x = inputs[1];
  auto& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  encoder.set_input_array(gate);
  encoder.set_input_array(x);
  encoder.set_output_array(out);
  float* o = out.data<float>();
  const int64_t n = static_cast<int64_t>(out.size());
  const bool avx2 = isa() >= AVX2;
  encoder.dispatch([gate = mx::array::unsafe_weak_copy(gate), x = mx::array::unsafe_weak_copy(x), o, n, avx2]() {
    std::vector<float> gc, xc;  // copies only where an input is strided (strided.h)
    const float *g = row_major(gate, gc), *xp = row_major(x, xc);
#if defined(__x86_64__)
    if (avx2) return swiglu_avx2(g, xp, o, n);
#endif
    swiglu_portable(g, xp, o, n);
  });
}

void SwiGLU::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("swiglu: CPU only");
}

std::vector<mx::array> SwiGLU::vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                                   const std::vector<int>& argnums, const std::vector<mx::array>&) {
  // d/dgate = x sigmoid(g) (1 + g (1 - sigmoid(g))), d/dx = g sigmoid(g), in MLX's ops
  const auto& g = primals[0];
  const auto& x = primals[1];
  const auto& c = cotangents[0];
  auto s = stream();
  auto sig = mx::sigmoid(g, s);
  std::vector<mx::array> grads;
  for (int arg : argnums) {
    if (arg == 0) {
      auto d = mx::multiply(sig, mx::add(mx::array(1.0f), mx::multiply(g, mx::subtract(mx::array(1.0f), sig, s), s), s), s);
      grads.push_back(mx::multiply(c, mx::multiply(x, d, s), s));
    } else {
      grads.push_back(mx::multiply(c, mx::multiply(g, sig, s), s));
    }
  }
  return grads;
}

std::vector<mx::Shape> SwiGLU::output_shapes(const std::vector<mx::array>& inputs) { return {inputs[0].shape()}; }

}  // namespace psilonet_qmm
