#include "entropy.h"

#include <cmath>
#include <stdexcept>

#include "mlx/backend/cpu/encoder.h"
#include "strided.h"

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
  auto shape = logits.shape();
  shape.pop_back();
  return mx::array(shape, mx::float32, std::make_shared<TokenEntropy>(stream), {logits});
}

void TokenEntropy::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const auto& logits = inputs[0];
  auto& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  encoder.set_input_array(logits);
  encoder.set_output_array(out);
  float* o = out.data<float>();
  const int vocab = logits.shape(-1);
  const int n = static_cast<int>(logits.size() / vocab);
  encoder.dispatch([logits = mx::array::unsafe_weak_copy(logits), o, n, vocab]() {
    std::vector<float> copy;  // only where the logits are strided (strided.h)
    const float* l = row_major(logits, copy);
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
  auto shape = inputs[0].shape();
  shape.pop_back();
  return {shape};
}

}  // namespace psilonet_qmm
