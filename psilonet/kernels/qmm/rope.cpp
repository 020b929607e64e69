#include "rope.h"

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/backend/cpu/simd/simd.h"

namespace psilonet_qmm {

namespace {

namespace simd = mx::simd;

// MLX's CPU unary ops on one float (their simd width on this platform is 1 unless Accelerate).
inline float mlx_exp(float v) { return simd::exp(simd::Simd<float, 1>(v)).value; }
inline float mlx_sin(float v) { return simd::sin(simd::Simd<float, 1>(v)).value; }
inline float mlx_cos(float v) { return simd::cos(simd::Simd<float, 1>(v)).value; }

struct Task {
  const float* x;
  int64_t stride[4];  // x's strides (elements) as (B, N, T, D)
  const int32_t* offset;
  int offsets;        // 1 or B
  float* out;         // (B, N, T, D) row-major
  int B, N, T, D, dims;
  bool traditional, forward;
  float base, scale;
};

void run(const Task& k) {
  const int half = k.dims / 2;
  std::vector<float> inv(half), c(half), s(half);
  const float step = std::log(k.base) / half;  // float arithmetic, as the fallback does
  for (int i = 0; i < half; ++i) inv[i] = mlx_exp(static_cast<float>(-i) * step);
  for (int b = 0; b < k.B; ++b) {
    const float off = static_cast<float>(k.offset[k.offsets == 1 ? 0 : b]);
    for (int t = 0; t < k.T; ++t) {
      const float pos = (static_cast<float>(t) + off) * k.scale;
      for (int i = 0; i < half; ++i) {
        const float theta = pos * inv[i];
        c[i] = mlx_cos(theta);
        s[i] = mlx_sin(theta);
      }
      for (int n = 0; n < k.N; ++n) {
        const float* xr = k.x + b * k.stride[0] + n * k.stride[1] + t * k.stride[2];
        float* o = k.out + ((static_cast<int64_t>(b) * k.N + n) * k.T + t) * k.D;
        const int64_t sd = k.stride[3];
        for (int i = 0; i < half; ++i) {
          const int i1 = k.traditional ? 2 * i : i, i2 = k.traditional ? 2 * i + 1 : half + i;
          const float x1 = xr[i1 * sd], x2 = xr[i2 * sd];
          if (k.forward) {
            o[i1] = x1 * c[i] - x2 * s[i];
            o[i2] = x1 * s[i] + x2 * c[i];
          } else {
            o[i1] = x2 * s[i] + x1 * c[i];
            o[i2] = x2 * c[i] - x1 * s[i];
          }
        }
        for (int d = k.dims; d < k.D; ++d) o[d] = xr[d * sd];
      }
    }
  }
}

}  // namespace

mx::array rope(const mx::array& x, const mx::array& offset, int dims, bool traditional, float base, float scale,
               bool forward, mx::StreamOrDevice s) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("rope: " + what); };
  if (x.ndim() < 3) fail("x must have at least 3 axes");
  if (x.dtype() != mx::float32) fail("x must be float32");
  if (dims <= 0 || dims % 2 || dims > x.shape(-1)) fail("dims must be even, positive and at most x's last axis");
  if (offset.ndim() > 1 || (offset.size() != 1 && offset.size() != static_cast<size_t>(x.shape(0))))
    fail("offset must be a scalar or have one value per row of x");
  auto stream = mx::to_stream(s);
  auto off = offset.dtype() == mx::int32 ? offset : mx::astype(offset, mx::int32, stream);
  // (B, N, T, D) as the fallback sees it: a missing head axis added, extra ones merged.
  const auto shape = x.shape();
  const int B = shape[0], T = shape[shape.size() - 2], D = shape.back();
  auto x4 = x.ndim() == 4 ? x : mx::reshape(x, {B, -1, T, D}, stream);
  auto out = mx::array(x4.shape(), mx::float32,
                       std::make_shared<Rope>(stream, dims, traditional, base, scale, forward),
                       {x4, mx::reshape(off, {-1}, stream)});
  return x.ndim() == 4 ? out : mx::reshape(out, shape, stream);
}

void Rope::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const auto& x = inputs[0];
  const auto& offset = inputs[1];
  auto& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  encoder.set_input_array(x);
  encoder.set_input_array(offset);
  encoder.set_output_array(out);
  Task k{x.data<float>(), {x.strides(0), x.strides(1), x.strides(2), x.strides(3)}, offset.data<int32_t>(),
         static_cast<int>(offset.size()), out.data<float>(), x.shape(0), x.shape(1), x.shape(2), x.shape(3),
         dims_, traditional_, forward_, base_, scale_};
  encoder.dispatch([k]() { run(k); });
}

void Rope::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("rope: CPU only (on a GPU use mx.fast.rope)");
}

std::vector<mx::array> Rope::vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                                 const std::vector<int>& argnums, const std::vector<mx::array>&) {
  std::vector<mx::array> grads;
  for (int arg : argnums) {
    if (arg != 0) throw std::invalid_argument("rope: gradients flow to x only");
    grads.push_back(rope(cotangents[0], primals[1], dims_, traditional_, base_, scale_, !forward_, stream()));
  }
  return grads;
}

std::vector<mx::Shape> Rope::output_shapes(const std::vector<mx::array>& inputs) { return {inputs[0].shape()}; }

bool Rope::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const Rope&>(other);
  return dims_ == o.dims_ && traditional_ == o.traditional_ && base_ == o.base_ && scale_ == o.scale_ &&
         forward_ == o.forward_;
}

}  // namespace psilonet_qmm
