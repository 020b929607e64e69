"""Skip-adapter training throughput on the default model, and its model FLOPs utilisation.

Measured in one process: the machine's float32 matmul rate (GFLOP/s) both for a GEMM of the
sizes the model uses and for large square GEMMs (the machine's practical peak), then tokens/s
of real training steps (d=3, batch 4, seq_len 48 by default), with and without per-block
gradient checkpointing, and the memory peak of each; then a larger batch (``--large-batch``).

MFU = model FLOPs per step / step time / measured matmul rate, counting (as 2 FLOPs per
multiply-add per token) the frozen forward, the skip forward, the backward to activations
through everything after the first skip block, and the skip weight gradients. Attention
score FLOPs are included; norms and element-wise ops are not.

    python -m bench.train_throughput [--steps 6] [--distances 3] [--large-batch 16]
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup(workload="training")  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import argparse
import statistics
import sys
import time

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

from psilonet.model import loading as modeling
from psilonet.model.skip import SkipConfig, SkipModel
from psilonet.training.loop import TrainConfig, make_train_step


def matmul_rate(m: int, k: int, n: int, seconds: float = 2.0) -> float:
    a, b = mx.random.normal((m, k)), mx.random.normal((k, n))
    mx.eval(a, b, a @ b)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        mx.eval(a @ b)
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9


def step_flops(base, model: SkipModel, batch: int, seq: int) -> float:
    args = base.args
    d, layers = args.hidden_size, args.num_hidden_layers
    hd = args.head_dim or d // args.num_attention_heads
    kv = args.num_key_value_heads * hd
    t = batch * seq
    block = d * d * 2 + d * kv * 2 + 3 * d * args.intermediate_size
    attn_scores = 2 * 2 * batch * args.num_attention_heads * seq * seq * hd / 2  # causal half
    head = d * args.vocab_size
    skip_params = model.num_trainable()
    taps = sum(len(model.cfg.taps(l)) for l in model.skip_layers)
    skip_fwd_params = sum(d * d * 2 + d * kv * 2 * len(model.cfg.taps(l)) for l in model.skip_layers)
    first = model.skip_layers[0]
    fwd = 2 * t * (layers * block + head + skip_fwd_params) + attn_scores * (layers + taps)
    bwd_act = 2 * t * ((layers - first) * block + head + skip_fwd_params) + attn_scores * (layers - first + taps)
    wgrad = 2 * t * skip_params
    return fwd + bwd_act + wgrad


def measure(base, cfg: TrainConfig, steps: int, batches) -> tuple[float, float]:
    """(median step seconds, peak memory GB) for real optimizer steps."""
    model = SkipModel.from_base(base, cfg.skip)
    model.gradient_checkpointing = cfg.grad_checkpoint
    step = make_train_step(model, optim.AdamW(learning_rate=cfg.lr), cfg)
    step(batches[0])  # warm-up
    mx.reset_peak_memory()
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(batches[(i + 1) % len(batches)])
        times.append(time.perf_counter() - start)
    return statistics.median(times), mx.get_peak_memory() / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=48)
    parser.add_argument("--distances", type=int, nargs="+", default=[3])
    parser.add_argument("--large-batch", type=int, default=16,
                        help="also measure this batch size (without checkpointing); 0 skips it")
    args = parser.parse_args(argv)

    base, _ = modeling.load_model()
    print(f"BLAS: {runtime.active_blas().describe()}")
    rng = np.random.default_rng(0)
    batches = [mx.array(rng.integers(0, base.args.vocab_size, (args.batch_size, args.seq_len))) for _ in range(4)]
    d = base.args.hidden_size
    rate = matmul_rate(args.batch_size * (args.seq_len - 1), d, 4 * d)
    big = max(matmul_rate(1024, 1024, 1024), matmul_rate(2048, 2048, 2048))
    print(f"float32 matmul rate: {rate:.1f} GFLOP/s at the model's shapes, "
          f"{big:.1f} GFLOP/s for large matmuls (best of 1024^3 and 2048^3)")

    results = {}
    for ckpt in (False, True):
        cfg = TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len, grad_checkpoint=ckpt,
                          skip=SkipConfig(distances=args.distances, skip_start=3))
        seconds, peak = measure(base, cfg, args.steps, batches)
        model = SkipModel.from_base(base, cfg.skip)
        flops = step_flops(base, model, args.batch_size, args.seq_len - 1)
        tokens = args.batch_size * (args.seq_len - 1)
        results[ckpt] = (seconds, peak)
        print(f"{'with' if ckpt else 'without'} gradient checkpointing: {seconds:.2f} s/step, "
              f"{tokens / seconds:.0f} tokens/s, {flops / 1e9:.0f} GFLOP/step, "
              f"MFU {flops / seconds / 1e9 / rate:.0%} of the model-shape rate "
              f"({flops / seconds / 1e9 / big:.0%} of the large-matmul rate), peak memory {peak:.2f} GB")
    print(f"checkpointing: time x{results[True][0] / results[False][0]:.2f}, "
          f"memory x{results[True][1] / results[False][1]:.2f}")
    if args.large_batch > 0:
        n = args.large_batch
        large = [mx.array(rng.integers(0, base.args.vocab_size, (n, args.seq_len))) for _ in range(2)]
        cfg = TrainConfig(batch_size=n, seq_len=args.seq_len, skip=SkipConfig(distances=args.distances, skip_start=3))
        seconds, peak = measure(base, cfg, max(2, args.steps // 2), large)
        flops = step_flops(base, SkipModel.from_base(base, cfg.skip), n, args.seq_len - 1)
        shape_rate = matmul_rate(n * (args.seq_len - 1), d, 4 * d)
        tokens = n * (args.seq_len - 1)
        print(f"batch {n}, without checkpointing: {seconds:.2f} s/step, {tokens / seconds:.0f} tokens/s "
              f"(x{tokens / seconds / (args.batch_size * (args.seq_len - 1) / results[False][0]):.2f} batch "
              f"{args.batch_size}), MFU {flops / seconds / 1e9 / shape_rate:.0%} of the model-shape rate "
              f"({shape_rate:.1f} GFLOP/s), {flops / seconds / 1e9 / big:.0%} of the large-matmul rate, "
              f"peak memory {peak:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
