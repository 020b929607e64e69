#include "qmm.h"

#include <sstream>
#include <stdexcept>

#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"

namespace psilonet_qmm {

mx::array quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                           const mx::array& biases, int group_size, int bits, int mode,
                           mx::StreamOrDevice s) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("qmm: " + what); };
  if (bits != 4 && bits != 8) fail("bits must be 4 or 8");
  if (mode != FLOAT && mode != INT8 && mode != INT16) fail("mode must be 0 (float32), 1 (int8) or 2 (int16)");
  if (group_size % 32 != 0 || group_size <= 0) fail("group_size must be a multiple of 32");
  if (w.ndim() != 2 || w.dtype() != mx::uint32) fail("w must be a 2-D uint32 array");
  if (x.ndim() < 1) fail("x must have at least one axis");
  const int K = x.shape(-1), N = w.shape(0);
  if (static_cast<int64_t>(w.shape(1)) * 32 != static_cast<int64_t>(K) * bits || K % group_size != 0) {
    std::ostringstream msg;
    msg << "x has " << K << " columns but w packs " << w.shape(1) * 32 / bits << " per row";
    fail(msg.str());
  }
  const mx::Shape groups{N, K / group_size};
  if (scales.shape() != groups || biases.shape() != groups) fail("scales and biases must be (N, K / group_size)");
  if (scales.dtype() != mx::float32 || biases.dtype() != mx::float32) fail("scales and biases must be float32");
  auto stream = mx::to_stream(s);
  // A transposed or sliced x is read through its strides (kernels.cpp copies rows once anyway).
  auto flat = mx::reshape(x.dtype() == mx::float32 ? x : mx::astype(x, mx::float32, stream), {-1, K}, stream);
  auto out = mx::array({flat.shape(0), N}, mx::float32,
                       std::make_shared<QuantizedMatmul>(stream, group_size, bits, mode),
                       {flat, w, scales, biases});
  auto shape = x.shape();
  shape.back() = N;
  return mx::reshape(out, shape, stream);
}

void QuantizedMatmul::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  auto& x = inputs[0];
  auto& w = inputs[1];
  auto& scales = inputs[2];
  auto& biases = inputs[3];
  auto& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  encoder.set_input_array(x);
  encoder.set_input_array(w);
  encoder.set_input_array(scales);
  encoder.set_input_array(biases);
  encoder.set_output_array(out);
  for (const auto* a : {&w, &scales, &biases})
    if (!a->flags().row_contiguous) throw std::invalid_argument("qmm: w, scales and biases must be row-contiguous");
  Problem p{x.data<float>(), x.strides(0), x.strides(1), w.data<uint32_t>(), scales.data<float>(), biases.data<float>(),
            out.data<float>(), static_cast<int>(x.shape(0)), static_cast<int>(w.shape(0)),
            static_cast<int>(x.shape(1)), bits_, group_size_};
  encoder.dispatch([p, mode = mode_]() { qmm(p, mode); });
}

void QuantizedMatmul::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("qmm: CPU only (on a GPU use mx.quantized_matmul)");
}

std::vector<mx::array> QuantizedMatmul::vjp(const std::vector<mx::array>& primals,
                                            const std::vector<mx::array>& cotangents,
                                            const std::vector<int>& argnums,
                                            const std::vector<mx::array>&) {
  std::vector<mx::array> grads;
  for (int arg : argnums) {
    if (arg != 0) throw std::invalid_argument("qmm: gradients flow to x only");
    grads.push_back(mx::quantized_matmul(cotangents[0], primals[1], primals[2], primals[3], false,
                                         group_size_, bits_, "affine", stream()));
  }
  return grads;
}

std::vector<mx::Shape> QuantizedMatmul::output_shapes(const std::vector<mx::array>& inputs) {
  return {{inputs[0].shape(0), inputs[1].shape(0)}};
}

bool QuantizedMatmul::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const QuantizedMatmul&>(other);
  return group_size_ == o.group_size_ && bits_ == o.bits_ && mode_ == o.mode_;
}

}  // namespace psilonet_qmm
