#include "qmm.h"

#include <sstream>
#include <stdexcept>
#include <vector>

#include "kernels.h"
#include "strided.h"
#include "swiglu.h"
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
  // x keeps its shape: every axis but the last is a row (no reshapes around the product; a
  // decode step makes 211 products, and each graph node costs dispatch time). A transposed or
  // sliced x is read through its strides (kernels.cpp copies rows once anyway).
  auto shape = x.shape();
  shape.back() = N;
  return mx::array(shape, mx::float32, std::make_shared<QuantizedMatmul>(stream, group_size, bits, mode),
                   {x.dtype() == mx::float32 ? x : mx::astype(x, mx::float32, stream), w, scales, biases});
}

mx::array quantized_matmul_panel(const mx::array& x, const mx::array& wp, const mx::array& sp,
                                 const mx::array& bp, int group_size, int bits, mx::StreamOrDevice s) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("qmm: " + what); };
  if (bits != 4 && bits != 8) fail("bits must be 4 or 8");
  if (group_size % 32 != 0 || group_size <= 0) fail("group_size must be a multiple of 32");
  if (x.ndim() < 1) fail("x must have at least one axis");
  if (wp.ndim() != 2 || wp.dtype() != mx::uint8) fail("wp must be a 2-D uint8 array (pack_panels)");
  const int K = x.shape(-1), N = wp.shape(0) * 8;
  if (K % group_size != 0 || static_cast<int64_t>(wp.shape(1)) != static_cast<int64_t>(K) * bits) {
    std::ostringstream msg;
    msg << "x has " << K << " columns but wp packs " << wp.shape(1) / bits << " per row";
    fail(msg.str());
  }
  const mx::Shape panels{N / 8, K / group_size, 8};
  if (sp.shape() != panels || bp.shape() != panels || sp.dtype() != mx::float32 || bp.dtype() != mx::float32)
    fail("sp and bp must be float32 of shape (N / 8, K / group_size, 8)");
  auto stream = mx::to_stream(s);
  auto shape = x.shape();
  shape.back() = N;
  return mx::array(shape, mx::float32, std::make_shared<QuantizedMatmul>(stream, group_size, bits, INT16, true),
                   {x.dtype() == mx::float32 ? x : mx::astype(x, mx::float32, stream), wp, sp, bp});
}

mx::array gated_product_panel(const mx::array& x, const mx::array& wp, const mx::array& sp, const mx::array& bp,
                              int group_size, int bits, mx::StreamOrDevice s) {
  auto both = quantized_matmul_panel(x, wp, sp, bp, group_size, bits, s);  // checks every input
  if (wp.shape(0) % 2 != 0) throw std::invalid_argument("qmm: a gated product needs an even number of panels");
  auto shape = both.shape();
  shape.back() /= 2;
  return mx::array(shape, mx::float32, std::make_shared<GatedProduct>(mx::to_stream(s), group_size, bits),
                   both.inputs());
}

std::vector<mx::array> unpack_panels(const mx::array& wp, const mx::array& sp, const mx::array& bp, int group_size,
                                     int bits, mx::StreamOrDevice s) {
  if (bits != 4 && bits != 8) throw std::invalid_argument("qmm: bits must be 4 or 8");
  const int P = wp.shape(0), N = P * 8, K = wp.shape(1) / bits, B = K / 32;
  mx::array codes = mx::array(0);
  if (bits == 4) {
    // [panel, block, chunk c, row t, e] -> nibble h: position 4c + 2h + e
    auto b = mx::reshape(wp, {P, B, 8, 8, 2}, s);
    auto lo = mx::bitwise_and(b, mx::array(uint8_t{0x0F}), s);
    auto hi = mx::right_shift(b, mx::array(uint8_t{4}), s);
    codes = mx::transpose(mx::stack({lo, hi}, 4, s), {0, 3, 1, 2, 4, 5}, s);  // [panel, t, block, c, h, e]
  } else {
    codes = mx::transpose(mx::reshape(wp, {P, B, 16, 8, 2}, s), {0, 3, 1, 2, 4}, s);  // [panel, t, block, i, e]
  }
  const int per_word = 32 / bits;
  auto values = mx::reshape(mx::astype(codes, mx::uint32, s), {N, K / per_word, per_word}, s);
  auto w = mx::zeros({N, K / per_word}, mx::uint32, s);
  for (int i = 0; i < per_word; ++i) {
    auto v = mx::squeeze(mx::slice(values, {0, 0, i}, {N, K / per_word, i + 1}, s), 2, s);
    w = mx::bitwise_or(w, mx::left_shift(v, mx::array(static_cast<uint32_t>(i * bits)), s), s);
  }
  auto rows = [&](const mx::array& a) { return mx::reshape(mx::transpose(a, {0, 2, 1}, s), {N, K / group_size}, s); };
  return {w, rows(sp), rows(bp)};
}

