#include "dose.h"

#include <cmath>
#include <stdexcept>
#include <vector>

#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"

namespace psilonet_qmm {

namespace {

struct Task {
  const float* h;
  int64_t hs[3];  // strides (elements) of h as (B, T, D)
  const float* i;
  int64_t is;  // the row stride of the intensities
  const float* noise;  // nullptr: no noise
  int64_t ns[4];  // (L, B, T, D)
  const int32_t* idx;  // nullptr: no feature map
  int64_t xs[3];  // (B, L, D*K)
  const float* coef;
  int64_t cs[4];  // (B, L, D, K)
  float* out;  // (B, T, D), row-contiguous
  int B, T, D, K, layer;
  float a;  // noise_per_intensity * sensitivity
};

// The sum over d of term(d) in double as eight partial sums (lanes d % 8) added in a fixed tree:
// eight dependency chains instead of one, so the two passes of the variance run at the adds'
// throughput, not their latency (a block's noise-only dose of 64 positions: 53 us before, 28 after).
template <class Term>
double sum_in_lanes(int n, Term term) {
  double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int d = 0;
  for (; d + 8 <= n; d += 8)
    for (int j = 0; j < 8; ++j) s[j] += term(d + j);
  for (; d < n; ++d) s[d % 8] += term(d);
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

void run_row(const Task& k, int b) {
  thread_local std::vector<float> g;
  g.resize(k.D);
  {
    const float intensity = k.i[b * k.is];
    for (int t = 0; t < k.T; ++t) {
      const float* hp = k.h + b * k.hs[0] + t * k.hs[1];
      for (int d = 0; d < k.D; ++d) g[d] = hp[d * k.hs[2]];
      if (k.noise) {
        const float* x = g.data();
        const double mean = sum_in_lanes(k.D, [x](int d) { return static_cast<double>(x[d]); }) / k.D;
        const double squares = sum_in_lanes(k.D, [x, mean](int d) { return (x[d] - mean) * (x[d] - mean); });
        const float std_dev = static_cast<float>(std::sqrt(squares / k.D));
        const float* np = k.noise + k.layer * k.ns[0] + b * k.ns[1] + t * k.ns[2];
        for (int d = 0; d < k.D; ++d) g[d] = g[d] + ((np[d * k.ns[3]] * k.a) * intensity) * std_dev;
      }
      float* o = k.out + (static_cast<int64_t>(b) * k.T + t) * k.D;
      if (!k.idx) {
        for (int d = 0; d < k.D; ++d) o[d] = g[d];
        continue;
      }
      const int32_t* ip = k.idx + b * k.xs[0] + k.layer * k.xs[1];
      const float* cp = k.coef + b * k.cs[0] + k.layer * k.cs[1];
      if (k.xs[2] == 1 && k.cs[3] == 1 && k.cs[2] == k.K) {  // packed maps (always, from perturb)
        for (int d = 0; d < k.D; ++d, ip += k.K, cp += k.K) {
          float acc = 0.0f;
          for (int j = 0; j < k.K; ++j) {
            const uint32_t src = static_cast<uint32_t>(ip[j]);
            acc = acc + cp[j] * (src < static_cast<uint32_t>(k.D) ? g[src] : NAN);
          }
          o[d] = acc;
        }
        continue;
      }
      for (int d = 0; d < k.D; ++d) {
        float acc = 0.0f;
        for (int j = 0; j < k.K; ++j) {
          const int32_t src = ip[(static_cast<int64_t>(d) * k.K + j) * k.xs[2]];
          // a source outside the features is no map: NaN, rather than a read out of bounds
          const float x = src >= 0 && src < k.D ? g[src] : NAN;
          acc = acc + cp[d * k.cs[2] + j * k.cs[3]] * x;
        }
        o[d] = acc;
      }
    }
  }
}

}  // namespace

mx::array dose(const mx::array& h, const mx::array& noise, const mx::array& i, const mx::array& idx,
               const mx::array& coef, int layer, float sensitivity, float noise_per_intensity,
               mx::StreamOrDevice s) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("dose: " + what); };
  if (h.ndim() != 3 || h.dtype() != mx::float32) fail("h must be float32 of shape (B, T, D)");
  const int B = h.shape(0), T = h.shape(1), D = h.shape(2);
  if (i.dtype() != mx::float32 || i.ndim() < 1 || i.shape(0) != B || static_cast<int>(i.size()) != B)
    fail("i must hold one float32 intensity per row of h");
  const bool with_noise = noise.size() > 0, linear = coef.size() > 0;
  if (with_noise && (noise.ndim() != 4 || noise.dtype() != mx::float32 || noise.shape(1) != B ||
                     noise.shape(2) != T || noise.shape(3) != D || layer < 0 || layer >= noise.shape(0)))
    fail("noise must be float32 of shape (L, B, T, D) with layer < L");
  if (linear) {
    if (coef.ndim() < 4 || coef.dtype() != mx::float32 || coef.shape(0) != B || coef.shape(-2) != D)
      fail("coef must be float32 of shape (B, L, ..., D, K)");
    const int K = coef.shape(-1);
    if (idx.ndim() < 3 || idx.dtype() != mx::int32 || idx.shape(0) != B || idx.shape(-1) != D * K ||
        idx.shape(1) != coef.shape(1))
      fail("idx must be int32 of shape (B, L, ..., D*K), beside coef");
    if (static_cast<int>(idx.size()) != B * coef.shape(1) * D * K || static_cast<int>(coef.size()) != B * coef.shape(1) * D * K)
      fail("idx and coef may have single axes only between L and the features");
    if (layer < 0 || layer >= coef.shape(1)) fail("layer must be below coef's L");
  }
  if (!with_noise && !linear) return h;
  auto stream = mx::to_stream(s);
  std::vector<mx::array> inputs{h, i};
  if (with_noise) inputs.push_back(noise);
  if (linear) {
    inputs.push_back(idx);
    inputs.push_back(coef);
  }
  return mx::array(h.shape(), mx::float32,
                   std::make_shared<Dose>(stream, layer, sensitivity, noise_per_intensity, with_noise, linear),
                   std::move(inputs));
}

