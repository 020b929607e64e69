"""The 4-bit path's quality and memory checks that ``bench.decode`` reports as goals.

* :func:`paragraph_losses`: the mean token loss (nats) of ``jobs.check_model``'s reference
  paragraph under both models.
* :func:`greedy_agreement`: greedy continuations of :data:`PROMPTS` (raw text, no template)
  under both models; the first differing token of each pair that differs.
* :func:`resident_mb`: the resident memory (VmRSS, MB) of a fresh process that loads the default
  model with the given weights and decodes a few tokens: each format in its own process, so
  neither inherits the other's allocations.

    python -m bench.quantized_checks [--tokens 64]   # the checks alone
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass

PROMPTS = [
    "The history of the city begins in the early middle ages, when",
    "Photosynthesis is the process by which",
    "Once upon a time, in a small village by the sea,",
    "The three laws of thermodynamics state that",
    "To bake a loaf of bread, you first need to",
    "The capital of France is",
    "In computer science, a hash table is",
    "The most important lesson I learned at school was",
    "Mount Everest is the highest mountain on Earth, and",
    "A good night's sleep helps the brain because",
]

RSS_CHILD = r"""
import json, sys
from psilonet import runtime
runtime.setup()
import mlx.core as mx
from psilonet.generation.decoding import DecodeConfig, decode
from psilonet.generation.sampling import SamplingConfig
from psilonet.model import quantized
model, tokenizer = quantized.load_model(weights=sys.argv[1])
ids = tokenizer.encode("The history of the city begins in the early middle ages, when")
for _ in decode(model, ids, DecodeConfig(SamplingConfig(max_tokens=int(sys.argv[2])))):
    pass
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
print(json.dumps({"rss_mb": rss / 1024}))
"""


@dataclass
class Difference:
    prompt: str
    position: int
    reference: str  # the float32 model's token there
    other: str


def paragraph_losses(reference, other, tokenizer) -> tuple[float, float]:
    from psilonet.training import evaluation

    ids = tokenizer.encode(evaluation.REFERENCE_PARAGRAPH)
    return evaluation.mean_token_loss(reference, ids), evaluation.mean_token_loss(other, ids)


def greedy_tokens(model, tokenizer, prompt: str, tokens: int) -> list[int]:
    from psilonet.generation.decoding import DecodeConfig, decode
    from psilonet.generation.sampling import SamplingConfig

    return [s.tokens[0] for s in decode(model, tokenizer.encode(prompt), DecodeConfig(SamplingConfig(max_tokens=tokens)))]


def greedy_agreement(reference, other, tokenizer, tokens: int = 64) -> tuple[int, list[Difference]]:
    """``(identical continuations, first difference of each other one)``."""
    same, diffs = 0, []
    for prompt in PROMPTS:
        a, b = greedy_tokens(reference, tokenizer, prompt, tokens), greedy_tokens(other, tokenizer, prompt, tokens)
        if a == b:
            same += 1
            continue
        at = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        diffs.append(Difference(prompt, at, tokenizer.decode([a[at]]), tokenizer.decode([b[at]])))
    return same, diffs


def resident_mb(weights: str, tokens: int = 16) -> float:
    done = subprocess.run([sys.executable, "-c", RSS_CHILD, weights, str(tokens)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {weights} memory child failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["rss_mb"]


def main(argv=None) -> int:
    from psilonet import runtime

    runtime.setup()  # the fast BLAS before the imports below load mlx
    from psilonet.model import loading as modeling
    from psilonet.model import quantized

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args(argv)
    f32, tokenizer = modeling.load_model()
    q4, _ = quantized.load_model(weights="q4")
    lf, lq = paragraph_losses(f32, q4, tokenizer)
    print(f"paragraph loss: float32 {lf:.5f}, q4 {lq:.5f} ({lq - lf:+.5f} nats)")
    same, diffs = greedy_agreement(f32, q4, tokenizer, args.tokens)
    print(f"greedy {args.tokens}-token continuations identical: {same} of {len(PROMPTS)}")
    for d in diffs:
        print(f"  {d.prompt!r}: token {d.position}: {d.reference!r} vs {d.other!r}")
    print(f"resident memory: f32 {resident_mb('f32'):.0f} MB, q4 {resident_mb('q4'):.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
