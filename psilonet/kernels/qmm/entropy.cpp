#include "entropy.h"

#include <cmath>
#include <stdexcept>

#include "mlx/backend/cpu/encoder.h"

namespace psilonet_qmm {

namespace {

// The same two passes in plain C++ (a build for a CPU without the AVX2 file: arm64).
[[maybe_unused]] float entropy_bits_portable(const float* l, int vocab) {
  float m = -INFINITY;
  for (int v = 0; v < vocab; ++v) m = std::fmax(m, l[v]);
  if (!std::isfinite(m)) return NAN;
  double z = 0, s = 0;
  for (int v = 0; v < vocab; ++v) {
    const double d = static_cast<double>(l[v]) - m, e = std::exp(d);
    z += e;
    s += e * d;
  }
  return static_cast<float>((std::log(z) - s / z) / std::log(2.0));
}

}  // namespace

mx::array token_entropy(const mx::array& logits, mx::StreamOrDevice s) {
  if (logits.ndim() < 1 || logits.dtype() != mx::float32 || logits.shape(-1) < 1)
    throw std::invalid_argument("token_entropy: logits must be float32 with a non-empty last axis");
  auto stream = mx::to_stream(s);
  const int vocab = logits.shape(-1);
  // Rows must be contiguous for the kernel: a contiguous array reshapes without a copy.
  auto rows = mx::reshape(mx::contiguous(logits, false, stream), {-1, vocab}, stream);
  auto out = mx::array({rows.shape(0)}, mx::float32, std::make_shared<TokenEntropy>(stream), {rows});
  auto shape = logits.shape();
  shape.pop_back();
  return mx::reshape(out, shape, stream);
}

void TokenEntropy::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const auto& rows = inputs[0];
  auto& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  encoder.set_input_array(rows);
  encoder.set_output_array(out);
  if (!rows.flags().row_contiguous) throw std::invalid_argument("token_entropy: rows must be contiguous");
  const float* l = rows.data<float>();
  float* o = out.data<float>();
  const int n = rows.shape(0), vocab = rows.shape(1);
  encoder.dispatch([l, o, n, vocab]() {
    for (int r = 0; r < n; ++r) {
#if defined(__x86_64__)
      o[r] = entropy_bits_avx2(l + static_cast<int64_t>(r) * vocab, vocab);
#else
      o[r] = entropy_bits_portable(l + static_cast<int64_t>(r) * vocab, vocab);
#endif
    }
  });
}

void TokenEntropy::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("token_entropy: CPU only");
}

std::vector<mx::Shape> TokenEntropy::output_shapes(const std::vector<mx::array>& inputs) {
  return {{inputs[0].shape(0)}};
}

}  // namespace psilonet_qmm