void Dose::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const auto& h = inputs[0];
  const auto& i = inputs[1];
  auto& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& in : inputs) encoder.set_input_array(in);
  encoder.set_output_array(out);
  Task k{};
  k.h = h.data<float>();
  for (int a = 0; a < 3; ++a) k.hs[a] = h.strides(a);
  k.i = i.data<float>();
  k.is = i.strides(0);
  size_t next = 2;
  if (noise_) {
    const auto& n = inputs[next++];
    k.noise = n.data<float>();
    for (int a = 0; a < 4; ++a) k.ns[a] = n.strides(a);
  }
  if (linear_) {
    const auto& x = inputs[next++];
    const auto& c = inputs[next++];
    k.idx = x.data<int32_t>();
    k.xs[0] = x.strides(0), k.xs[1] = x.strides(1), k.xs[2] = x.strides(x.ndim() - 1);
    k.coef = c.data<float>();
    k.cs[0] = c.strides(0), k.cs[1] = c.strides(1), k.cs[2] = c.strides(c.ndim() - 2), k.cs[3] = c.strides(c.ndim() - 1);
    k.K = c.shape(-1);
  }
  k.out = out.data<float>();
  k.B = h.shape(0), k.T = h.shape(1), k.D = h.shape(2), k.layer = layer_;
  k.a = per_intensity_ * sensitivity_;
  encoder.dispatch([k]() {
    // Rows are independent: several share the product threads (a row alone runs here).
    if (k.B == 1) return run_row(k, 0);
    parallel_for(k.B, [](const void* ctx, int b) { run_row(*static_cast<const Task*>(ctx), b); }, &k);
  });
}

void Dose::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("dose: CPU only");
}

std::vector<mx::Shape> Dose::output_shapes(const std::vector<mx::array>& inputs) { return {inputs[0].shape()}; }

bool Dose::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const Dose&>(other);
  return layer_ == o.layer_ && sensitivity_ == o.sensitivity_ && per_intensity_ == o.per_intensity_ &&
         noise_ == o.noise_ && linear_ == o.linear_;
}

}  // namespace psilonet_qmm
