"""Train skip adapters on a frozen base model and record everything in one run.

AdamW (lr 1e-4, weight decay 0 by default), gradient clipping by global norm, batches of
fixed-length windows in a seeded order per epoch. Validation compares the frozen baseline
(the base model without skips) and the skip model on the same validation windows:
``improvement % = 100 * (base - skip) / base``.

Every step logs loss, gradient norm and tokens/s, the tap weights of every block and the
per-head gate alphas; every evaluation logs both validation losses. A checkpoint (skip
weights, optimizer state, position in the data) is written atomically into the run's staging
folder, so a killed job continues with ``python -m jobs.train --resume RUN_ID``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from tqdm import tqdm

from psilonet import config, corpora
from psilonet.files import json_problem, safetensors_problem
from psilonet.config import ConfigError, option
from psilonet.model import loading as modeling
from psilonet.model.skip import WEIGHTS_FILE, SkipConfig, SkipConfigError, SkipModel
from psilonet.store import Store
from psilonet.training.evaluation import lm_loss, mean_token_loss

CHECKPOINT_DIR = "checkpoint"
TRAIN_CONFIG_FILE = "train_config.json"


class TrainConfigError(ConfigError):
    """An option that cannot work; the message starts with the option's name."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig(config.Declared):
    error = TrainConfigError  # what from_dict and check_fields raise
    model: str = option(modeling.DEFAULT_MODEL, help="'default', an mlx-lm hub name or a folder")
    dataset: str = option("python-docs", help=f"corpus: {', '.join(corpora.OFFLINE_CORPORA)}, wikitext, "
                                              "tinystories, owner/name or a .txt/.jsonl/.csv/.parquet file")
    seq_len: int = option(48, min=2, help="tokens per training window")
    train_samples: int = option(200, min=1, help="training windows")
    val_samples: int = option(50, min=1, help="validation windows")
    epochs: int = option(1, min=1)
    batch_size: int = option(4, min=1)
    lr: float = option(1e-4, above=0.0, help="AdamW learning rate")
    weight_decay: float = option(0.0, min=0.0)
    grad_clip: float = option(1.0, above=0.0, help="clip gradients to this global norm")
    seed: int = config.seed_option(0, help="data order and initialisation")
    split_seed: int = config.seed_option(0, help="train/val split (keep fixed to pair runs)")
    eval_every: int = option(0, min=0, help="steps between evaluations (0: every epoch)")
    checkpoint_every: int = option(50, min=1, help="steps between checkpoints")
    grad_checkpoint: bool = option(False, help="recompute block activations in the backward pass")
    skip: SkipConfig = option(default_factory=SkipConfig, flag=False)

    def run_hash(self) -> str:
        """Identifies one run (every setting, seed included): a sweep skips completed ones."""
        return config.stable_hash(self.to_dict())

    def config_key(self) -> str:
        """Identifies a configuration across seeds: a hash of every setting except the seed."""
        return config.stable_hash({k: v for k, v in self.to_dict().items() if k != "seed"}, 12)

    def validate(self) -> "TrainConfig":
        """Checks that need no model or data; the rest happens in :func:`prepare`."""
        self.check_fields()
        corpora.check_name(self.dataset)
        try:  # layer-independent checks now; depth checks once the model is known
            self.skip.validate(num_layers=10**6)
        except SkipConfigError as exc:
            raise TrainConfigError(str(exc)) from exc
        return self


def check_depth(cfg: TrainConfig, num_layers: int) -> None:
    """The skip options that depend on the model's depth."""
    try:
        cfg.skip.validate(num_layers)
    except SkipConfigError as exc:
        raise TrainConfigError(str(exc)) from exc


@dataclass
class Prepared:
    """Everything a run needs, validated before any training work starts."""

    cfg: TrainConfig
    base: Any
    tokenizer: Any
    windows: corpora.Windows


def prepare(cfg: TrainConfig, *, base=None, data_dir=None) -> Prepared:
    """Load (or reuse) the base model and the windows; check depth and context length."""
    cfg.validate()
    corpora.check_available(cfg.dataset, data_dir)
    model, tokenizer = base if base is not None else modeling.load_model(cfg.model, data_dir)
    check_depth(cfg, len(model.model.layers))
    context = getattr(model.args, "max_position_embeddings", None)
    if context and cfg.seq_len > context:
        raise TrainConfigError(f"seq_len: {cfg.seq_len} is longer than the model's context of {context} tokens")
    windows = corpora.load_windows(
        tokenizer, cfg.dataset, seq_len=cfg.seq_len, n_train=cfg.train_samples,
        n_val=cfg.val_samples, seed=cfg.split_seed, data_dir=data_dir,
    )
    return Prepared(cfg, model, tokenizer, windows)


def batches_per_epoch(cfg: TrainConfig) -> int:
    return math.ceil(cfg.train_samples / cfg.batch_size)


def epoch_order(cfg: TrainConfig, epoch: int) -> np.ndarray:
    return np.random.default_rng([cfg.seed, epoch]).permutation(cfg.train_samples)


