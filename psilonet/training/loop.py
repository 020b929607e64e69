"""Train skip adapters on a frozen base model and record everything in one run (DESIGN §5).

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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import psilonet  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from tqdm import tqdm

from psilonet import corpora
from psilonet.model import loading as modeling
from psilonet.model.skip import SkipConfig, SkipConfigError, SkipModel
from psilonet.store import Store
from psilonet.training.evaluation import lm_loss

CHECKPOINT_DIR = "checkpoint"
TRAIN_CONFIG_FILE = "train_config.json"


class TrainConfigError(ValueError):
    """An option that cannot work; the message starts with the option's name."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    model: str = modeling.DEFAULT_MODEL
    dataset: str = "python-docs"
    seq_len: int = 48
    train_samples: int = 200
    val_samples: int = 50
    epochs: int = 1
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0  # data order (and any random initialisation)
    split_seed: int = 0  # train/val windows: fixed across seeds so runs are paired
    eval_every: int = 0  # steps between evaluations; 0 = at the end of every epoch
    checkpoint_every: int = 50
    grad_checkpoint: bool = False
    skip: SkipConfig = field(default_factory=SkipConfig)

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> "TrainConfig":
        params = dict(params)
        skip = params.pop("skip", {})
        names = {f.name for f in fields(cls)}
        unknown = set(params) - names
        if unknown:
            raise TrainConfigError(f"{sorted(unknown)[0]}: unknown option")
        return cls(**params, skip=skip if isinstance(skip, SkipConfig) else SkipConfig.from_dict(skip))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> "TrainConfig":
        """Checks that need no model or data; the rest happens in :func:`prepare`."""
        positive = ("seq_len", "train_samples", "val_samples", "epochs", "batch_size", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise TrainConfigError(f"seq_len: must be at least 2, got {self.seq_len}")
        if not self.lr > 0:
            raise TrainConfigError(f"lr: must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise TrainConfigError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if not self.grad_clip > 0:
            raise TrainConfigError(f"grad_clip: must be > 0, got {self.grad_clip}")
        if self.eval_every < 0:
            raise TrainConfigError(f"eval_every: must be >= 0, got {self.eval_every}")
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


def evaluate(model, windows: np.ndarray, batch_size: int) -> float:
    """Mean token loss over all windows (equal-length windows, so batch means average evenly)."""
    total = 0.0
    for start in range(0, len(windows), batch_size):
        batch = mx.array(windows[start : start + batch_size])
        total += lm_loss(model, batch).item() * len(batch)
    return total / len(windows)


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


def load_checkpoint(folder: Path, model: SkipModel, opt: optim.Optimizer) -> int:
    """Restore weights and optimizer state; return the step it was taken at."""
    old = folder.parent / f".{folder.name}.old"
    if not folder.exists() and old.exists():  # killed between the two renames
        os.rename(old, folder)
    model.load_weights(str(folder / "skip_weights.safetensors"), strict=False)
    opt.state = tree_unflatten(list(mx.load(str(folder / "optimizer.safetensors")).items()))
    return json.loads((folder / "state.json").read_text())["step"]


# ---------------------------------------------------------------------- data parallel

def distributed_group():
    """The ``mlx.launch`` group when this process is one of several ranks, else None."""
    group = mx.distributed.init()
    return group if group.size() > 1 else None


class _OtherRank:
    """What ranks other than 0 write: nothing (rank 0 logs, checkpoints and publishes)."""

    run_id = None
    flush_interval = 0.0

    def __init__(self):
        self.dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


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


def train(
    prep: Prepared,
    store: Store,
    *,
    resume: str | None = None,
    parent: str | None = None,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> tuple[str, dict]:
    """Train one configuration into a new run (or resume ``resume``); return (run_id, summary)."""
    cfg = prep.cfg
    group = distributed_group()
    rank, world = (group.rank(), group.size()) if group is not None else (0, 1)
    if cfg.batch_size % world:
        raise TrainConfigError(f"batch_size: {cfg.batch_size} does not split evenly over {world} ranks")
    lead = rank == 0
    mx.random.seed(cfg.seed)  # the same on every rank: identical initialisation
    model = SkipModel.from_base(prep.base, cfg.skip)
    model.gradient_checkpointing = cfg.grad_checkpoint
    opt = optim.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay)
    if not lead:
        writer = _OtherRank()
    elif resume:
        writer = store.resume_run(resume)
    else:
        config = cfg.to_dict() if world == 1 else {**cfg.to_dict(), "ranks": world}
        writer = store.begin_run("train", config=config, model=cfg.model, dataset=cfg.dataset, parent=parent)

    with writer:
        ckpt = writer.dir / CHECKPOINT_DIR if lead else None
        start_step = 0
        if lead and resume and (ckpt.exists() or (ckpt.parent / f".{ckpt.name}.old").exists()):
            start_step = load_checkpoint(ckpt, model, opt)
        writer.truncate_after(start_step if start_step else -1)  # replay from the checkpoint
        writer.flush_interval = 2.0  # one transaction per ~2 s instead of several per step
        if lead:
            (writer.dir / TRAIN_CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))

        windows, bs = prep.windows, cfg.batch_size
        shard = bs // world
        evaluate_val = (lambda m: evaluate(m, windows.val, bs)) if lead else (lambda m: float("nan"))
        base_val = evaluate_val(model.base)
        per_epoch = batches_per_epoch(cfg)
        total_steps = per_epoch * cfg.epochs
        eval_every = cfg.eval_every or per_epoch

        train_step = make_train_step(model, opt, cfg, group)

        def log_model_state(step):
            writer.log_tap_weights(step, model.tap_weights())
            if cfg.skip.gates:
                writer.log_gate_alphas(step, model.gate_alphas())

        if start_step == 0:
            skip_val = evaluate_val(model)
            writer.log_metrics(0, _val_metrics(base_val, skip_val), split="val")
            log_model_state(0)

        bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not (progress and lead))
        step, skip_val = start_step, None
        for epoch in range(start_step // per_epoch, cfg.epochs):
            order = epoch_order(cfg, epoch)
            for b in range(per_epoch):
                if epoch * per_epoch + b < start_step:
                    continue  # already trained before the checkpoint
                rows = order[b * bs : (b + 1) * bs]
                batch = mx.array(windows.train[rows[rank * shard : (rank + 1) * shard] if world > 1 else rows])
                t0 = time.perf_counter()
                loss, grad_norm = train_step(batch)
                seconds = time.perf_counter() - t0
                step += 1
                if not math.isfinite(loss.item()):
                    raise TrainingDiverged(f"loss is {loss.item()} at step {step}: lower --lr or --alpha")
                metrics = {"loss": loss.item(), "grad_norm": grad_norm.item(),
                           "tokens_per_s": batch.size * world / seconds, "epoch": epoch}
                writer.log_metrics(step, metrics)
                log_model_state(step)
                if step % eval_every == 0 or step == total_steps:
                    skip_val = evaluate_val(model)
                    writer.log_metrics(step, _val_metrics(base_val, skip_val), split="val")
                    metrics["val_loss"] = skip_val
                if lead and step % cfg.checkpoint_every == 0 and step < total_steps:
                    writer.flush()  # rows up to the checkpoint must survive a kill
                    save_checkpoint(ckpt, model, opt, step)
                writer.set_progress(step / total_steps)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                if on_step:
                    on_step(step, metrics)
        bar.close()

        if skip_val is None:
            skip_val = evaluate_val(model)
        if lead:
            model.save(writer.dir)
            shutil.rmtree(ckpt, ignore_errors=True)
        summary = {**_val_metrics(base_val, skip_val), "steps": step,
                   "trainable_params": model.num_trainable(), "skip_layers": len(model.skip_layers)}
        writer.finish(summary)
    return writer.run_id, summary


def _val_metrics(base: float, skip: float) -> dict[str, float]:
    return {"base_loss": base, "skip_loss": skip, "improvement_pct": 100.0 * (base - skip) / base}


def load_trained(store: Store, run_id: str, *, base=None, data_dir=None) -> tuple[SkipModel, Any, TrainConfig]:
    """A published training run's skip model on its base model: (model, tokenizer, config)."""
    folder = store.run_dir(run_id)
    cfg_path = folder / TRAIN_CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"run {run_id} has no {TRAIN_CONFIG_FILE}: not a training run")
    cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
    model, tokenizer = base if base is not None else modeling.load_model(cfg.model, data_dir)
    return SkipModel.load(model, folder), tokenizer, cfg
