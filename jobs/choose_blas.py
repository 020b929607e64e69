"""Measure the installed BLAS libraries (OpenBLAS, BLIS, MKL) at the model's shapes, keep the
fastest, print and record the choice.

MLX binds its BLAS once per process, so each library runs in a child process; their order
rotates over rounds so that the load of a shared machine hits all alike. Each child times three
workloads at the default model's shapes: decode of one row and of eight rows (our compiled
decode step on a model of those shapes with random weights, seconds per token: every weight
streams from memory once per token, beside the step's other ops) and a training batch of
4 x 47 tokens through six blocks' weight products (compute-bound). The score of a library is the
geometric mean over the three of its median time; the lowest wins overall. Per workload (see
``psilonet.runtime``: a process declares ``decode`` or ``training``) the winner is the lowest
geometric mean over the two decode shapes, and the fastest on the training batch. The choices
are written to ``.blas-choice.json``, which ``PSILONET_BLAS=auto`` (the default) loads from then on.

    python -m jobs.choose_blas [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

# This job measures every library and writes the record itself: the warnings of a parent
# process about its BLAS variables or a missing record would only mislead here.
logging.getLogger("psilonet.runtime").setLevel(logging.ERROR)

from psilonet import runtime  # noqa: E402
from psilonet.files import path_problem  # noqa: E402

# Shapes of the default model (SmolLM2-135M); the child reads the converted config when present.
DEFAULT_SHAPES = {"hidden_size": 576, "intermediate_size": 1536, "heads": 9, "kv_heads": 3, "head_dim": 64,
                  "vocab_size": 49152,
                  "layers": 30, "rope_theta": 100000.0}
WORKLOADS = {"decode, 1 row": 1, "decode, 8 rows": 8, "training batch": 188}
DECODE_TOKENS = 8
HOPELESS = 2.0  # after the first round, a library this many times slower than the best is dropped

CHILD = r"""
import json, sys, time
from psilonet import runtime
runtime.setup()
import mlx.core as mx
from mlx_lm.models import llama
from psilonet.generation import decode_step
shapes, workloads, tokens = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
d, f, v, layers = (shapes[k] for k in ("hidden_size", "intermediate_size", "vocab_size", "layers"))
# Decode: the real compiled decode step on a model of the default model's shapes with random
# weights, so the measure includes what a step does besides the weight products.
model = llama.Model(llama.ModelArgs(
    model_type="llama", hidden_size=d, num_hidden_layers=layers, intermediate_size=f,
    num_attention_heads=shapes["heads"], num_key_value_heads=shapes["kv_heads"], head_dim=shapes["head_dim"], rms_norm_eps=1e-5,
    vocab_size=v, rope_theta=shapes["rope_theta"], tie_word_embeddings=True))
mx.eval(model.parameters())
def decode(rows, n=tokens):
    dec = decode_step.Decoder(model, rows, 64)
    t = dec.prefill(list(range(1, 9)))["tokens"]
    mx.eval(t)
    start = time.perf_counter()
    for _ in range(n):
        t = dec.step(t)["tokens"]
        mx.eval(t)
    return (time.perf_counter() - start) / n
# Training: six blocks' weight products at a training batch (compute-bound; six are enough).
kv = shapes["kv_heads"] * shapes["head_dim"]
blocks = [[mx.random.normal((o, i)) * 0.02 for o, i in [(d, d), (kv, d), (kv, d), (d, d), (f, d), (f, d), (d, f)]]
          for _ in range(6)]
mx.eval(blocks)
def train(rows):
    start = time.perf_counter()
    x = mx.random.normal((rows, d))
    for q, k, vv, o, g, u, dn in blocks:
        a = (x @ q.T) + (x @ k.T).sum() + (x @ vv.T).sum()
        x = x + a @ o.T
        x = x + (mx.sigmoid(x @ g.T) * (x @ u.T)) @ dn.T
    mx.eval(x @ model.model.embed_tokens.weight.T)
    return time.perf_counter() - start
out = {}
for name, rows in workloads.items():
    if rows <= 8:
        decode(rows, 2)  # traces the compiled step
        run = decode
    else:
        run = train
    times = [run(rows)]
    while len(times) < 3 and sum(times) < 1.0:  # best of up to three, within about a second
        times.append(run(rows))
    out[name] = min(times)
