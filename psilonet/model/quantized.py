"""4- and 8-bit weights for decode (``--weights q4|q8|f32``), with every hook of the forward pass.

Only the frozen base model's weight products change: its linear layers become
:class:`QuantizedLinear` and its embedding :class:`QuantizedEmbedding`, which call
:func:`psilonet.kernels.qmm.quantized_matmul` (the psilonet CPU extension, or
``mx.quantized_matmul``). Everything else (norms, RoPE, attention, the KV cache, the hooked
forward of :mod:`psilonet.model.forward`, the compiled step of
:mod:`psilonet.generation.decode_step`, doses, entropies, bio interventions, the trainable
float32 modules of a skip model) is the float32 code unchanged.

Formats (MLX's affine layout: ``w = scale * q + bias`` per group of consecutive inputs):

* ``q4`` of the default model keeps the GGUF's own blocks: its Q4_1 blocks (4-bit, group 32, a
  float16 scale and bias each, widened to float32 exactly) and its 8-bit embedding (Q8_0), with
  llama.cpp's RoPE row order of q and k undone on the packed rows. No weight is rounded again:
  the float32 default model is these very values dequantized (:mod:`psilonet.model.gguf`).
* ``q4`` and ``q8`` of any other model, and ``q8`` of the default one, quantize the float
  weights with ``mx.quantize`` (group 32: the GGUF's; 8-bit keeps the embedding).
* ``f32``: the float32 model as before (capture, training and analysis always use it).

The q4 and q8 models also rotate q and k with :class:`ExtensionRoPE` (the extension's RoPE,
equal to ``mx.fast.rope`` bit for bit, in one primitive per call instead of a dozen ops), gate
their MLPs with :class:`ExtensionMLP` (the extension's SwiGLU) and normalise with
:class:`ExtensionRMSNorm` (the extension's RMS norm), both equal to MLX's bit for bit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map_with_path

from psilonet.kernels import qmm
from psilonet.model import gguf
from psilonet.model import loading as modeling
from psilonet.model.forward import unwrap

log = logging.getLogger("psilonet.model.quantized")

WEIGHTS = ("f32", "q4", "q8")
GROUP_SIZE = 32


class QuantizedLinear(nn.Module):
    """``x @ W.T (+ bias)`` with ``W`` packed; frozen (the base model is never trained)."""

    def __init__(self, weight: mx.array, scales: mx.array, biases: mx.array, *, group_size: int,
                 bits: int, bias: mx.array | None = None):
        super().__init__()
        self.weight, self.scales, self.biases = weight, scales.astype(mx.float32), biases.astype(mx.float32)
        if bias is not None:
            self.bias = bias
        self.group_size, self.bits = group_size, bits
        self.panels = None  # use_panels
        self.freeze()

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, group_size: int, bits: int) -> "QuantizedLinear":
        w, s, b = mx.quantize(linear.weight.astype(mx.float32), group_size=group_size, bits=bits)
        return cls(w, s, b, group_size=group_size, bits=bits, bias=linear.get("bias"))

    def __call__(self, x: mx.array) -> mx.array:
        y = qmm.quantized_matmul(x, self.weight, self.scales, self.biases, group_size=self.group_size,
                                 bits=self.bits, panels=self.panels)
        return y + self["bias"] if "bias" in self else y


class ExtensionRoPE(nn.RoPE):
    """``nn.RoPE`` through :func:`psilonet.kernels.qmm.rope`: the same values bit for bit, in one
    primitive instead of MLX's dozen CPU ops per call (a decode step rotates q and k per block)."""

    @classmethod
    def from_rope(cls, rope: nn.RoPE) -> "ExtensionRoPE":
        return cls(rope.dims, traditional=rope.traditional, base=rope.base, scale=rope.scale)

    def __call__(self, x: mx.array, offset=0) -> mx.array:
        return qmm.rope(x, self.dims, traditional=self.traditional, base=self.base, scale=self.scale, offset=offset)


