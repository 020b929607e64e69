"""Decode speed of our loop against mlx_lm.generate, sober vs dosed, batched doses vs sequential.

All in one process on the default model and one prompt (raw text, no chat template, so no
early stop): tokens/s of
  1. ``mlx_lm.stream_generate`` (the baseline),
  2. our loop, sober (greedy, no entropy tracking),
  3. our loop at dose 0.3 with entropy tracking (what jobs.dose and the app run),
  4. four doses (0, 0.1, 0.2, 0.3) as one batch of four rows, aggregate tokens/s,
  5. the same four doses one after the other.
Each variant runs ``--repeats`` times and the median is used; ratios are printed at the end.
If llama-cpp-python is installed, llama.cpp on the original GGUF (2 threads) is added.

    python -m bench.decode [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import psilonet  # noqa: F401  (fast BLAS before mlx)
import mlx_lm

from psilonet import runtime
from psilonet.generation.decoding import SamplingConfig, decode
from psilonet.generation.dosing import generate_doses
from psilonet.model import loading as modeling

PROMPT = "The history of the city begins in the early middle ages, when"
DOSES = [0.0, 0.1, 0.2, 0.3]


def rate(fn, repeats: int) -> float:
    """Median tokens/s of ``fn() -> tokens generated``."""
    fn()  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model, tokenizer = modeling.load_model()
    print(f"BLAS: {runtime.active_blas().describe()}")
    ids = tokenizer.encode(PROMPT)
    cfg = SamplingConfig(max_tokens=args.tokens)

    def mlx_lm_generate():
        return sum(1 for _ in mlx_lm.stream_generate(model, tokenizer, PROMPT, max_tokens=args.tokens))

    def ours_sober():
        return sum(1 for _ in decode(model, ids, cfg))

    def ours_dosed(intensities):
        def run():
            res = generate_doses(model, tokenizer, PROMPT, intensities, sampling=cfg, chat=False)
            return sum(len(r.token_ids) for r in res)
        return run

    def sequential():
        return sum(ours_dosed([i])() for i in DOSES)

    r = {
        "mlx_lm.generate": rate(mlx_lm_generate, args.repeats),
        "ours, sober": rate(ours_sober, args.repeats),
        "ours, dose 0.3 + entropies": rate(ours_dosed([0.3]), args.repeats),
        "ours, 4 doses in one batch": rate(ours_dosed(DOSES), args.repeats),
        "ours, 4 doses one by one": rate(sequential, args.repeats),
    }
    try:
        from llama_cpp import Llama

        llm = Llama(str(modeling.default_gguf_path()), n_threads=2, verbose=False)
        r["llama.cpp (GGUF, 2 threads)"] = rate(
            lambda: llm(PROMPT, max_tokens=args.tokens, temperature=0)["usage"]["completion_tokens"], args.repeats)
    except ImportError:
        pass
    for name, value in r.items():
        print(f"{name:32s} {value:7.1f} tokens/s")
    print(f"our loop vs mlx_lm.generate:          x{r['ours, sober'] / r['mlx_lm.generate']:.2f} (target >= 3)")
    print(f"dose 0.3 overhead over sober:         {100 * (r['ours, sober'] / r['ours, dose 0.3 + entropies'] - 1):+.0f}% (target <= 10%)")
    print(f"4-dose batch vs 4 sequential:         x{r['ours, 4 doses in one batch'] / r['ours, 4 doses one by one']:.2f} (target >= 2.5)")
    if "llama.cpp (GGUF, 2 threads)" in r:
        print(f"our loop vs llama.cpp:                x{r['ours, sober'] / r['llama.cpp (GGUF, 2 threads)']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
