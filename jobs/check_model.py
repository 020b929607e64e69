"""Check a base model end to end and record the result as a run.

Measures the loss on a reference paragraph, answers a factual question through the chat
template, times the decode loop, and writes all of it into the store as a ``model_check`` run.
"""

from __future__ import annotations

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx (README, "Fast MLX on the Linux CPU")

import sys
import time

from jobs import cli
from jobs.cli import JobParser, add_data_dir
from psilonet.generation import decoding as generation
from psilonet.kernels import qmm
from psilonet.model import loading as modeling
from psilonet.model import quantized
from psilonet.store import Store
from psilonet.training import evaluation

QUESTION = "What is the capital of France?"


@cli.job
def main(argv: list[str] | None = None) -> int:
    parser = JobParser(prog="python -m jobs.check_model", description=__doc__)
    parser.add_argument("--model", default=modeling.DEFAULT_MODEL,
                        help="'default' (offline SmolLM2-135M-Instruct), an mlx-lm hub name or a folder")
    parser.add_argument("--max-tokens", type=int, default=24)
    quantized.add_weights_option(parser)
    add_data_dir(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.max_tokens <= 512:
        raise cli.JobError(f"--max-tokens: must be in [1, 512], got {args.max_tokens}")
    data_dir = cli.data_dir(args.data_dir)

    blas = runtime.active_blas()
    print(f"BLAS: {blas.describe()}")
    store = Store(data_dir)
    config = {"model": args.model, "weights": args.weights, "max_tokens": args.max_tokens, "question": QUESTION}
    model, tokenizer = quantized.load_model(args.model, data_dir, weights=args.weights)
    path = "float32 weights (BLAS)" if args.weights == "f32" else qmm.describe()
    with store.begin_run("model_check", config=config, model=args.model, dataset="reference-paragraph") as run:
        loss = evaluation.mean_token_loss(model, tokenizer.encode(evaluation.REFERENCE_PARAGRAPH))
        cfg = generation.SamplingConfig(max_tokens=args.max_tokens)
        start = time.perf_counter()
        answer = generation.generate(model, tokenizer, QUESTION, cfg)[0]
        seconds = time.perf_counter() - start
        n_tokens = len(tokenizer.encode(answer)) + 1
        metrics = {"paragraph_loss": loss, "decode_tokens_per_s": n_tokens / seconds,
                   "answer_mentions_paris": float("paris" in answer.lower())}
        run.log_metrics(0, metrics, split="check")
        run.finish({**metrics, "answer": answer, "blas": blas.name, "weights": args.weights, "matmul": path})
    print(f"run {run.run_id}")
    print(f"loss on the reference paragraph: {loss:.3f} nats/token")
    print(f"Q: {QUESTION}\nA: {answer}")
    print(f"decode ({args.weights}: {path}): {metrics['decode_tokens_per_s']:.1f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