def use_extension_rope(base) -> None:
    """Swap the base model's plain ``nn.RoPE`` modules (not scaled variants) for :class:`ExtensionRoPE`."""
    _swap(base, lambda path, module: ExtensionRoPE.from_rope(module) if type(module) is nn.RoPE else None)


class ExtensionRMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` through :func:`psilonet.kernels.qmm.rms_norm`: the same values bit for bit,
    in one primitive instead of MLX's three CPU ops per call (a decode step normalises 61 times)."""

    @classmethod
    def from_norm(cls, norm: nn.RMSNorm) -> "ExtensionRMSNorm":
        new = cls(norm.weight.shape[0], eps=norm.eps)
        new.weight = norm.weight
        if "weight" in getattr(norm, "_no_grad", ()):  # a frozen base stays frozen
            new.freeze()
        return new

    def __call__(self, x: mx.array) -> mx.array:
        return qmm.rms_norm(x, self["weight"], self.eps)


def use_extension_rms_norm(base) -> None:
    """Swap the base model's plain ``nn.RMSNorm`` modules for :class:`ExtensionRMSNorm`."""
    _swap(base, lambda path, module: ExtensionRMSNorm.from_norm(module) if type(module) is nn.RMSNorm else None)


class ExtensionMLP(nn.Module):
    """mlx-lm's llama / qwen2 / qwen3 ``MLP`` (``down_proj(swiglu(gate_proj(x), up_proj(x)))``)
    with the gating through :func:`psilonet.kernels.qmm.swiglu`: the same values bit for bit, in
    one primitive instead of MLX's one-value-at-a-time sigmoid. Same submodules and names."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.panels = None  # fuse_panels

    def fuse_panels(self) -> None:
        """Gate and up projection in one panel set (:func:`use_panels`), so that both products and
        the gating run as one primitive (:func:`psilonet.kernels.qmm.gated_product`); the two
        linears keep views into it."""
        g, u = self.gate_proj, self.up_proj
        if not (isinstance(g, QuantizedLinear) and isinstance(u, QuantizedLinear)) or g.panels is None \
                or u.panels is None or "bias" in g or "bias" in u or (g.bits, g.group_size) != (u.bits, u.group_size):
            return
        self.panels, g.panels, u.panels = qmm.Panels.concatenate(g.panels, u.panels)
        for linear in (g, u):
            linear.weight, linear.scales, linear.biases = linear.panels.unpack()

    def __call__(self, x: mx.array) -> mx.array:
        if self.panels is not None:
            fused = qmm.gated_product(x, self.panels)
            if fused is not None:
                return self.down_proj(fused)
        return self.down_proj(qmm.swiglu(self.gate_proj(x), self.up_proj(x)))


def _swiglu_mlps() -> tuple[type, ...]:
    from mlx_lm.models import llama, qwen2, qwen3
    return llama.MLP, qwen2.MLP, qwen3.MLP


def use_extension_mlp(base) -> None:
    """Swap each block's mlx-lm SwiGLU ``MLP`` (exactly those classes) for :class:`ExtensionMLP`."""
    kinds = _swiglu_mlps()
    for layer in base.model.layers:
        if type(getattr(layer, "mlp", None)) in kinds:
            layer.mlp = ExtensionMLP(layer.mlp)


class QuantizedEmbedding(nn.Module):
    """Rows dequantized on lookup; ``as_linear`` (a tied LM head) is a quantized product."""

    def __init__(self, weight: mx.array, scales: mx.array, biases: mx.array, *, group_size: int, bits: int):
        super().__init__()
        self.weight, self.scales, self.biases = weight, scales.astype(mx.float32), biases.astype(mx.float32)
        self.group_size, self.bits = group_size, bits
        self.panels = None  # use_panels: for as_linear
        self.freeze()

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, *, group_size: int, bits: int) -> "QuantizedEmbedding":
        w, s, b = mx.quantize(embedding.weight.astype(mx.float32), group_size=group_size, bits=bits)
        return cls(w, s, b, group_size=group_size, bits=bits)

    def __call__(self, ids: mx.array) -> mx.array:
        return mx.dequantize(self.weight[ids], self.scales[ids], self.biases[ids], group_size=self.group_size,
                             bits=self.bits)

    def as_linear(self, x: mx.array) -> mx.array:
        return qmm.quantized_matmul(x, self.weight, self.scales, self.biases, group_size=self.group_size,
                                    bits=self.bits, panels=self.panels)


def use_panels(base) -> None:
    """Give every quantized product of the base model the panel layout of its weights
    (:func:`psilonet.kernels.qmm.pack_panels`), which the extension's int16 kernel reads instead
    of MLX's layout: one register lane per output row, about twice as fast at 8 rows
    (``bench.qmm``). A linear layer then holds only the panels: its ``weight``, ``scales`` and
    ``biases`` become the exact lazy unpacking of them (:meth:`Panels.unpack`), which only the
    other modes, MLX's kernel and the gradient evaluate. The embedding keeps MLX's layout too,
    since its lookups read it. Each :class:`ExtensionMLP` then holds its gate and up panels as
    one set (:meth:`ExtensionMLP.fuse_panels`)."""
    for _, module in base.named_modules():
        if isinstance(module, (QuantizedLinear, QuantizedEmbedding)):
            module.panels = qmm.pack_panels(module.weight, module.scales, module.biases, bits=module.bits)
            if module.panels is not None and isinstance(module, QuantizedLinear):
                module.weight, module.scales, module.biases = module.panels.unpack()
    for _, module in base.named_modules():
        if isinstance(module, ExtensionMLP):
            module.fuse_panels()
            # the MLP's separate panels are free now: return them before the next one is made, so
            # the process never holds every MLP's panels twice (its resident memory is a goal)
            mx.clear_cache()


WEIGHTS_HELP = ("the base model's weights for decode: f32 (float32), q4 (the default model: the GGUF's own "
                "4-bit blocks) or q8 (8-bit); see README, 4-bit decode")


def add_weights_option(parser) -> None:
    """``--weights q4|q8|f32`` on a job that decodes."""
    parser.add_argument("--weights", choices=WEIGHTS, default="f32", help=WEIGHTS_HELP)


def check_weights(weights: str) -> str:
    if weights not in WEIGHTS:
        raise modeling.ModelError(f"weights: one of {', '.join(WEIGHTS)}, got {weights!r}")
    return weights


def weights_of(model) -> str:
    """``q4``, ``q8`` or ``f32``: the format of a (base or skip) model's weight products."""
    return getattr(unwrap(model)[0], "psilonet_weights", "f32")


def _swap(base, make) -> None:
    """Replace the base model's leaf modules by ``make(path, module)`` where it returns one."""
    def visit(path, module):
        new = make(path, module)
        return module if new is None else new

    base.update_modules(tree_map_with_path(visit, base.leaf_modules(), is_leaf=nn.Module.is_module))


def quantize_base(base, bits: int, *, group_size: int = GROUP_SIZE) -> None:
    """``mx.quantize`` every linear layer and the embedding of a base model, in place. The
    embedding keeps 8 bits at ``bits=4`` (as the GGUF does: the tied LM head is sensitive)."""
    def make(path, module):
        if isinstance(module, nn.Linear) and module.weight.shape[-1] % group_size == 0:
            return QuantizedLinear.from_linear(module, group_size=group_size, bits=bits)
        if isinstance(module, nn.Embedding) and module.weight.shape[-1] % group_size == 0:
            return QuantizedEmbedding.from_embedding(module, group_size=group_size, bits=max(bits, 8))
        return None

    _swap(base, make)


def gguf_blocks(gguf_path: str | Path, config: dict) -> dict[str, tuple[mx.array, mx.array, mx.array, int]]:
    """The GGUF's quantized tensors under Hugging Face module names: ``(w, scales, biases, bits)``,
    with q and k rows in Hugging Face's RoPE order (a row permutation of the packed rows)."""
    tensors, _ = gguf.read_gguf(gguf_path)
    out = {}
    for name in tensors:
        if not name.endswith(".scales"):
            continue
        stem = name[: -len(".scales")]
        key, heads = gguf.hf_name(f"{stem}.weight", config)
        parts = [tensors[f"{stem}.weight"], tensors[name], tensors[f"{stem}.biases"]]
        if heads:
            parts = [gguf.undo_rope_permutation(a, heads) for a in parts]
        bits = parts[0].shape[-1] * 32 // (parts[1].shape[-1] * gguf.GROUP_SIZE)
        out[key[: -len(".weight")]] = (*parts, bits)
    return out


def install_gguf_blocks(base, gguf_path: str | Path) -> None:
    """Replace the default model's linear layers and embedding by the GGUF's own blocks."""
    blocks = gguf_blocks(gguf_path, vars(base.args) | {"num_key_value_heads": base.args.num_key_value_heads})

    def make(path, module):
        hit = blocks.pop(path, None)
        if hit is None:
            return None
        w, s, b, bits = hit
        cls = QuantizedEmbedding if isinstance(module, nn.Embedding) else QuantizedLinear
        expected = module.weight.shape
        if (w.shape[0], w.shape[1] * 32 // bits) != tuple(expected):
            raise modeling.ModelError(f"{gguf_path}: {path} has shape {w.shape} ({bits}-bit), the model {expected}")
        return cls(w, s, b, group_size=gguf.GROUP_SIZE, bits=bits)

    _swap(base, make)
    if blocks:
        raise modeling.ModelError(f"{gguf_path}: tensors with no module in the model: {', '.join(sorted(blocks))}")


def is_default(model_name: str | None, data_dir=None) -> bool:
    """Whether ``model_name`` ('default' or the converted folder) is the GGUF-born default model."""
    if model_name == modeling.DEFAULT_MODEL:
        return True
    return model_name is not None and Path(model_name).expanduser().resolve() == \
        modeling.default_model_path(data_dir).resolve()


def to_weights(model, weights: str, model_name: str | None = None, data_dir=None):
    """Switch a base or skip model's frozen base to ``weights`` in place; returns the model.

    ``model_name`` is the name the model was loaded by: for the default model ('default' or its
    folder) q4 installs the GGUF's own blocks, otherwise (also for None) ``mx.quantize`` runs.
    A skip model's own modules stay float32 and trainable: only ``model.base`` changes."""
    check_weights(weights)
    base, _ = unwrap(model)
    if weights == weights_of(model):
        return model
    if weights_of(model) != "f32":
        raise modeling.ModelError(f"the model already has {weights_of(model)} weights; load it again for {weights}")
    if weights == "f32":
        return model
    gguf_path = modeling.default_gguf_path(data_dir)
    if weights == "q4" and is_default(model_name, data_dir) and gguf_path.is_file():
        install_gguf_blocks(base, gguf_path)
    else:
        quantize_base(base, 4 if weights == "q4" else 8)
    use_extension_rope(base)
    use_extension_mlp(base)
    use_extension_rms_norm(base)
    base.psilonet_weights = weights
    mx.eval(base.parameters())
    if qmm.active():
        use_panels(base)
    mx.clear_cache()  # the float16 scales and any float weights read are free now: return them
    qmm.announce()
    return model


def load_model(name: str | None = None, data_dir=None, *, weights: str = "f32"):
    """:func:`psilonet.model.loading.load_model` with the base model's weights in ``weights``.

    The float32 weights that quantized modules replace are never read from disk (the model is
    loaded lazily and its modules swapped before anything is evaluated)."""
    check_weights(weights)
    if weights == "f32":
        return modeling.load_model(name, data_dir)
    model, tokenizer = modeling.load_model(name, data_dir, lazy=True)
    return to_weights(model, weights, name or modeling.DEFAULT_MODEL, data_dir), tokenizer