namespace {

// The stride between consecutive rows when x's leading axes collapse into one, else -1.
int64_t row_stride(const mx::array& x) {
  const int nd = x.ndim();
  if (nd < 2) return x.shape(-1);
  int64_t stride = -1, extent = 0;  // extent: the stride the next outer axis needs
  for (int a = nd - 2; a >= 0; --a) {
    if (x.shape(a) == 1) continue;
    if (stride < 0) {
      stride = x.strides(a);
    } else if (x.strides(a) != extent) {
      return -1;
    }
    extent = x.strides(a) * x.shape(a);
  }
  return stride < 0 ? x.shape(-1) : stride;
}

// The product of x (inputs[0]) and the weights (inputs[1..3]) into `out` (N outputs per row), with
// the inputs registered on the encoder. Where x's leading axes do not collapse (a transpose of
// them), the problem reads a row-major copy instead: `copy_to` is where the task must copy x's
// rows first (copy_row_major), else nullptr.
Problem product_of(const std::vector<mx::array>& inputs, float* out, int N, int bits, int group_size, bool panel,
                   mx::cpu::CommandEncoder& encoder, float*& copy_to) {
  const auto& x = inputs[0];
  for (const auto& a : inputs) encoder.set_input_array(a);
  for (int i = 1; i < 4; ++i)
    if (!inputs[i].flags().row_contiguous) throw std::invalid_argument("qmm: w, scales and biases must be row-contiguous");
  const int K = x.shape(-1), M = static_cast<int>(x.size() / K);
  Problem p{x.data<float>(), row_stride(x), x.strides(x.ndim() - 1), reinterpret_cast<const uint32_t*>(inputs[1].data<void>()),
            inputs[2].data<float>(), inputs[3].data<float>(), out, M, N, K, bits, group_size, panel};
  copy_to = nullptr;
  if (p.x_row < 0) {
    mx::array rows({M, K}, mx::float32, nullptr, {});
    rows.set_data(mx::allocator::malloc(rows.nbytes()));
    encoder.add_temporary(rows);
    copy_to = rows.data<float>();
    p.x = copy_to, p.x_row = K, p.x_col = 1;
  }
  return p;
}

}  // namespace

void QuantizedMatmul::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  auto& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  float* copy_to;
  const Problem p = product_of(inputs, out.data<float>(), out.shape(-1), bits_, group_size_, panel_, encoder, copy_to);
  encoder.set_output_array(out);
  encoder.dispatch([p, x = mx::array::unsafe_weak_copy(inputs[0]), copy_to, mode = mode_]() {
    if (copy_to) copy_row_major(x, copy_to);
    qmm(p, mode);
  });
}

