#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include "kernels.h"
#include "qmm.h"
#include "attention.h"
#include "dose.h"
#include "entropy.h"
#include "noise.h"
#include "swiglu.h"
#include "rmsnorm.h"
#include "rope.h"

namespace nb = nanobind;
using namespace nb::literals;
namespace q = psilonet_qmm;
namespace mx = mlx::core;

NB_MODULE(_qmm, m) {
  m.doc() = "x @ W.T on the CPU with W in MLX's affine quantized layout (psilonet.kernels.qmm)";
  m.def("quantized_matmul", &q::quantized_matmul, "x"_a, "w"_a, "scales"_a, "biases"_a,
        "group_size"_a, "bits"_a, "mode"_a = 2, nb::kw_only(), "stream"_a = nb::none(),
        "x @ dequantize(w, scales, biases).T for float32 x of shape (..., K). mode 0 keeps x in "
        "float32; 1 and 2 quantize each row of x to int8 or int16 blocks of 32 and use integer "
        "dot products.");
  m.def("quantized_matmul_panel", &q::quantized_matmul_panel, "x"_a, "wp"_a, "sp"_a, "bp"_a, "group_size"_a,
        "bits"_a, nb::kw_only(), "stream"_a = nb::none(),
        "x @ W.T from the panel layout of W (kernels.h), with int16 activations.");
  m.def("gated_product_panel", &q::gated_product_panel, "x"_a, "wp"_a, "sp"_a, "bp"_a, "group_size"_a, "bits"_a,
        nb::kw_only(), "stream"_a = nb::none(),
        "silu(x @ Wg.T) * (x @ Wu.T) from the panel layout of [Wg; Wu], int16 activations.");
  m.def("unpack_panels", &q::unpack_panels, "wp"_a, "sp"_a, "bp"_a, "group_size"_a, "bits"_a, nb::kw_only(),
        "stream"_a = nb::none(), "MLX's (w, scales, biases) of a panel layout, as a lazy graph of MLX ops.");
  m.def("rope", &q::rope, "x"_a, "offset"_a, "dims"_a, "traditional"_a, "base"_a, "scale"_a,
        "forward"_a = true, nb::kw_only(), "stream"_a = nb::none(),
        "mx.fast.rope's CPU result for float32 x (B, ..., T, D) in one primitive (rope.h).");
  m.def("token_entropy", &q::token_entropy, "logits"_a, nb::kw_only(), "stream"_a = nb::none(),
        "Entropy (bits) of softmax(logits) over the last axis, float32, in one primitive (entropy.h).");
  m.def("dose", [](const mx::array& h, const std::optional<mx::array>& noise, const mx::array& i,
                   const std::optional<mx::array>& idx, const std::optional<mx::array>& coef, int layer,
                   float sensitivity, float noise_per_intensity, mx::StreamOrDevice s) {
          const mx::array none = mx::zeros({0}, mx::float32);
          if (idx.has_value() != coef.has_value()) throw std::invalid_argument("dose: give idx and coef together");
          return q::dose(h, noise.value_or(none), i, idx.value_or(none), coef.value_or(none), layer, sensitivity,
                         noise_per_intensity, s);
        }, "h"_a, "noise"_a.none(), "i"_a, "idx"_a.none(), "coef"_a.none(), "layer"_a, "sensitivity"_a,
        "noise_per_intensity"_a, nb::kw_only(), "stream"_a = nb::none(),
        "One block's dose (perturb._make_apply) in one primitive (dose.h).");
  m.def("dose_noise", &q::dose_noise, "keys"_a, "layers"_a, "tokens"_a, "features"_a, nb::kw_only(),
        "stream"_a = nb::none(),
        "mx.stack([mx.random.normal((L, T, D), key=k) for k in keys], axis=1), bit for bit (noise.h).");
  m.def("swiglu", &q::swiglu, "gate"_a, "x"_a, nb::kw_only(), "stream"_a = nb::none(),
        "silu(gate) * x for float32 arrays, equal to MLX's CPU result bit for bit (swiglu.h).");
  m.def("rms_norm", &q::rms_norm, "x"_a, "w"_a, "eps"_a, nb::kw_only(), "stream"_a = nb::none(),
        "mx.fast.rms_norm's CPU result for float32 x (..., D) and w (D,) in one primitive (rmsnorm.h).");
  m.def("span_attention", &q::span_attention, "q"_a, "k"_a, "v"_a, "offset"_a, "scale"_a, nb::kw_only(),
        "stream"_a = nb::none(),
        "softmax((q * scale) k^T) v over the slots j <= offset + i of query i, grouped-query heads.");
  m.def("layer_entropies", &q::layer_entropies, "states"_a, nb::kw_only(), "stream"_a = nb::none(),
        "Hidden-state entropy (bits) of each (B, T, D) state's last position -> (B, len(states)).");
  m.def("isa", [] { return std::string(q::isa_name(q::isa())); }, "The SIMD path in effect.");
  m.def("detected_isa", [] { return std::string(q::isa_name(q::detected_isa())); });
  m.def("set_isa", [](const std::string& name) {
    const int level = name == "avx512-vnni" ? q::VNNI : name == "avx2-fma" ? q::AVX2 : q::PORTABLE;
    return std::string(q::isa_name(q::set_isa(level)));
  }, "name"_a, "Force a path (capped at what the CPU has); returns the one in effect.");
  m.def("threads", &q::num_threads);
  m.attr("MODES") = nb::make_tuple("float", "int8", "int16");
}
