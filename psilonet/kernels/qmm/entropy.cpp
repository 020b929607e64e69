#include "entropy.h"

#include <algorithm>
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

#if !defined(__x86_64__)
float energy_entropy_bits(const float* h, int D) {
  double total = 0;
  for (int d = 0; d < D; ++d) total += static_cast<double>(h[d]) * h[d];
  const double inv = 1.0 / std::max(total, 1e-30);
  double sum = 0;
  for (int d = 0; d < D; ++d) {
    const double p = h[d] * h[d] * inv;
    sum += p * std::log2(std::max(p, 1e-30));
  }
  return sum >= 0 ? 0.0f : static_cast<float>(-sum);  // never -0 or a rounding below 0
}
#endif

mx::array layer_entropies(const std::vector<mx::array>& states, mx::StreamOrDevice s) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("layer_entropies: " + what); };
  if (states.empty()) fail("give at least one state");
  for (const auto& a : states)
    if (a.ndim() != 3 || a.dtype() != mx::float32 || a.shape(0) != states[0].shape(0) ||
        a.shape(2) != states[0].shape(2) || a.shape(1) < 1 || a.shape(2) < 1)
      fail("every state must be float32 (B, T, D) with the same B and D");
  const int B = states[0].shape(0), n = static_cast<int>(states.size());
  return mx::array({B, n}, mx::float32, std::make_shared<LayerEntropies>(mx::to_stream(s)), states);
}

void LayerEntropies::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  auto& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  std::vector<mx::array> states;
  for (const auto& a : inputs) {
    encoder.set_input_array(a);
    states.push_back(mx::array::unsafe_weak_copy(a));
  }
  encoder.set_output_array(out);
  encoder.dispatch([states = std::move(states), o = out.data<float>()]() {
    const int n = static_cast<int>(states.size());
    const int B = states[0].shape(0), D = states[0].shape(2);
    std::vector<float> row(D);
    for (int l = 0; l < n; ++l) {
      const auto& a = states[l];
      const float* p = a.data<float>();
      const int64_t last = static_cast<int64_t>(a.shape(1) - 1) * a.strides(1);
      for (int b = 0; b < B; ++b) {
        const float* h = p + b * a.strides(0) + last;
        if (a.strides(2) != 1) {  // a strided feature axis: gather the row first
          for (int d = 0; d < D; ++d) row[d] = h[d * a.strides(2)];
          h = row.data();
        }
        o[static_cast<int64_t>(b) * n + l] = energy_entropy_bits(h, D);
      }
    }
  });
}

void LayerEntropies::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("layer_entropies: CPU only");
}

std::vector<mx::Shape> LayerEntropies::output_shapes(const std::vector<mx::array>& inputs) {
  return {{inputs[0].shape(0), static_cast<int>(inputs.size())}};
}

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
