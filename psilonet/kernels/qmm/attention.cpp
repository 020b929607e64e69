#include "attention.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "strided.h"

namespace psilonet_qmm {

#if !defined(__x86_64__)
// The same steps in plain C++ (a build without the AVX2 file: arm64).
void attend_one(const float* qs, const float* k, int64_t ks, const float* v, int64_t vs, int visible, int D,
                float* scores, float* out) {
  float m = -INFINITY;
  for (int j = 0; j < visible; ++j) {
    float a = 0.0f;
    for (int d = 0; d < D; ++d) a += qs[d] * k[j * ks + d];
    scores[j] = a;
    m = std::max(m, a);
  }
  float total = 0.0f;
  for (int j = 0; j < visible; ++j) total += (scores[j] = std::exp(scores[j] - m));
  for (int d = 0; d < D; ++d) {
    float a = 0.0f;
    for (int j = 0; j < visible; ++j) a += scores[j] * v[j * vs + d];
    out[d] = a / total;
  }
}
#endif

mx::array span_attention(const mx::array& q, const mx::array& k, const mx::array& v, const mx::array& offset,
                         float scale, mx::StreamOrDevice s) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("span_attention: " + what); };
  if (q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4) fail("q, k and v must be 4-D (B, heads, positions, D)");
  if (q.dtype() != mx::float32 || k.dtype() != mx::float32 || v.dtype() != mx::float32)
    fail("q, k and v must be float32");
  if (k.shape() != v.shape() || k.shape(0) != q.shape(0) || k.shape(3) != q.shape(3))
    fail("k and v must be (B, KV, S, D) with q's B and D");
  if (k.shape(1) < 1 || q.shape(1) % k.shape(1) != 0) fail("q's heads must be a multiple of k's");
  if (q.shape(3) % 8 != 0 || q.shape(3) > 256) fail("the head size must be a multiple of 8, at most 256");
  if (offset.size() != 1 || offset.dtype() != mx::int32) fail("offset must be one int32");
  return mx::array(q.shape(), mx::float32, std::make_shared<SpanAttention>(mx::to_stream(s), scale),
                   {q, k, v, offset});
}

namespace {

// a's rows (the last axis) through its strides, the last axis contiguous: a's own data, or a
// row-major copy held by `keep` where its last axis is strided.
struct Rows {
  const float* p;
  int64_t s0, s1, s2;
};

Rows rows_of(const mx::array& a, std::vector<float>& keep) {
  if (a.strides(3) == 1 || a.shape(3) == 1) return {a.data<float>(), a.strides(0), a.strides(1), a.strides(2)};
  const float* p = row_major(a, keep);
  const int64_t s2 = a.shape(3), s1 = s2 * a.shape(2);
  return {p, s1 * a.shape(1), s1, s2};
}

}  // namespace

void SpanAttention::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  auto& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : inputs) encoder.set_input_array(a);
  encoder.set_output_array(out);
  encoder.dispatch([q = mx::array::unsafe_weak_copy(inputs[0]), k = mx::array::unsafe_weak_copy(inputs[1]),
                    v = mx::array::unsafe_weak_copy(inputs[2]), at = inputs[3].data<int32_t>(),
                    o = out.data<float>(), scale = scale_]() {
    const int offset = at[0];  // read in the task: the step computes it before this one runs
    std::vector<float> qk, kk, vk;  // copies only where a last axis is strided
    const Rows Q = rows_of(q, qk), K = rows_of(k, kk), V = rows_of(v, vk);
    const int B = q.shape(0), H = q.shape(1), T = q.shape(2), D = q.shape(3), KV = k.shape(1), S = k.shape(2);
    // One chunk per (row, head): eight rows of nine heads take both cores; a single small query
    // is not worth waking the other thread.
    struct Work {
      Rows Q, K, V;
      int H, T, D, KV, S, offset;
      float scale;
      float* o;
    } work{Q, K, V, H, T, D, KV, S, offset, scale, o};
    auto one = [](const void* ctx, int c) {
      const Work& w = *static_cast<const Work*>(ctx);
      const int b = c / w.H, h = c % w.H, g = h / (w.H / w.KV);
      const float* kb = w.K.p + b * w.K.s0 + g * w.K.s1;
      const float* vb = w.V.p + b * w.V.s0 + g * w.V.s1;
      float qs[256];
      thread_local std::vector<float> scores;
      scores.resize(std::max(w.S, 1));
      for (int i = 0; i < w.T; ++i) {
        const float* qi = w.Q.p + b * w.Q.s0 + h * w.Q.s1 + i * w.Q.s2;
        for (int d = 0; d < w.D; ++d) qs[d] = qi[d] * w.scale;  // scale first, as MLX's graph does
        const int visible = std::clamp(w.offset + i + 1, 0, w.S);
        float* oi = w.o + ((static_cast<int64_t>(b) * w.H + h) * w.T + i) * w.D;
        if (visible == 0) std::fill(oi, oi + w.D, 0.0f);
        else attend_one(qs, kb, w.K.s2, vb, w.V.s2, visible, w.D, scores.data(), oi);
      }
    };
    const int64_t work_size = static_cast<int64_t>(B) * H * T * S * D;
    if (work_size < (1 << 16)) {
      for (int c = 0; c < B * H; ++c) one(&work, c);
    } else {
      parallel_for(B * H, one, &work);
    }
  });
}

void SpanAttention::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("span_attention: CPU only");
}

std::vector<mx::Shape> SpanAttention::output_shapes(const std::vector<mx::array>& inputs) {
  return {inputs[0].shape()};
}

}  // namespace psilonet_qmm
