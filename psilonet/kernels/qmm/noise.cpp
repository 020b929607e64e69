#include "noise.h"

#include <cstring>
#include <stdexcept>
#include <vector>

#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "noise_math.inc"

namespace psilonet_qmm {

void normal_pairs_portable(uint32_t k1, uint32_t k2, float* out, int64_t n, int64_t from, int64_t to) {
  noise_detail::normal_pairs(k1, k2, out, n, from, to);
}

namespace {

struct Work {
  const uint32_t* k;
  int64_t ks0, ks1, chunk;  // chunk: T * D values per layer and row
  float* o;
  int B, L, parts;
  bool avx2;
};

void pairs(const Work& w, int b, float* out, int64_t from, int64_t to) {
  const uint32_t k1 = w.k[b * w.ks0], k2 = w.k[b * w.ks0 + w.ks1];
#if defined(__x86_64__)
  if (w.avx2) return normal_pairs_avx2(k1, k2, out, w.L * w.chunk, from, to);
#endif
  normal_pairs_portable(k1, k2, out, w.L * w.chunk, from, to);
}

// One row alone: (L, 1, T, D) is the row's own order, so each part writes its counter range in
// place (a decode step's row is 30 * 576 values, each a libm log).
void part_of_row(const void* ctx, int c) {
  const Work& w = *static_cast<const Work*>(ctx);
  const int64_t half = w.L * w.chunk / 2;
  pairs(w, 0, w.o, half * c / w.parts, half * (c + 1) / w.parts);
}

void one_row(const void* ctx, int b) {
  const Work& w = *static_cast<const Work*>(ctx);
  thread_local std::vector<float> row;
  row.resize(static_cast<size_t>(w.L * w.chunk));
  pairs(w, b, row.data(), 0, w.L * w.chunk / 2);
  // row b's (L, T, D) values into (L, B, T, D)
  for (int l = 0; l < w.L; ++l)
    std::memcpy(w.o + (static_cast<int64_t>(l) * w.B + b) * w.chunk, row.data() + l * w.chunk,
                w.chunk * sizeof(float));
}

}  // namespace

mx::array dose_noise(const mx::array& keys, int layers, int tokens, int features, mx::StreamOrDevice s) {
  if (keys.ndim() != 2 || keys.shape(1) != 2 || keys.dtype() != mx::uint32)
    throw std::invalid_argument("dose_noise: keys must be uint32 of shape (B, 2)");
  if (layers < 1 || tokens < 1 || features < 1)
    throw std::invalid_argument("dose_noise: layers, tokens and features must be positive");
  if (static_cast<int64_t>(layers) * tokens * features >= (int64_t{1} << 32))
    throw std::invalid_argument("dose_noise: more values per row than 32-bit counters reach");
  return mx::array({layers, keys.shape(0), tokens, features}, mx::float32,
                   std::make_shared<DoseNoise>(mx::to_stream(s), layers, tokens, features), {keys});
}

void DoseNoise::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const auto& keys = inputs[0];
  auto& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  encoder.set_input_array(keys);
  encoder.set_output_array(out);
  const uint32_t* k = keys.data<uint32_t>();
  const int64_t ks0 = keys.strides(0), ks1 = keys.strides(1);
  float* o = out.data<float>();
  const int B = keys.shape(0), L = layers_;
  const int64_t chunk = static_cast<int64_t>(tokens_) * features_;
  const bool avx2 = isa() >= AVX2;
  encoder.dispatch([k, ks0, ks1, o, B, L, chunk, avx2]() {
    // Rows are independent draws: several rows share the product threads (8 rows: half the
    // time), and a row alone of some size is split into counter ranges, one per thread.
    const int parts = B == 1 && L * chunk >= 1024 ? num_threads() : 1;
    Work work{k, ks0, ks1, chunk, o, B, L, parts, avx2};
    if (B == 1) parallel_for(parts, part_of_row, &work);
    else parallel_for(B, one_row, &work);
  });
}

void DoseNoise::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("dose_noise: CPU only");
}

std::vector<mx::Shape> DoseNoise::output_shapes(const std::vector<mx::array>& inputs) {
  return {{layers_, inputs[0].shape(0), tokens_, features_}};
}

bool DoseNoise::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const DoseNoise&>(other);
  return layers_ == o.layers_ && tokens_ == o.tokens_ && features_ == o.features_;
}

}  // namespace psilonet_qmm