void GatedProduct::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  auto& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  const int F = out.shape(-1), M = static_cast<int>(out.size() / F);
  // Both products into one (M, 2F) scratch, then each row's gating into out.
  mx::array both({M, 2 * F}, mx::float32, nullptr, {});
  both.set_data(mx::allocator::malloc(both.nbytes()));
  encoder.add_temporary(both);
  float* copy_to;
  const Problem p = product_of(inputs, both.data<float>(), 2 * F, bits_, group_size_, true, encoder, copy_to);
  encoder.set_output_array(out);
  encoder.dispatch([p, x = mx::array::unsafe_weak_copy(inputs[0]), copy_to, o = out.data<float>(), avx2 = isa() >= AVX2]() {
    if (copy_to) copy_row_major(x, copy_to);
    qmm(p, INT16);
    const int F = p.N / 2;
    for (int m = 0; m < p.M; ++m) {
      const float* g = p.out + static_cast<int64_t>(m) * p.N;
#if defined(__x86_64__)
      if (avx2) {
        swiglu_avx2(g, g + F, o + static_cast<int64_t>(m) * F, F);
        continue;
      }
#endif
      swiglu_portable(g, g + F, o + static_cast<int64_t>(m) * F, F);
    }
  });
}

void GatedProduct::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("qmm: CPU only (on a GPU use mx.quantized_matmul)");
}

std::vector<mx::array> GatedProduct::vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                                         const std::vector<int>& argnums, const std::vector<mx::array>&) {
  auto st = stream();
  auto plain = unpack_panels(primals[1], primals[2], primals[3], group_size_, bits_, st);
  const int F = plain[0].shape(0) / 2;
  auto half = [&](const mx::array& a, int part) {
    return mx::slice(a, {part * F, 0}, {(part + 1) * F, a.shape(1)}, st);
  };
  auto product = [&](const mx::array& v, int part, bool transpose) {
    return mx::quantized_matmul(v, half(plain[0], part), half(plain[1], part), half(plain[2], part), transpose,
                                group_size_, bits_, "affine", st);
  };
  const auto& x = primals[0];
  const auto& c = cotangents[0];
  auto g = product(x, 0, true), u = product(x, 1, true);
  auto sig = mx::sigmoid(g, st);
  auto one = mx::array(1.0f);
  auto dg = mx::multiply(c, mx::multiply(u, mx::multiply(sig, mx::add(one, mx::multiply(g, mx::subtract(one, sig, st), st), st), st), st), st);
  auto du = mx::multiply(c, mx::multiply(g, sig, st), st);
  std::vector<mx::array> grads;
  for (int arg : argnums) {
    if (arg != 0) throw std::invalid_argument("qmm: gradients flow to x only");
    grads.push_back(mx::add(product(dg, 0, false), product(du, 1, false), st));
  }
  return grads;
}

std::vector<mx::Shape> GatedProduct::output_shapes(const std::vector<mx::array>& inputs) {
  auto shape = inputs[0].shape();
  shape.back() = inputs[1].shape(0) * 4;  // 8 rows per panel, half of them gates
  return {shape};
}

bool GatedProduct::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const GatedProduct&>(other);
  return group_size_ == o.group_size_ && bits_ == o.bits_;
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
    if (panel_) {
      auto plain = unpack_panels(primals[1], primals[2], primals[3], group_size_, bits_, stream());
      grads.push_back(mx::quantized_matmul(cotangents[0], plain[0], plain[1], plain[2], false, group_size_, bits_,
                                           "affine", stream()));
    } else {
      grads.push_back(mx::quantized_matmul(cotangents[0], primals[1], primals[2], primals[3], false,
                                           group_size_, bits_, "affine", stream()));
    }
  }
  return grads;
}

std::vector<mx::Shape> QuantizedMatmul::output_shapes(const std::vector<mx::array>& inputs) {
  auto shape = inputs[0].shape();
  shape.back() = inputs[1].shape(0) * (panel_ ? 8 : 1);
  return {shape};
}

bool QuantizedMatmul::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const QuantizedMatmul&>(other);
  return group_size_ == o.group_size_ && bits_ == o.bits_ && mode_ == o.mode_ && panel_ == o.panel_;
}

}  // namespace psilonet_qmm