# ---------------------------------------------------------------------- checkpoints

def save_checkpoint(folder: Path, model: SkipModel, opt: optim.Optimizer, step: int) -> None:
    """Skip weights + optimizer state + step, replaced atomically (a kill keeps the old one)."""
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(opt.state)))
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    old = folder.parent / f".{folder.name}.old"
    if folder.exists():
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def has_checkpoint(folder: Path) -> bool:
    return folder.exists() or (folder.parent / f".{folder.name}.old").exists()


def load_checkpoint(folder: Path, model: SkipModel, opt: optim.Optimizer) -> int:
    """Restore weights and optimizer state; return the step it was taken at."""
    old = folder.parent / f".{folder.name}.old"
    if not folder.exists() and old.exists():  # killed between the two renames
        os.rename(old, folder)
    model.load_skip_weights(folder / WEIGHTS_FILE)
    opt.state = tree_unflatten(list(mx.load(str(folder / "optimizer.safetensors")).items()))
    return json.loads((folder / "state.json").read_text())["step"]


# ---------------------------------------------------------------------- data parallel

@dataclass(frozen=True)
class Ranks:
    """This process's place under ``mlx.launch`` (one rank of one when launched alone).

    Every rank trains on its shard of each global batch; only the lead rank (0) evaluates,
    logs, checkpoints and publishes the run.
    """

    group: Any = None
    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> "Ranks":
        group = mx.distributed.init()
        return cls(group, group.rank(), group.size()) if group.size() > 1 else cls()

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def check(self, cfg: TrainConfig, resume: str | None) -> None:
        if cfg.batch_size % self.world:
            raise TrainConfigError(f"batch_size: {cfg.batch_size} does not split evenly over {self.world} ranks")
        if resume and self.world > 1:
            # Only the lead rank reads the checkpoint, so the others would restart from step 0.
            raise TrainConfigError("resume: continue a run in one process (without mlx.launch); "
                                   "it reaches the same weights as the ranks would")

    def shard(self, rows: np.ndarray) -> np.ndarray:
        size = len(rows) // self.world if self.world > 1 else len(rows)
        return rows[self.rank * size : (self.rank + 1) * size]


# ---------------------------------------------------------------------- the loop

def make_train_step(model: SkipModel, opt: optim.Optimizer, cfg: TrainConfig, group=None) -> Callable:
    """``step(batch) -> (lm loss, grad norm)``: one clipped AdamW update of the skip weights.

    With a distributed ``group`` each rank passes its shard of the global batch; gradients and
    the loss are averaged across ranks (equal shards, so this is the global batch's mean), and
    every rank applies the same update.
    """

    def loss_fn(m, batch):
        loss = lm_loss(m, batch)
        if cfg.skip.sparsity and cfg.skip.sparsity_weight:
            return loss + cfg.skip.sparsity_weight * m.sparsity_penalty(), loss
        return loss, loss

    value_and_grad = nn.value_and_grad(model, loss_fn)

    def step(batch: mx.array):
        (_, loss), grads = value_and_grad(model, batch)
        if group is not None:
            grads = nn.average_gradients(grads, group=group)
            loss = mx.distributed.all_sum(loss, group=group) / group.size()
        grads, grad_norm = optim.clip_grad_norm(grads, cfg.grad_clip)
        opt.update(model, grads)
        mx.eval(model.trainable_parameters(), opt.state, loss, grad_norm)
        return loss, grad_norm

    return step


def schedule(cfg: TrainConfig, train_windows: np.ndarray, ranks: Ranks, start: int = 0) -> Iterator[tuple[int, int, mx.array]]:
    """``(step, epoch, batch)`` for the steps after ``start``: each epoch's seeded order in
    batches of ``batch_size`` windows, this rank's shard of each."""
    per_epoch = batches_per_epoch(cfg)
    for epoch in range(start // per_epoch, cfg.epochs):
        order = epoch_order(cfg, epoch)
        for b in range(per_epoch):
            step = epoch * per_epoch + b + 1
            if step > start:  # earlier steps were trained before the checkpoint
                rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                yield step, epoch, mx.array(train_windows[ranks.shard(rows)])


def timed_step(train_step: Callable, batch: mx.array, step: int, world: int) -> dict[str, float]:
    """One update and its train metrics; :class:`TrainingDiverged` on a non-finite loss."""
    t0 = time.perf_counter()
    loss, grad_norm = train_step(batch)
    seconds = time.perf_counter() - t0
    if not math.isfinite(loss.item()):
        raise TrainingDiverged(f"loss is {loss.item()} at step {step}: lower --lr or --alpha")
    return {"loss": loss.item(), "grad_norm": grad_norm.item(), "tokens_per_s": batch.size * world / seconds}


def train(prep: Prepared, store: Store, *, resume: str | None = None, parent: str | None = None,
          progress: bool = True) -> tuple[str | None, dict]:
    """Train one configuration into a new run (or resume ``resume``); return (run_id, summary).

    Ranks other than the lead take the same steps on their shards and return ``(None, {})``.
    """
    cfg = prep.cfg
    ranks = Ranks.current()
    ranks.check(cfg, resume)
    mx.random.seed(cfg.seed)  # the same on every rank: identical initialisation
    model = SkipModel.from_base(prep.base, cfg.skip)
    model.gradient_checkpointing = cfg.grad_checkpoint
    opt = optim.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay)
    train_step = make_train_step(model, opt, cfg, ranks.group)
    if not ranks.lead:
        for step, _, batch in schedule(cfg, prep.windows.train, ranks):
            timed_step(train_step, batch, step, ranks.world)
        return None, {}
    if resume:
        writer = store.resume_run(resume)
    else:
        config = cfg.to_dict() if ranks.world == 1 else {**cfg.to_dict(), "ranks": ranks.world}
        writer = store.begin_run("train", config=config, model=cfg.model, dataset=cfg.dataset, parent=parent)
    with writer:
        return writer.run_id, _lead_run(prep, model, opt, train_step, writer, ranks, resume, progress)


