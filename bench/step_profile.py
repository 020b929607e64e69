"""Where a 4-bit decode step's time goes: each kind of op of the step, alone, at the step's shapes.

Each part runs as a compiled chain of what one step does with it (30 blocks; random inputs of
the default model's shapes, ``--rows`` rows, ``--span`` cached positions), timed as ms per step;
the full compiled q4 step of ``psilonet.generation.decode_step`` runs beside them. Parts run
interleaved over rounds; medians [min-max] are printed with each part's share of the full step.

Parts: the q4 weight products (q, k, v, o, gate, up, down and the 8-bit LM head through
:mod:`psilonet.kernels.qmm`), RMS norm (61 per step: the q4 model's own module, the extension's
where it is built, and ``mx.fast.rms_norm`` beside it), RoPE
(the q4 model's own module, q and k: :class:`psilonet.model.quantized.ExtensionRoPE` where the
extension is built), the KV cache write (two ``slice_update``), attention over the span (the q4
step's: the extension's span attention where it is built, and
``mx.fast.scaled_dot_product_attention`` with the boolean span mask beside it), SiLU-gating (the
q4 model's: the extension's SwiGLU where it is built, and mlx-lm's beside it), the
entropies of a tracked step (``step_entropies``: the next-token entropy over 49,152 logits, in
the extension's kernel where it is built, and the 31 hidden-state entropies), a dose's parts
(the step's noise for every block, and the 30 blocks' dose: the extension's primitives where it
is built, and MLX's graph of each beside them) and greedy sampling (argmax). A full step with a
dose of 0.3 and both entropies runs beside the greedy one.

    python -m bench.step_profile [--rows 1] [--span 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx

import mlx.core as mx  # noqa: E402
from mlx_lm.models.activations import swiglu  # noqa: E402

from psilonet.generation.decode_step import Decoder  # noqa: E402
from psilonet.generation.entropy import step_entropies  # noqa: E402
from psilonet.generation import perturb  # noqa: E402
from psilonet.kernels import qmm  # noqa: E402
from psilonet.model import quantized  # noqa: E402

D, F, H, KV, HD, L, VOCAB = 576, 1536, 9, 3, 64, 30, 49152


def parts(model, rows: int, span: int) -> dict:
    layers = model.model.layers
    x = mx.random.normal((rows, 1, D))
    xf = mx.random.normal((rows, 1, F))
    q = mx.random.normal((rows, H, 1, HD))
    k = mx.random.normal((rows, KV, 1, HD))
    cache = mx.random.normal((rows, KV, 4 * span, HD))
    mask = mx.arange(span)[None, :] <= span - 1
    logits = mx.random.normal((rows, VOCAB))
    states = mx.random.normal((rows, L + 1, D))
    rope = layers[0].self_attn.rope  # the q4 model's own: the extension's RoPE where it is built
    offset = mx.array(span - 1)
    mx.eval(x, xf, q, k, cache, mask, logits, states)

    def products():
        outs = []
        for layer in layers:
            a, m = layer.self_attn, layer.mlp
            outs += [a.q_proj(x), a.k_proj(x), a.v_proj(x), a.o_proj(x), m.gate_proj(x), m.up_proj(x), m.down_proj(xf)]
        return outs + [model.model.embed_tokens.as_linear(x)]

    # Each chain feeds every op's output into the next one: mx.compile would merge repeated ops
    # on the same inputs into one.
    def chain(op, start, n):
        def run():
            h = start
            for _ in range(n):
                h = op(h)
            return [h]
        return run

    norm = model.model.norm  # the q4 model's own: the extension's RMS norm where it is built
    norms = chain(lambda h: norm(h), x, 2 * L + 1)
    norms_mlx = chain(lambda h: mx.fast.rms_norm(h, norm.weight, norm.eps), x, 2 * L + 1)
    ropes = chain(lambda h: rope(h, offset=span - 1), q, 2 * L)  # q's and k's rotations
    start = offset.reshape(1)
    kv_writes = chain(lambda c: mx.slice_update(c, k, start, axes=(2,)), cache, 2 * L)
    kk, vv = cache[:, :, :span], cache[:, :, :span]
    attention_mlx = chain(lambda h: mx.fast.scaled_dot_product_attention(h, kk, vv, scale=HD ** -0.5, mask=mask), q, L)

    def span_attention(h):  # the q4 step's: the extension's primitive where it is built
        out = qmm.span_attention(h, kk, vv, offset, HD ** -0.5)
        return out if out is not None else mx.fast.scaled_dot_product_attention(h, kk, vv, scale=HD ** -0.5, mask=mask)
    attention = chain(span_attention, q, L)
    gating = chain(lambda h: qmm.swiglu(h, xf), xf, L)  # the q4 model's gating (ExtensionMLP)
    gating_mlx = chain(lambda h: swiglu(h, xf), xf, L)

    per_state = [states[:, i:i + 1, :] for i in range(L + 1)]

    def entropies():  # what a tracked step runs (the extension's next-token entropy where built)
        return list(step_entropies(logits, per_state).values())

    def sampling():
        return [mx.argmax(logits, axis=-1)]

    doser = perturb.Doser([0.3] * rows, list(range(rows)), L, D)
    keys = perturb.noise_keys(doser.seeds, 1)
    noise = perturb.step_noise(keys, L, (1, D))
    mx.eval(noise, doser._idx, doser._coef)

    def dose_noise():  # the extension's primitive where it is built
        return [perturb.step_noise(keys, L, (1, D))]

    def dose_noise_mlx():
        return [mx.stack([mx.random.normal((L, 1, D), key=keys[r]) for r in range(rows)], axis=1)]

    def dose_blocks():  # the extension's primitive where it is built
        h = x
        for layer in range(L):
            h = perturb.dose_block(doser.spec, h, noise, layer, L, doser._i, doser._idx, doser._coef)
        return [h]

    def dose_blocks_mlx():
        h, apply = x, perturb._compiled_apply(doser.spec)
        for layer in range(L):
            s = mx.array(perturb.layer_sensitivity(layer, L))
            h = apply(h, noise[layer], s, doser._i, doser._idx[:, layer], doser._coef[:, layer])
        return [h]

    out = {}
    for name, fn in (("q4 weight products", products), ("RMS norm", norms), ("RMS norm, MLX's", norms_mlx),
                     ("RoPE", ropes),
                     ("KV cache write", kv_writes), ("attention over the span", attention),
                     ("attention over the span, MLX's", attention_mlx),
                     ("SiLU gating", gating), ("SiLU gating, MLX's", gating_mlx), ("both entropies", entropies), ("dose noise", dose_noise),
                     ("dose noise, MLX's random", dose_noise_mlx), ("dose, 30 blocks", dose_blocks),
                     ("dose, 30 blocks, MLX graph", dose_blocks_mlx), ("greedy sampling", sampling)):
        compiled = mx.compile(fn)
        out[name] = (lambda c: lambda: mx.eval(c()))(compiled)
    return out


def full_step(model, rows: int, span: int, track: bool, dose: float = 0.0):
    hook = perturb.Doser([dose] * rows, list(range(rows)), L, D).hook() if dose else None
    dec = Decoder(model, rows, 4 * span, track=track, hook=hook)
    out = dec.prefill(list(range(10, 10 + span - 8)))
    tokens = out["tokens"]
    mx.eval(tokens)

    def step():
        nonlocal tokens, dec
        if dec.position >= span - 1:  # stay within one span (one compiled graph)
            dec.position -= 1
            dec.offset = dec.offset - 1
        o = dec.step(tokens)
        tokens = o["tokens"]
        mx.eval(o)
    return step


def graph_nodes(model, rows: int, span: int, track: bool, dose: float = 0.0) -> int:
    """Nodes of the compiled one-token step's graph (``mx.export_to_dot``): each is a dispatch."""
    import re
    import tempfile

    from psilonet.generation import decode_step as ds
    hook = perturb.Doser([dose] * rows, list(range(rows)), L, D).hook() if dose else None
    inputs = {**hook.rows, **hook.step_inputs(1)} if hook else {}
    shape = ds._kv_shape(model, rows, 4 * span)
    kv = [(mx.zeros(shape), mx.zeros(shape)) for _ in model.model.layers]
    step = mx.compile(lambda t, kv, o, r: ds._run(model, t, kv, o, r, hook, track, True, span)[:2])
    out, new_kv = step(mx.zeros((rows, 1), dtype=mx.int32), kv, mx.array(span - 1, dtype=mx.int32), inputs)
    with tempfile.NamedTemporaryFile(suffix=".dot") as f:
        mx.export_to_dot(f.name, *out.values(), *[a for pair in new_kv for a in pair])
        return len(re.findall(r'label ="?[A-Za-z_]', open(f.name).read()))