print(json.dumps({"blas": runtime.active_blas().name, "seconds": out}))
"""


def model_shapes() -> dict:
    from psilonet.model import loading as modeling  # imports mlx: only here, after the BLAS choice

    config = Path(modeling.default_model_path()) / "config.json"
    try:
        c = json.loads(config.read_text())
        heads = c["num_attention_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
        return {"hidden_size": c["hidden_size"], "intermediate_size": c["intermediate_size"], "heads": heads,
                "kv_heads": c.get("num_key_value_heads", heads), "head_dim": head_dim, "vocab_size": c["vocab_size"],
                "layers": c["num_hidden_layers"], "rope_theta": float(c.get("rope_theta", 10000.0))}
    except (OSError, ValueError, KeyError):
        return DEFAULT_SHAPES


def measure(blas: str, shapes: dict) -> dict:
    """The child's result, or ``{"blas": None, "error": ...}`` when it failed (a library that
    loads but cannot run, for example MKL without its OpenMP runtime, ends the child)."""
    env = {**os.environ, "PSILONET_BLAS": blas}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(shapes), json.dumps(WORKLOADS), str(DECODE_TOKENS)],
                         capture_output=True, text=True, env=env)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        return {"blas": None, "error": last}
    return json.loads(lines[-1])


def choice_file_problem(target: Path) -> str | None:
    """Why the record cannot be written at ``target`` (one line naming the variable), or None."""
    where = "PSILONET_BLAS_CHOICE" if os.environ.get("PSILONET_BLAS_CHOICE") else "the BLAS choice file"
    if target.exists() and path_problem(target):
        return f"{where}: {target} {path_problem(target)}"
    folder = target.parent
    problem = path_problem(folder, "folder")
    if problem:
        return f"{where}: its folder {folder} {problem}; create it or name another file"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{where}: cannot write in {folder}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.choose_blas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        print("error: --rounds must be >= 1", file=sys.stderr)
        return 2
    target = runtime.choice_file()
    unwritable = choice_file_problem(target)
    if unwritable:  # before minutes of measuring, not after
        print(f"error: {unwritable}", file=sys.stderr)
        return 2
    found = [name for name in runtime.DEFAULT_ORDER if runtime.find_blas(name)]
    if len(found) < 2:
        choice = found[0] if found else None
        print(f"BLAS: only {choice or 'the reference BLAS'} installed, nothing to compare")
        if choice:
            target.write_text(json.dumps({"choice": choice, "measured": None}, indent=1))
        return 0
    shapes = model_shapes()
    seconds: dict[str, dict[str, list[float]]] = {b: {w: [] for w in WORKLOADS} for b in found}
    for r in range(args.rounds):
        for blas in found[r % len(found):] + found[: r % len(found)]:
            result = measure(blas, shapes)
            if result["blas"] != blas:  # installed but not loadable or not working here: leave it out
                why = result.get("error") or f"the child bound {result['blas']}"
                print(f"BLAS: {blas} could not be measured ({why}); left out", file=sys.stderr)
                found.remove(blas)
                del seconds[blas]
                continue
            for w, t in result["seconds"].items():
                seconds[blas][w].append(t)
        if r == 0 and len(found) > 1:  # a library that cannot win is not measured again
            score = {b: math.exp(statistics.mean(math.log(seconds[b][w][0]) for w in WORKLOADS)) for b in found}
            for b in [b for b in found if score[b] > HOPELESS * min(score.values())]:
                print(f"BLAS: {b} is x{score[b] / min(score.values()):.1f} slower than the fastest; not measured again")
                found.remove(b)
    if not found:
        print("BLAS: no installed library could be loaded; nothing recorded", file=sys.stderr)
        return 1
    median = {b: {w: statistics.median(ts) for w, ts in per.items()} for b, per in seconds.items()}
    score = {b: math.exp(statistics.mean(math.log(median[b][w]) for w in WORKLOADS)) for b in found}
    choice = min(found, key=score.get)
    print(f"BLAS at the model's shapes (ms per decode step or per training-batch chain, median over rounds; "
          f"{args.rounds} rounds):")
    for w in WORKLOADS:
        print(f"  {w:16s} " + "  ".join(f"{x} {1000 * median[x][w]:7.1f}" for x in median))
    others = ", ".join(f"x{score[x] / score[choice]:.2f} faster than {x}" for x in found if x != choice)
    print(f"BLAS: overall {choice} (geometric mean over the three shapes: {others})")
    decode_shapes = [w for w, rows in WORKLOADS.items() if rows <= 8]
    per = {"decode": {b: math.exp(statistics.mean(math.log(median[b][w]) for w in decode_shapes)) for b in found},
           "training": {b: median[b]["training batch"] for b in found}}
    by_workload = {name: min(found, key=times.get) for name, times in per.items()}
    for name, best in by_workload.items():
        others = ", ".join(f"x{per[name][x] / per[name][best]:.2f} faster than {x}" for x in found if x != best)
        print(f"BLAS: for {name}, {best}" + (f" ({others})" if others else ""))
    print(f"BLAS: recorded in {target}")
    target.write_text(json.dumps({"choice": choice, "by_workload": by_workload, "median_seconds": median,
                                  "rounds": args.rounds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