def _lead_run(prep: Prepared, model: SkipModel, opt, train_step, writer, ranks: Ranks, resume, progress) -> dict:
    """The lead rank's run: restore, train with evaluations and checkpoints, publish."""
    cfg = prep.cfg
    ckpt = writer.dir / CHECKPOINT_DIR
    start = load_checkpoint(ckpt, model, opt) if resume and has_checkpoint(ckpt) else 0
    writer.truncate_after(start if start else -1)  # replay from the checkpoint
    writer.flush_interval = 2.0  # one transaction per ~2 s instead of several per step
    (writer.dir / TRAIN_CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))

    def validate(step: int) -> float:
        skip_val = mean_token_loss(model, prep.windows.val, cfg.batch_size)
        writer.log_metrics(step, _val_metrics(base_val, skip_val), split="val")
        return skip_val

    base_val = mean_token_loss(model.base, prep.windows.val, cfg.batch_size)
    if start == 0:
        validate(0)
        _log_model_state(writer, model, 0)
    total_steps = batches_per_epoch(cfg) * cfg.epochs
    eval_every = cfg.eval_every or batches_per_epoch(cfg)
    step, skip_val = start, None
    bar = tqdm(total=total_steps, initial=start, desc="train", unit="step", disable=not progress)
    for step, epoch, batch in schedule(cfg, prep.windows.train, ranks, start):
        metrics = {**timed_step(train_step, batch, step, ranks.world), "epoch": epoch}
        writer.log_metrics(step, metrics)
        _log_model_state(writer, model, step)
        if step % eval_every == 0 or step == total_steps:
            skip_val = validate(step)
        if step % cfg.checkpoint_every == 0 and step < total_steps:
            writer.flush()  # rows up to the checkpoint must survive a kill
            save_checkpoint(ckpt, model, opt, step)
        writer.set_progress(step / total_steps)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
    bar.close()

    if skip_val is None:
        skip_val = mean_token_loss(model, prep.windows.val, cfg.batch_size)
    model.save(writer.dir)
    shutil.rmtree(ckpt, ignore_errors=True)
    summary = {**_val_metrics(base_val, skip_val), "steps": step,
               "trainable_params": model.num_trainable(), "skip_layers": len(model.skip_layers)}
    writer.finish(summary)
    return summary


def _log_model_state(writer, model: SkipModel, step: int) -> None:
    writer.log_tap_weights(step, model.tap_weights())
    if model.cfg.gates:
        writer.log_gate_alphas(step, model.gate_alphas())


def _val_metrics(base: float, skip: float) -> dict[str, float]:
    return {"base_loss": base, "skip_loss": skip, "improvement_pct": 100.0 * (base - skip) / base}


def load_trained(store: Store, run_id: str, *, base=None, data_dir=None) -> tuple[SkipModel, Any, TrainConfig]:
    """A published training run's skip model on its base model: (model, tokenizer, config)."""
    folder = store.run_dir(run_id)
    cfg_path = folder / TRAIN_CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"run {run_id} has no {TRAIN_CONFIG_FILE}: not a training run")
    problem = json_problem(cfg_path)
    if problem:
        raise modeling.ModelError(f"run {run_id}: {cfg_path} {problem}; train the run again")
    try:
        cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
    except (ValueError, OSError) as exc:
        raise modeling.ModelError(f"run {run_id}: cannot read {cfg_path}: {exc}") from exc
    problem = safetensors_problem(folder / WEIGHTS_FILE)
    if problem:  # before the base model loads, and in our words rather than MLX's
        raise modeling.ModelError(f"run {run_id}: its skip weights {folder / WEIGHTS_FILE} {problem}; "
                                  "train the run again")
    model, tokenizer = base if base is not None else modeling.load_model(cfg.model, data_dir)
    try:
        return SkipModel.load(model, folder), tokenizer, cfg
    except SkipConfigError:
        raise
    except Exception as exc:  # a truncated or foreign weights file: mlx raises several kinds
        raise modeling.ModelError(f"run {run_id}: its skip weights in {folder} cannot be loaded "
                                  f"({type(exc).__name__}: {exc})") from exc