def ms(fn, repeats: int = 5) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1000 * (time.perf_counter() - start) / repeats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--span", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if not 1 <= args.rows <= 16 or args.span < 16 or args.span % 64 or args.rounds < 1:
        print("error: --rows in 1..16, --span a multiple of 64, --rounds >= 1", file=sys.stderr)
        return 2
    print(f"BLAS: {runtime.active_blas().describe()}")
    print(qmm.describe())
    model, _ = quantized.load_model(weights="q4")
    variants = {"full q4 step (greedy)": full_step(model, args.rows, args.span, False),
                "full q4 step + both entropies": full_step(model, args.rows, args.span, True),
                "full q4 step + dose 0.3 + both": full_step(model, args.rows, args.span, True, 0.3)}
    variants.update(parts(model, args.rows, args.span))
    for fn in variants.values():
        fn()
    times = {n: [] for n in variants}
    names = list(variants)
    for r in range(args.rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            times[n].append(ms(variants[n]))
    print("graph nodes of the compiled step (each a dispatch): greedy "
          f"{graph_nodes(model, args.rows, args.span, False)}, + both entropies "
          f"{graph_nodes(model, args.rows, args.span, True)}, + dose 0.3 and both "
          f"{graph_nodes(model, args.rows, args.span, True, 0.3)}")
    full = "full q4 step (greedy)"
    print(f"ms per step, {args.rows} row(s), span {args.span}, median [min-max] over {args.rounds} rounds; "
          "share of the full greedy step (paired within rounds):")
    for n in names:
        share = [t / f for t, f in zip(times[n], times[full])]
        print(f"  {n:32s} {statistics.median(times[n]):7.2f} [{min(times[n]):.2f}-{max(times[n]):.2f}]"
              f"   {statistics.median(share):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
